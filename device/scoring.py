"""How well a replay's published labels match annotated frames: accuracy, macro F1, confusion.

A kiosk publishes a label when a window ends; that label is what a dashboard shows until the
next one. So each frame is scored against the label published most recently at or before it
(``NONE`` before the first result of a clip, ``unknown`` when the threshold withheld a label).
Both count as wrong: a kiosk that says nothing, or says "unknown", has not recognised the
movement. Only frames with an annotated label are scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from device.prediction import Prediction

NONE = "(none yet)"
"""What a frame before the clip's first result is scored as."""


def published_per_frame(predictions: Sequence[Prediction], frame_numbers: np.ndarray) -> np.ndarray:
    """The label on display at each frame: the latest result whose window ended at or before it."""
    labels = np.full(len(frame_numbers), NONE, dtype=object)
    if not predictions:
        return labels
    ends = np.array([p.last_frame for p in predictions])
    shown = np.array([p.label for p in predictions], dtype=object)
    latest = np.searchsorted(ends, frame_numbers, side="right") - 1
    labels[latest >= 0] = shown[latest[latest >= 0]]
    return labels


@dataclass(frozen=True)
class Score:
    """Per-frame agreement of published labels with the annotations, over the scored frames."""

    labels: tuple[str, ...]  # the annotated labels, then anything else that was published
    confusion: np.ndarray  # (true, published) frame counts, rows and columns in ``labels`` order
    frames: int

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / self.frames) if self.frames else 0.0

    @property
    def per_label_f1(self) -> dict[str, float]:
        """F1 of each annotated label (a published-only label such as ``unknown`` has no F1)."""
        true = self.confusion.sum(axis=1)
        published = self.confusion.sum(axis=0)
        hits = np.diag(self.confusion)
        scores = {}
        for i, label in enumerate(self.labels):
            if true[i]:
                denominator = true[i] + published[i]
                scores[label] = float(2 * hits[i] / denominator) if denominator else 0.0
        return scores

    @property
    def macro_f1(self) -> float:
        scores = self.per_label_f1
        return float(np.mean(list(scores.values()))) if scores else 0.0

    def as_dict(self) -> dict:
        return {
            "frames": self.frames,
            "accuracy": round(self.accuracy, 6),
            "macro_f1": round(self.macro_f1, 6),
            "f1": {label: round(value, 6) for label, value in self.per_label_f1.items()},
            "labels": list(self.labels),
            "confusion": self.confusion.tolist(),
        }


def score(truth: np.ndarray, published: np.ndarray) -> Score:
    """Confusion of the annotated frames (``truth`` None where unannotated) against ``published``."""
    annotated = np.array([t is not None for t in truth], dtype=bool)
    true, shown = truth[annotated].astype(str), published[annotated].astype(str)
    names = tuple(dict.fromkeys([*sorted(set(true.tolist())), *sorted(set(shown.tolist()))]))
    index = {name: i for i, name in enumerate(names)}
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(confusion, ([index[t] for t in true], [index[s] for s in shown]), 1)
    return Score(names, confusion, int(annotated.sum()))
