"""``python -m device replay``: what a kiosk would publish for a video, before it reaches a kiosk.

The videos run through :class:`~device.classifier.Classifier` — the daemon's own pose, window,
feature, model and smoothing code — as fast as the machine allows, and every result is written
as the kiosk would publish it (DESIGN.md §9): one JSON line ``{"source", "topic", "payload"}``.
Timestamps come from the file and ``ts`` is source time, so two runs give identical lines;
``--fps F`` replays as a kiosk that manages F frames per second would see the video.

With ``--annotations`` and ``--labels`` the published labels are scored per frame against the
annotated ones (:mod:`device.scoring`). ``--video-out`` renders the video with the skeleton,
the label and its confidence, as the status page draws them.

Nothing is half-written: output files go to a temporary name and are renamed into place once
complete. A video that cannot be read is named on stderr and the others carry on (exit 1).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from device.activities import ActivityEvent
from device.annotations import (
    AnnotationError,
    LabelMapping,
    check_frame_ranges,
    label_codes,
    match_annotations,
    read_annotations,
)
from device.cli import ExitStatus, UsageError
from device.counting import AnnotatedRep, count_rows, read_rep_annotations, summary
from device.decisions import Output
from device.prediction import Prediction
from device.replay_options import VIDEO_SUFFIX
from device.scoring import Score, published_per_frame, score
from device.status import LiveView, counter_text

if TYPE_CHECKING:  # imported where they run: OpenCV and MediaPipe must not slow `device --help`
    import cv2

    from device.classifier import Classifier
    from device.sources import VideoFileSource

MAX_PEOPLE = 5  # as the daemon's pose.num_poses


@dataclass
class Replayed:
    """One video's results, its activity events and the frame numbers it had (for scoring)."""

    video: Path
    predictions: list[Prediction] = field(default_factory=list)
    events: list[ActivityEvent] = field(default_factory=list)
    frame_numbers: list[int] = field(default_factory=list)
    frame_times_s: dict[int, float] = field(default_factory=dict)  # frame number -> source seconds


class _Lines:
    """The JSON lines, numbered as one kiosk's outbox numbers everything it publishes."""

    def __init__(self, out: IO[str]) -> None:
        self._out, self.seq = out, 0

    def write(self, source: str, outputs: Iterable[Output], into: Replayed) -> None:
        for output in outputs:
            self.seq += 1
            line = {"source": source, "topic": output.topic, "payload": {"seq": self.seq, **output.payload()}}
            self._out.write(json.dumps(line, sort_keys=True) + "\n")
            (into.predictions if isinstance(output, Prediction) else into.events).append(output)


def run(args: argparse.Namespace) -> int:
    _check_options(args)
    from device.classifier import Classifier
    from device.pose import PoseOptions  # MediaPipe: only once a replay really runs
    from device.sources import SourceError

    pose = PoseOptions(num_poses=args.people) if args.people else None
    # source time: the same on every run
    classifier = Classifier.open(args.bundle, args.trusted_key, pose=pose, everyone=args.people is not None)
    truth = _annotated_labels(args, classifier) if args.annotations else None
    reps = read_rep_annotations(args.reps) if args.reps else None
    replayed: list[Replayed] = []
    failed: list[str] = []
    with _output(args.out) as out:
        lines = _Lines(out)
        for video in args.videos:
            try:
                result = _replay(classifier, video, args, lines)
            except SourceError as exc:
                failed.append(str(exc))
                print(f"device replay: {exc}", file=sys.stderr)
                continue
            replayed.append(result)
    classifier.close()
    _summarize(replayed, truth)
    if reps is not None:
        _summarize_counting(replayed, reps)
    if failed:
        print(f"device replay: {len(failed)} of {len(args.videos)} videos failed", file=sys.stderr)
        return ExitStatus.FAILED
    return ExitStatus.OK


