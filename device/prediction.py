"""What the pipeline says about a window: the immutable result every consumer shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Prediction:
    """One classification of one window of frames.

    ``probabilities`` is a tuple of (label, probability) pairs in the model's label order; the
    MQTT payload (DESIGN.md §5) is :meth:`payload`, to which the outbox adds ``seq``.
    """

    ts: float  # wall-clock seconds when the result was made
    label: str
    confidence: float
    probabilities: tuple[tuple[str, float], ...]
    first_frame: int
    last_frame: int
    start_ts_ms: float
    end_ts_ms: float
    model_id: str
    model_version: str
    latency_ms: float  # from the window's last frame being captured to this result
    person: int = 1  # the anonymous track id (1 when one person is followed)
    station: str | None = None  # the station the person was in, when stations are configured

    topic = "classification"

    def payload(self) -> dict[str, Any]:
        return {
            "ts": round(self.ts, 3),
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "probabilities": {label: round(p, 6) for label, p in self.probabilities},
            "window": {
                "first_frame": self.first_frame,
                "last_frame": self.last_frame,
                "start_ts_ms": round(self.start_ts_ms, 3),
                "end_ts_ms": round(self.end_ts_ms, 3),
            },
            "model": {"id": self.model_id, "version": self.model_version},
            "person": self.person,
            **({"station": self.station} if self.station is not None else {}),
            "latency_ms": round(self.latency_ms, 3),
        }
