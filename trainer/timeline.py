"""Held-out videos over time, for ``report.html``: true and predicted labels along the frames.

A confusion matrix says how often the model is wrong; a timeline says when: at the changes between
movements (a window straddling two), in one stretch (a turn away from the camera), or all along.
Each video is one inline SVG (no external assets, no script) with a strip for the truth and one
for the prediction, a colour per label and a tooltip per stretch.

Rows may overlap (sliding windows) or not (clips, windows, single frames). A row paints the
frames after the previous row's last frame up to its own last frame, which is the frame a
window's label belongs to: so a clip paints all of its frames, and overlapping windows paint
one stride each (the first one too, as if a window one stride earlier came before it), not a
whole window of frames whose labels may differ from its last one's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_hex

MAX_VIDEOS = 50  # beyond this the page gets long; the rest are counted, not drawn
WIDTH, LEFT, RIGHT = 1000, 90, 20  # SVG user units: total width, strip labels, room for the last tick
STRIP, AXIS = 22, 20  # heights
OTHER = "#9e9e9e"  # a label the legend does not know


@dataclass(frozen=True)
class Segment:
    """Frames ``first`` to ``last`` (inclusive) under one label."""

    first: int
    last: int
    label: str


@dataclass(frozen=True)
class Timeline:
    """One held-out video: its frame span, its truth and prediction strips, and the row counts."""

    video_id: str
    first: int
    last: int
    truth: tuple[Segment, ...]
    predicted: tuple[Segment, ...]
    rows: int
    wrong: int


def timelines(
    videos: np.ndarray, frames: np.ndarray, truth: np.ndarray, predicted: np.ndarray
) -> list[Timeline]:
    """One :class:`Timeline` per video, in video order; ``frames`` holds (first, last) per row."""
    order = np.lexsort((frames[:, 0], frames[:, 1], videos))  # by video, then last frame, then first
    made = []
    for rows in np.split(order, np.flatnonzero(videos[order][1:] != videos[order][:-1]) + 1):
        starts, ends, kept, previous = [], [], [], int(frames[rows[0], 0]) - 1
        if len(rows) > 1 and frames[rows[1], 0] <= frames[rows[0], 1]:  # overlapping windows
            previous = int(2 * frames[rows[0], 1] - frames[rows[1], 1])
        for row in rows.tolist():
            first, last = int(frames[row, 0]), int(frames[row, 1])
            if last > previous:  # else its frames are all painted already
                starts.append(max(first, previous + 1))
                ends.append(last)
                kept.append(row)
                previous = last
        made.append(
            Timeline(
                str(videos[rows[0]]),
                starts[0],
                ends[-1],
                _merged(starts, ends, truth[kept].tolist()),
                _merged(starts, ends, predicted[kept].tolist()),
                len(rows),
                int((truth[rows] != predicted[rows]).sum()),
            )
        )
    return made


def _merged(starts: Sequence[int], ends: Sequence[int], labels: Sequence[str]) -> tuple[Segment, ...]:
    """Adjacent stretches of one label as one segment, so the SVG stays small."""
    segments: list[Segment] = []
    for start, end, label in zip(starts, ends, labels, strict=True):
        if segments and segments[-1].label == label and segments[-1].last + 1 == start:
            segments[-1] = Segment(segments[-1].first, end, label)
        else:
            segments.append(Segment(start, end, str(label)))
    return tuple(segments)


def colours(labels: Sequence[str]) -> dict[str, str]:
    """A colour per label, from matplotlib's qualitative palettes (tab10, tab20 beyond ten)."""
    palette = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: to_hex(palette(i % palette.N)) for i, label in enumerate(labels)}


def section(lines: Sequence[Timeline], labels: Sequence[str]) -> list[str]:
    """The report's HTML for the held-out videos: a note, the legend and one SVG per video."""
    palette = colours(labels)
    shown = lines[:MAX_VIDEOS]
    more = f"; the first {len(shown)} of {len(lines)} videos are shown" if len(lines) > len(shown) else ""
    parts = [
        "<p class=note>each held-out video along its frames: the upper strip is the true label, the "
        f"lower one the model's prediction; blank frames have no held-out row{more}</p>",
        _legend(palette),
    ]
    for line in shown:
        caption = f"{line.video_id}: frames {line.first}–{line.last}, {line.rows} rows, {line.wrong} wrong"
        parts.append(f"<figure>{svg(line, palette)}<figcaption>{escape(caption)}</figcaption></figure>")
    return parts


def _legend(palette: Mapping[str, str]) -> str:
    items = "".join(
        f'<span class=swatch style="background:{colour}"></span>{escape(label)} '
        for label, colour in palette.items()
    )
    return f"<p class=legend>{items}</p>"


def svg(line: Timeline, palette: Mapping[str, str]) -> str:
    """The two strips of one video and a frame axis, as an inline ``<svg>`` element."""
    scale = (WIDTH - LEFT - RIGHT) / (line.last - line.first + 1)

    def x(frame: float) -> str:
        return f"{LEFT + (frame - line.first) * scale:.2f}"

    def strip(name: str, segments: Iterable[Segment], top: int) -> str:
        rects = "".join(
            f'<rect x="{x(s.first)}" y="{top}" width="{(s.last - s.first + 1) * scale:.2f}" '
            f'height="{STRIP}" fill="{palette.get(s.label, OTHER)}">'
            f"<title>{escape(name)}: {escape(s.label)}, frames {s.first}–{s.last}</title></rect>"
            for s in segments
        )
        return f'<text x="0" y="{top + STRIP - 6}">{escape(name)}</text>{rects}'

    height = 2 * STRIP + 4 + AXIS
    ticks = sorted({int(round(f)) for f in np.linspace(line.first, line.last, 6)})
    axis = "".join(
        f'<text x="{x(tick + 0.5)}" y="{height - 4}" text-anchor="middle">{tick}</text>' for tick in ticks
    )
    label = f"true and predicted labels of {line.video_id} by frame"
    return (
        f'<svg viewBox="0 0 {WIDTH} {height}" width="100%" role="img" aria-label="{escape(label)}" '
        f'font-size="12" font-family="system-ui, sans-serif">'
        f"{strip('true', line.truth, 0)}{strip('predicted', line.predicted, STRIP + 4)}{axis}</svg>"
    )
