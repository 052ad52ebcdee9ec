"""From a window of keypoints to a published label: features, model, decision.

:class:`LoadedModel` binds a verified bundle to the feature engine once — the column order the
model was trained on is resolved to an index array at load time, so a bundle whose columns this
device cannot compute is refused before it ever runs. :class:`Classifier` adds the decision
layer (threshold and smoothing) and makes :class:`~device.prediction.Prediction` objects.
"""

from __future__ import annotations

import time
from collections import Counter, deque

import numpy as np

from device.features import FeatureEngine, WindowSpec, window_features, window_names
from device.model.bundle import Manifest, VerifiedBundle
from device.model.runtimes import ModelRuntime, load_runtime
from device.prediction import Prediction
from device.status import ModelInfo
from device.window import Window

UNKNOWN = "unknown"
"""The label published when the best probability is below the bundle's decision threshold."""


class LoadedModel:
    """A bundle's runtime plus everything needed to feed it the right columns in the right order."""

    def __init__(self, bundle: VerifiedBundle, runtime: ModelRuntime | None = None) -> None:
        manifest = bundle.manifest
        self.manifest: Manifest = manifest
        self.runtime = runtime or load_runtime(bundle)
        self.engine = FeatureEngine(manifest.feature_spec)
        self.window_spec: WindowSpec | None = manifest.window
        names = (
            self.engine.names
            if self.window_spec is None
            else window_names(self.engine.names, self.window_spec)
        )
        position = {name: i for i, name in enumerate(names)}
        self._columns = np.array([position[c] for c in manifest.columns], dtype=np.intp)
        self.window_size = 1 if self.window_spec is None else self.window_spec.size
        self.stride = 1 if self.window_spec is None else self.window_spec.stride
        self.info = ModelInfo(
            model_id=manifest.model_id,
            version=manifest.version,
            sha256=manifest.sha256,
            runtime=manifest.runtime,
            labels=manifest.labels,
            window=self.window_size,
        )

    def row(self, window: Window) -> np.ndarray:
        """The model's input row ``(1, columns)`` for one window."""
        per_frame = self.engine.compute(window.points)
        values = per_frame[-1:] if self.window_spec is None else window_features(per_frame, self.window_spec)
        return values[:, self._columns]

    def probabilities(self, row: np.ndarray) -> np.ndarray:
        return self.runtime.predict_proba(row)[0]


class Smoother:
    """Turns a stream of probability vectors into a steadier stream of decisions.

    ``decide`` returns the chosen label's index and its confidence: for majority smoothing the
    mean probability of that label over the last ``k`` results (its current probability alone
    can be tiny while the vote still holds), otherwise its current probability.
    """

    def __init__(self, kind: str, k: int = 1, enter: float = 0.6, exit: float = 0.4) -> None:
        self.kind, self.k, self.enter, self.exit = kind, k, enter, exit
        self._recent: deque[np.ndarray] = deque(maxlen=k)
        self._current: int | None = None

    def decide(self, probabilities: np.ndarray) -> tuple[int, float]:
        best = int(np.argmax(probabilities))
        if self.kind == "majority":
            self._recent.append(probabilities)
            votes = Counter(int(np.argmax(p)) for p in self._recent)
            top = max(votes.values())
            # ties go to the most recent of the tied labels: the freshest evidence
            chosen = next(
                int(np.argmax(p)) for p in reversed(self._recent) if votes[int(np.argmax(p))] == top
            )
            return chosen, float(np.mean([p[chosen] for p in self._recent]))
        if self.kind == "hysteresis":
            keep = self._current is not None and probabilities[self._current] >= self.exit
            if not keep and (self._current is None or probabilities[best] >= self.enter):
                self._current = best
            best = self._current
        return best, float(probabilities[best])


class Classifier:
    """Window -> :class:`Prediction` with the bundle's threshold and smoothing (or overrides)."""

    def __init__(self, model: LoadedModel, smoother: Smoother) -> None:
        self.model = model
        self.smoother = smoother
        self.threshold = model.manifest.decision.threshold

    def classify(self, window: Window) -> Prediction:
        return self.predict(window, self.model.row(window))

    def predict(self, window: Window, row: np.ndarray) -> Prediction:
        """The decision for a window whose input ``row`` was already computed (timed apart)."""
        probabilities = self.model.probabilities(row)
        chosen, confidence = self.smoother.decide(probabilities)
        labels = self.model.manifest.labels
        label = labels[chosen] if confidence >= self.threshold else UNKNOWN
        info = self.model.info
        return Prediction(
            ts=time.time(),
            label=label,
            confidence=confidence,
            probabilities=tuple(zip(labels, map(float, probabilities), strict=True)),
            first_frame=int(window.frame_numbers[0]),
            last_frame=int(window.frame_numbers[-1]),
            start_ts_ms=float(window.timestamps_ms[0]),
            end_ts_ms=float(window.timestamps_ms[-1]),
            model_id=info.model_id,
            model_version=info.version,
            latency_ms=(time.monotonic() - window.captured_at) * 1000.0,
        )
