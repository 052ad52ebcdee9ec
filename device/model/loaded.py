"""A verified bundle bound to the feature engine: from a window of keypoints to probabilities.

The column order the model was trained on is resolved to an index array at load time, so a
bundle whose columns this device cannot compute is refused before it ever runs.
"""

from __future__ import annotations

import numpy as np

from device.features import FeatureEngine, WindowSpec, window_features, window_names
from device.model.bundle import Manifest, VerifiedBundle
from device.model.runtimes import ModelRuntime, load_runtime
from device.status import ModelInfo


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
        self.info = ModelInfo(
            model_id=manifest.model_id,
            version=manifest.version,
            sha256=manifest.sha256,
            runtime=manifest.runtime,
            labels=manifest.labels,
            window=self.window_size,
            label_names=manifest.label_names,
        )

    def row(self, per_frame: np.ndarray) -> np.ndarray:
        """The model's input row ``(1, columns)`` from one window's per-frame features
        (``self.engine.compute(window.points)``, which the activity stage reads too)."""
        values = per_frame[-1:] if self.window_spec is None else window_features(per_frame, self.window_spec)
        return values[:, self._columns]

    def probabilities(self, row: np.ndarray) -> np.ndarray:
        return self.runtime.predict_proba(row)[0]