def _check_options(args: argparse.Namespace) -> None:
    """Every mistake in the options, before any work (and before any file is written)."""
    from device.sources import SourceError, VideoFileSource

    if args.fps is not None and not 0 < args.fps <= 1000:
        raise UsageError(f"--fps {args.fps:g}: must be a frame rate above 0 (and at most 1000)")
    if args.people is not None and not 1 <= args.people <= MAX_PEOPLE:
        raise UsageError(f"--people {args.people}: must be 1 to {MAX_PEOPLE}")
    if (args.annotations is None) != (args.labels is None):
        raise UsageError("--annotations and --labels go together: the mapping names the model's label column")
    if not args.bundle.is_file():
        raise UsageError(f"--bundle {args.bundle}: no such file")
    for video in args.videos:
        try:  # opens the container only: a file that is no video fails here, before any output
            VideoFileSource(video).close()
        except SourceError as exc:
            raise UsageError(str(exc)) from exc
    for flag, path in (("--out", args.out), ("--video-out", args.video_out)):
        if path is not None and not path.parent.is_dir():
            raise UsageError(f"{flag} {path}: folder {path.parent} does not exist")
    if args.video_out is not None and len(args.videos) > 1 and not args.video_out.is_dir():
        raise UsageError(f"--video-out {args.video_out}: with several videos, give an existing folder")
    if args.out is not None and args.out.is_dir():
        raise UsageError(f"--out {args.out} is a folder; give a file name")


def _annotated_labels(args: argparse.Namespace, classifier: Classifier) -> dict[Path, list]:
    """Per video, the annotated ranges of the model's target column (checked before replaying)."""
    model = classifier.model
    assert model is not None
    target = model.manifest.target
    try:
        mapping = LabelMapping.load(args.labels)
        stems = {video.stem: video for video in args.videos}
        matched, report = match_annotations(read_annotations(args.annotations), stems, mapping)
        report.raise_for_errors()
    except AnnotationError as exc:
        raise UsageError(str(exc)) from exc
    if target not in matched.columns:
        columns = ", ".join(matched.columns) or "none"
        raise UsageError(
            f"--labels {args.labels}: no column {target!r}, the model's target (columns: {columns})"
        )
    return {stems[stem]: [r for r in ranges if r.column == target] for stem, ranges in matched.ranges.items()}


def _replay(classifier: Classifier, video: Path, args: argparse.Namespace, lines: _Lines) -> Replayed:
    from device.overlay import draw_view
    from device.sources import VideoFileSource, paced

    result = Replayed(video)
    with VideoFileSource(video) as source, _rendering(video, source, args) as render:
        lines.write(video.name, classifier.new_clip(), result)
        latest: Prediction | None = None
        for frame in _progress(paced(source, args.fps), source, video, args):
            step = classifier.process(frame)
            result.frame_numbers.append(frame.frame_number)
            result.frame_times_s[frame.frame_number] = frame.timestamp_ms / 1000.0
            lines.write(video.name, step.outputs, result)
            latest = step.predictions[-1] if step.predictions else latest
            if render is not None:
                counter = counter_text(classifier.activity_state())
                view = LiveView(frame.image, step.person, latest, frame.frame_number, counter)
                render.write(draw_view(view, 1 << 16))
        lines.write(video.name, classifier.new_clip(), result)  # sets in progress end with the video
    return result


def _progress(frames: Iterator, source: VideoFileSource, video: Path, args: argparse.Namespace) -> Iterator:
    if args.no_progress or not sys.stderr.isatty():
        return frames
    from tqdm import tqdm

    return tqdm(frames, total=source.frame_count or None, desc=video.name, unit="frame", leave=False)


@contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    """stdout, or a temporary file renamed to ``path`` only when every video was replayed."""
    if path is None:
        yield sys.stdout
        return
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("w", encoding="utf-8") as handle:
            yield handle
        os.replace(partial, path)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot write ({exc.strerror})") from exc
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def _rendering(
    video: Path, source: VideoFileSource, args: argparse.Namespace
) -> Iterator[cv2.VideoWriter | None]:
    """A video writer at the source's size and rate, renamed into place once the video is done."""
    import cv2

    if args.video_out is None:
        yield None
        return
    target = args.video_out / f"{video.stem}{VIDEO_SUFFIX}" if args.video_out.is_dir() else args.video_out
    partial = target.with_name(f".{target.stem}.{os.getpid()}.partial.mp4")
    rate = args.fps or source.fps
    writer = cv2.VideoWriter(
        str(partial), cv2.VideoWriter_fourcc(*"mp4v"), rate, (source.width, source.height)
    )
    if not writer.isOpened():
        raise UsageError(f"--video-out {target}: cannot write an mp4 video there")
    try:
        yield writer
        writer.release()
        os.replace(partial, target)
    finally:
        writer.release()
        partial.unlink(missing_ok=True)


