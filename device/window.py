"""The rolling window of keypoints that a model classifies.

Frames arrive one at a time; every ``stride`` frames, once ``size`` frames are held, the window
is handed on as an immutable :class:`Window`. The ring buffer is preallocated, so the hot path
copies one ``(33, 5)`` row per frame and nothing else. Frames without a person are either
skipped (the window spans the gap) or reset the window, as the model's bundle says. Skipping is
meant for short dropouts (a missed detection, someone briefly occluded): once a whole window's
worth of consecutive frames had nobody in them, the window is reset anyway, so a window never
joins the end of one visit to the start of the next minutes later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from device.keypoints import CHANNELS, JOINTS


@dataclass(frozen=True)
class Window:
    """``size`` consecutive frames with a person, oldest first; arrays are read-only."""

    points: np.ndarray  # (size, 33, 5)
    frame_numbers: np.ndarray
    timestamps_ms: np.ndarray
    captured_at: float  # monotonic time the newest frame was captured


class RollingWindow:
    """Collects frames into windows of ``size`` frames every ``stride`` frames."""

    def __init__(self, size: int, stride: int, no_person: Literal["skip", "reset"] = "skip") -> None:
        if size < 1 or stride < 1:
            raise ValueError(f"window size and stride must be >= 1, got {size} and {stride}")
        self.size, self.stride, self.no_person = size, stride, no_person
        self._points = np.empty((size, len(JOINTS), len(CHANNELS)))
        self._frames = np.empty(size, dtype=np.int64)
        self._stamps = np.empty(size)
        self._count = 0  # frames held, up to size
        self._head = 0  # where the next frame goes
        self._since_emit = 0
        self._absent = 0  # consecutive frames without a person

    def reset(self) -> None:
        """Forget everything (a new clip, a model with another window, a reset policy)."""
        self._count = self._head = self._since_emit = self._absent = 0

    def push(
        self, frame_number: int, timestamp_ms: float, captured_at: float, points: np.ndarray | None
    ) -> Window | None:
        """Add one frame (``points`` is ``(33, 5)`` or None without a person); maybe emit a window."""
        if points is None:
            self._absent += 1
            if self.no_person == "reset" or self._absent >= self.size:
                self.reset()
            return None
        self._absent = 0
        self._points[self._head] = points
        self._frames[self._head] = frame_number
        self._stamps[self._head] = timestamp_ms
        self._head = (self._head + 1) % self.size
        self._count = min(self._count + 1, self.size)
        self._since_emit += 1
        if self._count < self.size or self._since_emit < self.stride:
            return None
        self._since_emit = 0
        order = np.roll(np.arange(self.size), -self._head)  # oldest first
        window = Window(self._points[order], self._frames[order], self._stamps[order], captured_at)
        for array in (window.points, window.frame_numbers, window.timestamps_ms):
            array.setflags(write=False)
        return window
