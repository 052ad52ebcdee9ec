"""The decision pipeline: keypoints → window → features → model → smoothing → activities.

One :class:`DecisionPipeline` per running model; what it produces are :data:`Output` objects —
classifications and activity events — each with the ``topic`` it is published on. The daemon,
``python -m device replay`` and the Python API (:mod:`device.classifier`) all push frames
through this one class, so a kiosk, a replay of a video and an integrator's program make the
same decisions from the same keypoints.

Every timing is the source's: windows are spans of source time (:mod:`device.window`), smoothing
spans are seconds of source time (:mod:`device.smoothing`). The wall clock appears only in what a
live kiosk reports about itself (``ts``, ``latency_ms``); a replay reports source time there
instead (:class:`Timebase`), so the same video gives the same lines on every run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np

from device.activities import ActivityEvent, ActivityStage
from device.model.bundle import Smoothing
from device.model.loaded import LoadedModel
from device.prediction import Prediction
from device.smoothing import Smoother
from device.window import Window, windower

Output = Prediction | ActivityEvent
"""What the pipeline publishes: ``output.topic`` and ``output.payload()`` (the outbox adds seq)."""

UNKNOWN = "unknown"
"""The label published when the chosen label's confidence is below the decision threshold."""

StageTimer = Callable[[str, float], None]
"""Told how long a stage took (``"features"``, ``"classify"``), in seconds; the status board's."""


class Timebase(Enum):
    """What ``ts`` and ``latency_ms`` of a result mean.

    ``WALL``: a live kiosk — ``ts`` is the wall clock when the result was made, ``latency_ms``
    the time since the window's newest frame was captured. ``SOURCE``: a replay — ``ts`` is the
    window's end in seconds of source time and ``latency_ms`` is 0, so results do not depend on
    how fast or when the replay ran.
    """

    WALL = "wall"
    SOURCE = "source"


@dataclass(frozen=True)
class DecisionSettings:
    """Threshold, smoothing and the no-person policy: the bundle's, or the config's overrides."""

    threshold: float
    smoothing: Smoothing
    no_person: str  # skip | reset

    @classmethod
    def of(cls, model: LoadedModel) -> DecisionSettings:
        decision = model.manifest.decision
        return cls(decision.threshold, decision.smoothing, decision.no_person)


class DecisionPipeline:
    """Frames of one person (track ``person``) → outputs, with one model's settings."""

    def __init__(
        self,
        model: LoadedModel,
        settings: DecisionSettings | None = None,
        timebase: Timebase = Timebase.WALL,
        timer: StageTimer | None = None,
        person: int = 1,
    ) -> None:
        self.model = model
        self.person = person
        self.station: str | None = None  # where the person is now, when stations are configured
        self.settings = settings or DecisionSettings.of(model)
        smoothing = self.settings.smoothing
        self.smoother = Smoother(smoothing.kind, smoothing.span_s, smoothing.enter, smoothing.exit)
        self.window = windower(model.window_spec, self.settings.no_person)
        self.timebase = timebase
        self._timer = timer
        self.activities = self._activity_stage()
        self._fresh_activities = False
        self._smoothed: np.ndarray | None = None  # the latest result's probabilities, for activities

    def _activity_stage(self) -> ActivityStage | None:
        manifest = self.model.manifest
        if not manifest.activities:
            return None
        return ActivityStage(manifest.activities, manifest.labels, self.model.engine.names, self.person)

    def reset(self) -> list[ActivityEvent]:
        """A new clip (or person): sets in progress end (their events are returned), and windows,
        smoothing and activities start afresh."""
        ended = self.activities.finish() if self.activities is not None else []
        self.window.reset()
        self.smoother.reset()
        self._fresh_activities = True  # on the next frame: until then the ended state stays on show
        return ended

    def push(
        self,
        frame_number: int,
        timestamp_ms: float,
        points: np.ndarray | None,
        captured_at: float | None = None,
    ) -> list[Output]:
        """One frame's keypoints (``(33, 5)``, None without a person): a classification when a
        window ends, and any activity events the frame completes."""
        captured_at = time.monotonic() if captured_at is None else captured_at
        window = self.window.push(frame_number, timestamp_ms, captured_at, points)
        prediction = features = None
        if window is not None:
            began = time.monotonic()
            features = self.model.engine.compute(window.points)
            row = self.model.row(features)
            self._time("features", began)
            prediction = self.decide(window, row)
        outputs: list[Output] = [] if prediction is None else [prediction]
        if self._fresh_activities:
            self.activities, self._fresh_activities = self._activity_stage(), False
        if self.activities is not None:
            began = time.monotonic()
            probabilities = None if prediction is None else self._smoothed  # as the prediction's
            latest = None if features is None else features[-1]  # the window's newest sample
            self.activities.who.station = self.station
            outputs += self.activities.update(
                timestamp_ms, points is not None, latest, probabilities, self._ts(timestamp_ms)
            )
            self._time("activities", began)
        return outputs

    def _ts(self, timestamp_ms: float) -> float:
        return time.time() if self.timebase is Timebase.WALL else timestamp_ms / 1000.0

    def decide(self, window: Window, row: np.ndarray) -> Prediction:
        """Model, smoothing and threshold for one window's input ``row``."""
        began = time.monotonic()
        raw = self.model.probabilities(row)
        end_ms = float(window.timestamps_ms[-1])
        decision = self.smoother.decide(end_ms, raw)
        self._smoothed = decision.probabilities
        self._time("classify", began)
        labels = self.model.manifest.labels
        label = labels[decision.label] if decision.confidence >= self.settings.threshold else UNKNOWN
        info = self.model.info
        live = self.timebase is Timebase.WALL
        return Prediction(
            ts=self._ts(end_ms),
            label=label,
            confidence=decision.confidence,
            probabilities=tuple(zip(labels, map(float, decision.probabilities), strict=True)),
            first_frame=int(window.frame_numbers[0]),
            last_frame=int(window.frame_numbers[-1]),
            start_ts_ms=float(window.timestamps_ms[0]),
            end_ts_ms=end_ms,
            model_id=info.model_id,
            model_version=info.version,
            latency_ms=(time.monotonic() - window.captured_at) * 1000.0 if live else 0.0,
            person=self.person,
            station=self.station,
        )

    def _time(self, stage: str, began: float) -> None:
        if self._timer is not None:
            self._timer(stage, time.monotonic() - began)