def _summarize(replayed: Sequence[Replayed], truth: dict[Path, list] | None) -> None:
    """Results, seconds per published label and, with annotations, the per-frame score (stderr)."""
    for result in replayed:
        predictions = result.predictions
        print(
            f"{result.video.name}: {len(result.frame_numbers)} frames, {len(predictions)} results",
            file=sys.stderr,
        )
        for label, seconds in _time_per_label(predictions).items():
            print(f"  {label:<24} {seconds:8.1f} s", file=sys.stderr)
        for line in _activity_summary(result.events):
            print(f"  {line}", file=sys.stderr)
        if truth is not None:
            print(
                f"  score: {_describe(score(*_score_video(result, truth.get(result.video, []))))}",
                file=sys.stderr,
            )
    if truth is not None and len(replayed) > 1:
        parts = [_score_video(r, truth.get(r.video, [])) for r in replayed]
        combined = score(np.concatenate([t for t, _ in parts]), np.concatenate([p for _, p in parts]))
        print(f"all videos: {_describe(combined)}", file=sys.stderr)


def _summarize_counting(replayed: Sequence[Replayed], reps: dict[str, list[AnnotatedRep]]) -> None:
    """Counted against annotated repetitions, per video and activity, then RepCount's numbers."""
    rows = [
        row
        for result in replayed
        for row in count_rows(
            result.video.name, reps.get(result.video.stem, []), result.events, result.frame_times_s
        )
    ]
    for row in rows:
        print(
            f"counting {row.video} {row.activity}: {row.annotated} annotated, {row.counted} counted "
            f"(error {row.error:+d})",
            file=sys.stderr,
        )
    print(f"counting: {summary(rows)}", file=sys.stderr)


def _activity_summary(events: Sequence[ActivityEvent]) -> list[str]:
    """Per activity: repetitions and sets (or hold time), and repetitions left incomplete."""
    lines = []
    for name in dict.fromkeys(e.activity for e in events):
        mine = [e for e in events if e.activity == name]
        reps = sum(e.type == "rep" for e in mine)
        sets = sum(e.type == "end" for e in mine)
        held = sum(e.duration_s or 0.0 for e in mine if e.type == "hold")
        incomplete = sum(bool(e.incomplete) for e in mine if e.type == "end")
        counted = f"{held:.1f} s held" if any(e.type == "hold" for e in mine) else f"{reps} repetitions"
        lines.append(
            f"{name}: {counted} in {sets} sets" + (f", {incomplete} left incomplete" if incomplete else "")
        )
    return lines


def _time_per_label(predictions: Sequence[Prediction]) -> dict[str, float]:
    """Seconds each label was on display: from a result's window end to the next result's."""
    seconds: dict[str, float] = {}
    for current, following in itertools.pairwise(predictions):
        seconds[current.label] = (
            seconds.get(current.label, 0.0) + (following.end_ts_ms - current.end_ts_ms) / 1000
        )
    return dict(sorted(seconds.items(), key=lambda item: -item[1]))


def _score_video(result: Replayed, ranges: list) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, published labels) per frame of one video."""
    frames = np.array(result.frame_numbers)
    truth = np.full(len(frames), None, dtype=object)
    if ranges:
        report = check_frame_ranges(result.video.stem, ranges, frames)
        report.raise_for_errors()
        labels = tuple(dict.fromkeys(r.label for r in ranges))
        codes = label_codes(ranges, frames, [ranges[0].column], {ranges[0].column: labels})[0]
        truth[codes >= 0] = np.array(labels, dtype=object)[codes[codes >= 0]]
    return truth, published_per_frame(result.predictions, frames)


def _describe(result: Score) -> str:
    if not result.frames:
        return "no annotated frames"
    rows = "; ".join(
        f"{label}: " + ", ".join(f"{result.labels[j]} {n}" for j, n in enumerate(row) if n)
        for label, row in zip(result.labels, result.confusion.tolist(), strict=True)
        if sum(row)
    )
    return (
        f"{result.frames} annotated frames, accuracy {result.accuracy:.3f}, macro F1 {result.macro_f1:.3f} "
        f"(true: published frames — {rows})"
    )
