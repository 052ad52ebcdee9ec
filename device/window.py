"""Windows of keypoints that a model classifies: spans of time, resampled to the model's rate.

A model that reads windows learned them from videos at one frame rate (``WindowSpec.fps``): a
window of ``size`` frames is ``(size - 1) / fps`` seconds of movement, one every ``stride / fps``
seconds. A kiosk sees frames at whatever rate its pose stage manages (5 frames/s on a Raspberry
Pi 4, 50 on a desktop, fewer under load), so :class:`TimeWindow` holds the frames of the last
window's span with their source timestamps and samples them at the model's rate, by linear
interpolation between the two frames around each sample time. A model thus sees windows of the
same duration at any kiosk rate, and the same video gives the same windows however fast it is
processed.

Windows end on a fixed grid, ``first frame + duration + n × step``, so which windows exist does
not depend on which frames were dropped. When frames arrive slower than the grid (a slow kiosk),
the latest grid point is used and the ones in between are skipped. Interpolation is NaN-aware: a
coordinate that is missing in one of the two neighbouring frames takes the nearer frame's value
(NaN if that one is missing), so a joint lost for one frame is not smeared over the window.

Frames without a person are skipped (the window spans a short dropout) or reset the window, as the
bundle says; a gap without frames longer than a window (a long absence, a stall, a jump back in
time: a new clip) always starts afresh, so a window never joins two visits.

Models that read single frames use :class:`FrameWindow`: every frame with a person is a window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from device.features import WindowSpec
from device.keypoints import CHANNELS, JOINTS


@dataclass(frozen=True)
class Window:
    """A model's input span: ``size`` samples, oldest first; arrays are read-only.

    ``timestamps_ms`` are the sample times (source time, the model's rate); ``frame_numbers``
    the source frame nearest to each sample, so a result can name the frames it describes.
    """

    points: np.ndarray  # (size, 33, 5)
    frame_numbers: np.ndarray  # (size,)
    timestamps_ms: np.ndarray  # (size,)
    captured_at: float  # monotonic time the newest frame was captured


class Windower(Protocol):
    """Frames in, windows out; one per model, reset with every new clip."""

    def push(
        self, frame_number: int, timestamp_ms: float, captured_at: float, points: np.ndarray | None
    ) -> Window | None: ...

    def reset(self) -> None: ...


def _frozen(*arrays: np.ndarray) -> None:
    for array in arrays:
        array.setflags(write=False)


class FrameWindow:
    """Per-frame models: each frame with a person is a window of one frame."""

    def push(
        self, frame_number: int, timestamp_ms: float, captured_at: float, points: np.ndarray | None
    ) -> Window | None:
        if points is None:
            return None
        window = Window(
            np.array(points, dtype=np.float64)[None],
            np.array([frame_number], dtype=np.int64),
            np.array([timestamp_ms], dtype=np.float64),
            captured_at,
        )
        _frozen(window.points, window.frame_numbers, window.timestamps_ms)
        return window

    def reset(self) -> None:
        """Nothing is held between frames."""


_TOLERANCE_MS = 1e-3
"""Frame times and grid points closer than this (a microsecond) are the same instant: a 30 frames/s
video's frame at 1000 ms must reach the grid point 30 × (1000 / 30) ms, whatever the rounding."""


class TimeWindow:
    """Frames at any rate -> windows of ``spec.size`` samples at ``spec.fps``, every ``spec.stride``."""

    _INITIAL_CAPACITY = 64

    def __init__(self, spec: WindowSpec, no_person: str = "skip") -> None:
        if spec.fps is None:
            raise ValueError("a window needs its frame rate (WindowSpec.fps) to be a span of time")
        self.spec, self.no_person = spec, no_person
        self.period_ms = 1000.0 / spec.fps
        self.duration_ms = (spec.size - 1) * self.period_ms
        self.step_ms = spec.stride * self.period_ms
        # a longer time without a frame ends the window: nothing is interpolated across it
        self.max_gap_ms = max(self.duration_ms, self.step_ms, self.period_ms)
        self._offsets = np.arange(spec.size) * self.period_ms - self.duration_ms
        capacity = max(self._INITIAL_CAPACITY, 2 * spec.size)
        self._points = np.empty((capacity, len(JOINTS), len(CHANNELS)))
        self._stamps = np.empty(capacity)
        self._frames = np.empty(capacity, dtype=np.int64)
        self._start = self._end = 0  # frames held: [_start, _end)
        self._first_end = 0.0  # the first window's end: grid point 0
        self._next = 0  # the next grid point a window may end on

    def reset(self) -> None:
        """Forget every frame (a new clip, a long absence, a model with another window)."""
        self._start = self._end = 0
        self._next = 0

    def push(
        self, frame_number: int, timestamp_ms: float, captured_at: float, points: np.ndarray | None
    ) -> Window | None:
        """Add one frame (``points`` is ``(33, 5)``, None without a person); maybe emit a window."""
        held = self._end > self._start
        if held:
            last = self._stamps[self._end - 1]
            if timestamp_ms < last or timestamp_ms - last > self.max_gap_ms:
                self.reset()
                held = False
            elif timestamp_ms == last:
                return None  # a repeated timestamp adds nothing to sample from
        if points is None:
            if self.no_person == "reset":
                self.reset()
            return None
        self._append(frame_number, timestamp_ms, points)
        if not held:
            self._first_end = timestamp_ms + self.duration_ms
        # the latest grid point this frame reaches (any in between were missed by a slow source);
        # grid points are computed, not accumulated, and a frame a hair before one reaches it
        reached = math.floor((timestamp_ms + _TOLERANCE_MS - self._first_end) / self.step_ms)
        if reached < self._next:
            return None
        self._next = reached + 1
        end = self._first_end + reached * self.step_ms
        window = self._sample(end + self._offsets, captured_at)
        self._forget_before(end + self.step_ms - self.duration_ms)
        return window

    def _append(self, frame_number: int, timestamp_ms: float, points: np.ndarray) -> None:
        if self._end == len(self._stamps):
            self._make_room()
        self._points[self._end] = points
        self._stamps[self._end] = timestamp_ms
        self._frames[self._end] = frame_number
        self._end += 1

    def _make_room(self) -> None:
        """Move the held frames to the front, growing the buffers only when they are mostly full."""
        count = self._end - self._start
        if count > len(self._stamps) // 2:
            grow = len(self._stamps)
            self._points = np.concatenate([self._points, np.empty_like(self._points[:grow])])
            self._stamps = np.concatenate([self._stamps, np.empty(grow)])
            self._frames = np.concatenate([self._frames, np.empty(grow, dtype=np.int64)])
        for array in (self._points, self._stamps, self._frames):
            array[:count] = array[self._start : self._end]
        self._start, self._end = 0, count

    def _forget_before(self, time_ms: float) -> None:
        """Drop frames the next window cannot need: all but the last one at or before ``time_ms``."""
        stamps = self._stamps[self._start : self._end]
        keep_from = int(np.searchsorted(stamps, time_ms, side="right")) - 1
        self._start += max(keep_from, 0)

    def _sample(self, times: np.ndarray, captured_at: float) -> Window:
        """Linear interpolation of the held frames at ``times`` (all within the held span)."""
        stamps = self._stamps[self._start : self._end]
        points = self._points[self._start : self._end]
        last = len(stamps) - 1
        right = np.minimum(np.searchsorted(stamps, times, side="left"), last)
        left = np.maximum(right - 1, 0)
        left = np.where(stamps[right] <= times, right, left)  # an exact hit needs no neighbour
        span = stamps[right] - stamps[left]
        weight = np.divide(times - stamps[left], span, out=np.zeros_like(times), where=span > 0)
        before, after = points[left], points[right]
        w = weight[:, None, None]
        nearest = np.where(w < 0.5, before, after)
        mixed = np.where(np.isfinite(before) & np.isfinite(after), before + w * (after - before), nearest)
        frames = self._frames[self._start : self._end][np.where(weight < 0.5, left, right)]
        window = Window(mixed, frames, times.copy(), captured_at)
        _frozen(window.points, window.frame_numbers, window.timestamps_ms)
        return window


def windower(spec: WindowSpec | None, no_person: str = "skip") -> Windower:
    """The windower a model needs: per frame without a window spec, else a :class:`TimeWindow`."""
    return FrameWindow() if spec is None else TimeWindow(spec, no_person)
