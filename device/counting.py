"""How well repetitions were counted: RepCount's metrics against per-repetition annotations.

Annotations are a CSV, one row per repetition: ``video,start_frame,end_frame,activity`` (a header
row with those names; frames 1-based, inclusive; ``video`` a file name or stem). For each video
and activity the count error is counted − annotated; over them, the mean absolute error relative
to the annotated count (MAE) and the share counted within one (off-by-one accuracy, OBO), as the
RepCount benchmark reports them. Each counted repetition is matched to the annotated one whose
end is nearest (each used once), and the timing error is how far apart their ends are, in
seconds of the video.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.activities import ActivityEvent

COLUMNS = ("video", "start_frame", "end_frame", "activity")


class RepAnnotationError(ValueError):
    """A repetition annotation file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class AnnotatedRep:
    start_frame: int
    end_frame: int
    activity: str


def read_rep_annotations(path: Path) -> dict[str, list[AnnotatedRep]]:
    """Video stem -> its annotated repetitions, in file order."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RepAnnotationError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from exc
    if not rows or tuple(cell.strip() for cell in rows[0]) != COLUMNS:
        raise RepAnnotationError(f"{path}: line 1: expected the header {','.join(COLUMNS)}")
    reps: dict[str, list[AnnotatedRep]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(COLUMNS):
            raise RepAnnotationError(f"{path}: line {line}: expected {len(COLUMNS)} columns, got {len(row)}")
        video, start, end, activity = (cell.strip() for cell in row)
        if not (start.isdigit() and end.isdigit()) or not 1 <= int(start) <= int(end):
            raise RepAnnotationError(f"{path}: line {line}: frames must be whole numbers, 1 <= start <= end")
        if not video or not activity:
            raise RepAnnotationError(f"{path}: line {line}: video and activity must not be empty")
        reps.setdefault(Path(video).stem, []).append(AnnotatedRep(int(start), int(end), activity))
    return reps


@dataclass(frozen=True)
class CountRow:
    """One video's count of one activity."""

    video: str
    activity: str
    annotated: int
    counted: int
    timing_errors_s: tuple[float, ...]

    @property
    def error(self) -> int:
        return self.counted - self.annotated


def count_rows(
    video: str,
    annotated: Sequence[AnnotatedRep],
    events: Sequence[ActivityEvent],
    frame_times_s: Mapping[int, float],
) -> list[CountRow]:
    """Per activity annotated or counted in one video: counts and timing errors of matched reps."""
    rows = []
    for activity in dict.fromkeys([*(a.activity for a in annotated), *(e.activity for e in events)]):
        truth = [
            frame_times_s[a.end_frame]
            for a in annotated
            if a.activity == activity
            if a.end_frame in frame_times_s
        ]
        counted = [e.ts for e in events if e.activity == activity and e.type == "rep"]
        errors: list[float] = []
        remaining = list(truth)
        for end in counted:
            if not remaining:
                break
            nearest = min(remaining, key=lambda t: abs(t - end))
            errors.append(abs(nearest - end))
            remaining.remove(nearest)
        total = sum(a.activity == activity for a in annotated)
        rows.append(CountRow(video, activity, total, len(counted), tuple(errors)))
    return rows


def summary(rows: Sequence[CountRow]) -> str:
    """RepCount's numbers over every (video, activity) with annotated repetitions, on one line."""
    scored = [r for r in rows if r.annotated]
    if not scored:
        return "no annotated repetitions"
    mae = float(np.mean([abs(r.error) / r.annotated for r in scored]))
    obo = float(np.mean([abs(r.error) <= 1 for r in scored]))
    timing = [t for r in scored for t in r.timing_errors_s]
    when = f", timing error mean {np.mean(timing):.2f} s over {len(timing)} matched" if timing else ""
    return f"MAE {mae:.3f}, off-by-one accuracy {obo:.3f} over {len(scored)} counts{when}"
