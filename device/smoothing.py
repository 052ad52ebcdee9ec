"""Steadier decisions from a stream of probability vectors, over spans of time.

A model's probabilities flicker from one window to the next. Smoothing trades a little delay for
labels that do not: ``mean`` averages the probability vectors of the last ``span_s`` seconds (of
source time, so a kiosk at 5 and one at 50 results a second smooth over the same movement);
``hysteresis`` keeps the current label until its probability falls below ``exit`` and switches
only to a label at or above ``enter``. ``none`` passes the model's vector through.

What :meth:`Smoother.decide` returns is what is published: the (smoothed) probabilities, the
chosen label and its confidence, which is always the chosen label's probability in those
probabilities — with ``mean``, the label's mean probability over the span, and the chosen label
is the most probable one there. Only hysteresis may hold a label that is not the most probable,
which is its purpose.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

SMOOTHING_KINDS: tuple[str, ...] = ("none", "mean", "hysteresis")


@dataclass(frozen=True)
class Decision:
    """One smoothed decision: ``label`` indexes ``probabilities``; ``confidence`` is its probability."""

    probabilities: np.ndarray
    label: int
    confidence: float


class Smoother:
    """Decides on one probability vector at a time; :meth:`reset` with every clip and person."""

    def __init__(self, kind: str, span_s: float = 0.0, enter: float = 0.6, exit: float = 0.4) -> None:
        if kind not in SMOOTHING_KINDS:
            raise ValueError(f"smoothing kind must be none, mean or hysteresis, got {kind!r}")
        if span_s < 0 or not 0 <= exit <= enter <= 1:
            raise ValueError(f"need span_s >= 0 and 0 <= exit <= enter <= 1, got {span_s}, {enter}, {exit}")
        self.kind, self.span_ms, self.enter, self.exit = kind, span_s * 1000.0, enter, exit
        self._recent: deque[tuple[float, np.ndarray]] = deque()
        self._current: int | None = None

    def reset(self) -> None:
        """Forget the past: a new clip or a new person starts undecided."""
        self._recent.clear()
        self._current = None

    def decide(self, timestamp_ms: float, probabilities: np.ndarray) -> Decision:
        """The decision for the result at ``timestamp_ms`` (source time of its window's end)."""
        if self.kind == "mean":
            probabilities = self._mean_over_span(timestamp_ms, probabilities)
        best = int(np.argmax(probabilities))
        if self.kind == "hysteresis":
            keep = self._current is not None and probabilities[self._current] >= self.exit
            if not keep and (self._current is None or probabilities[best] >= self.enter):
                self._current = best
            best = self._current
        return Decision(probabilities, best, float(probabilities[best]))

    def _mean_over_span(self, timestamp_ms: float, probabilities: np.ndarray) -> np.ndarray:
        """The time-weighted mean of the results of the last ``span_s`` seconds.

        Each result stands for the time since the one before it (its window ended then), so a
        result's weight is how much of that interval lies in the span. Weighting by time rather
        than counting results makes the mean one over seconds: a kiosk with 2 results a second and
        one with 10 average the same stretch of movement alike. The oldest result held only marks
        where the next one's interval starts; the first result of a clip stands alone.
        """
        self._recent.append((timestamp_ms, probabilities))
        since = timestamp_ms - self.span_ms
        while len(self._recent) > 1 and self._recent[1][0] <= since:
            self._recent.popleft()
        if len(self._recent) == 1 or self.span_ms == 0:
            return probabilities
        times = np.array([t for t, _ in self._recent])
        starts = np.maximum(times[:-1], since)
        weights = np.maximum(times[1:] - starts, 0.0)
        if weights.sum() <= 0:  # every earlier result at this very instant
            return probabilities
        return weights @ np.stack([p for _, p in list(self._recent)[1:]]) / weights.sum()
