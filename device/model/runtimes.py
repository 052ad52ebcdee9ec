"""Model runtimes behind one interface, chosen by the manifest's ``runtime``.

``sklearn``: the fitted Pipeline travels as a skops file. skops trusts every scikit-learn
estimator and every numpy ufunc by default, so a file holding ``FunctionTransformer(numpy.sin)``
(or any estimator that calls back into arbitrary functions) would load without complaint. We
therefore read every type the file names and refuse any outside :data:`SKOPS_ALLOWLIST` — the
types our pipelines are made of — before skops constructs a single object.

``tflite``: an MLP converted by ``trainer.tflite`` runs on ai-edge-litert (or tflite-runtime),
with the imputer's fill values applied in numpy and the scaler folded into the first layer.

Both heavy libraries are imported only when a bundle of their kind is loaded: skops alone takes
about two seconds to import, which a kiosk running a TFLite model should not pay.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from device.model.bundle import MODEL_FILES, BundleError, Manifest, VerifiedBundle

SAMPLE_TOLERANCE = 1e-5

_NUMPY_DATA_TYPES = (
    "bool_", "str_", "float16", "float32", "float64",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
)  # fmt: skip

SKOPS_ALLOWLIST: frozenset[str] = frozenset(
    {
        # containers and plain data
        "builtins.dict", "builtins.list", "builtins.tuple", "builtins.str", "builtins.int",
        "builtins.float", "builtins.bool", "collections.OrderedDict",
        "numpy.ndarray", "numpy.dtype", *(f"numpy.{name}" for name in _NUMPY_DATA_TYPES),
        "numpy.random.mtrand.RandomState", "numpy.random._generator.Generator",
        # the pipeline: impute -> scale -> classify (train saves it without its samplers)
        "sklearn.pipeline.Pipeline", "sklearn.impute._base.SimpleImputer",
        "sklearn.preprocessing._data.StandardScaler",
        # logistic_regression
        "sklearn.linear_model._logistic.LogisticRegression",
        # gradient_boosting
        "sklearn.ensemble._gb.GradientBoostingClassifier", "sklearn.tree._classes.DecisionTreeRegressor",
        "sklearn.dummy.DummyClassifier", "sklearn.tree._tree.Tree",
        "sklearn._loss.loss.HalfBinomialLoss", "sklearn._loss.loss.HalfMultinomialLoss",
        "sklearn._loss._loss.CyHalfBinomialLoss", "sklearn._loss._loss.CyHalfMultinomialLoss",
        "sklearn._loss.link.Interval", "sklearn._loss.link.LogitLink", "sklearn._loss.link.MultinomialLogit",
        # hist_gradient_boosting. skops leaves TreePredictor untrusted because its node indices are
        # not bounds-checked, so a forged file could crash the process; ours are signed and hashed.
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.preprocessing._label.LabelEncoder",
        # random_forest
        "sklearn.ensemble._forest.RandomForestClassifier", "sklearn.tree._classes.DecisionTreeClassifier",
        # svm: SVC calibrated by temperature scaling
        "sklearn.svm._classes.SVC", "sklearn.calibration.CalibratedClassifierCV",
        "sklearn.calibration._CalibratedClassifier", "sklearn.calibration._TemperatureScaling",
        # knn (brute force: no KD/ball tree in the artifact)
        "sklearn.neighbors._classification.KNeighborsClassifier",
        # mlp
        "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.preprocessing._label.LabelBinarizer",
    }
)  # fmt: skip
"""Every type a skops file may name: what our imputer -> scaler -> classifier pipelines contain."""


class ModelRuntime(Protocol):
    """A loaded model: probabilities per row, one column per label, in ``labels`` order."""

    labels: tuple[str, ...]
    columns: tuple[str, ...]

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """``(n, len(columns))`` float rows (NaN where missing) -> ``(n, len(labels))`` probabilities."""
        ...


def _as_rows(rows: np.ndarray, width: int) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != width:
        raise ValueError(f"expected rows of shape (n, {width}), got {rows.shape}")
    return rows


# --------------------------------------------------------------------------- sklearn (skops)


def skops_types(data: bytes, source: str = MODEL_FILES["sklearn"]) -> set[str]:
    """Every ``module.Class`` named anywhere in a skops file's schema, without constructing anything."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise BundleError("types", f"{source} is not a skops file ({exc})") from exc
    found: set[str] = set()
    pending: list[Any] = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if "__module__" in node or "__class__" in node:
                found.add(f"{node.get('__module__')}.{node.get('__class__')}")
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found


def check_skops_types(data: bytes, source: str = MODEL_FILES["sklearn"]) -> None:
    """Refuse a skops file naming any type outside :data:`SKOPS_ALLOWLIST`, naming the types.

    The file's own schema is read first, so a file naming an unknown module is refused before
    skops resolves anything; skops' audit (``get_untrusted_types``) is then asked as a second opinion.
    """
    _refuse_outside_allowlist(skops_types(data, source), source)
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except Exception as exc:  # skops raises many kinds on a malformed file; all mean "not loadable"
        raise BundleError("types", f"{source} is not a valid skops file ({exc})") from exc
    _refuse_outside_allowlist(set(untrusted), source)


def _refuse_outside_allowlist(types: set[str], source: str) -> None:
    refused = sorted(types - SKOPS_ALLOWLIST)
    if refused:
        raise BundleError("types", f"{source} contains types outside the allowlist: {', '.join(refused)}")


def load_skops(data: bytes, source: str = MODEL_FILES["sklearn"]) -> Any:
    """Load a skops file after :func:`check_skops_types`; nothing is constructed before that check."""
    import skops.io

    check_skops_types(data, source)
    try:
        return skops.io.loads(data, trusted=sorted(SKOPS_ALLOWLIST))
    except Exception as exc:  # a file that passed the type check but is still malformed
        raise BundleError("types", f"{source} cannot be loaded ({exc})") from exc


class SklearnRuntime:
    """A fitted scikit-learn Pipeline with ``predict_proba``, checked against the manifest."""

    def __init__(self, pipeline: Any, labels: Sequence[str], columns: Sequence[str]) -> None:
        self.labels = tuple(labels)
        self.columns = tuple(columns)
        _check_pipeline(pipeline, self.labels, self.columns)
        self.pipeline = pipeline

    @classmethod
    def from_bundle(cls, bundle: VerifiedBundle) -> SklearnRuntime:
        manifest = bundle.manifest
        return cls(load_skops(bundle.model_bytes, manifest.model_file), manifest.labels, manifest.columns)

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        rows = _as_rows(rows, len(self.columns))
        with warnings.catch_warnings():
            # fitted on a DataFrame, fed arrays: the names were checked once in _check_pipeline
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            return self.pipeline.predict_proba(rows)


def _check_pipeline(pipeline: Any, labels: tuple[str, ...], columns: tuple[str, ...]) -> None:
    """The model must answer for the manifest's labels, in order, from the manifest's columns."""
    if not hasattr(pipeline, "predict_proba"):
        raise BundleError("runtime", f"{type(pipeline).__name__} has no predict_proba")
    classes = tuple(str(c) for c in getattr(pipeline, "classes_", ()))
    if classes != labels:
        raise BundleError(
            "runtime", f"the model's classes {list(classes)} differ from the labels {list(labels)}"
        )
    if getattr(pipeline, "n_features_in_", None) != len(columns):
        count = getattr(pipeline, "n_features_in_", None)
        raise BundleError(
            "runtime", f"the model reads {count} features, the manifest lists {len(columns)} columns"
        )
    names = getattr(pipeline, "feature_names_in_", None)
    if names is not None and tuple(names) != columns:
        raise BundleError(
            "runtime", "the model was fitted on other column names or order than the manifest's"
        )


# --------------------------------------------------------------------------- TFLite


def _interpreter_class() -> Callable[..., Any]:
    """ai-edge-litert's Interpreter; tflite-runtime's where only that is installed (same API)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise BundleError("runtime", "neither ai-edge-litert nor tflite-runtime is installed") from exc
    return Interpreter


class TFLiteRuntime:
    """A float32 TFLite classifier whose last op is a softmax over ``labels``.

    Not thread-safe (one interpreter, resized to each batch size): one runtime per thread.
    """

    def __init__(
        self, model_content: bytes, labels: Sequence[str], columns: Sequence[str], fill: Sequence[float]
    ) -> None:
        self.labels = tuple(labels)
        self.columns = tuple(columns)
        self._fill = np.asarray(fill, dtype=np.float64)
        if self._fill.shape != (len(self.columns),):
            raise BundleError("runtime", f"{len(self._fill)} fill values for {len(self.columns)} columns")
        try:
            self._interpreter = _interpreter_class()(model_content=model_content)
            self._input = self._interpreter.get_input_details()[0]["index"]
            self._output = self._interpreter.get_output_details()[0]["index"]
        except (ValueError, RuntimeError, IndexError) as exc:
            raise BundleError("runtime", f"{MODEL_FILES['tflite']} cannot be loaded ({exc})") from exc
        self._batch = -1
        self._check_shapes()

    @classmethod
    def from_bundle(cls, bundle: VerifiedBundle) -> TFLiteRuntime:
        manifest = bundle.manifest
        assert manifest.preprocessing is not None  # the manifest schema requires it for tflite
        return cls(bundle.model_bytes, manifest.labels, manifest.columns, manifest.preprocessing.fill)

    def _check_shapes(self) -> None:
        width = int(self._interpreter.get_input_details()[0]["shape"][-1])
        classes = int(self._interpreter.get_output_details()[0]["shape"][-1])
        if (width, classes) != (len(self.columns), len(self.labels)):
            raise BundleError(
                "runtime",
                f"the model maps {width} inputs to {classes} outputs, the manifest has "
                f"{len(self.columns)} columns and {len(self.labels)} labels",
            )

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        rows = _as_rows(rows, len(self.columns))
        if not len(rows):
            return np.empty((0, len(self.labels)))
        if len(rows) != self._batch:
            self._interpreter.resize_tensor_input(self._input, [len(rows), len(self.columns)])
            self._interpreter.allocate_tensors()
            self._batch = len(rows)
        filled = np.where(np.isnan(rows), self._fill, rows).astype(np.float32)
        self._interpreter.set_tensor(self._input, filled)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output).astype(np.float64)


# --------------------------------------------------------------------------- registry

RUNTIMES: dict[str, Callable[[VerifiedBundle], ModelRuntime]] = {
    "sklearn": SklearnRuntime.from_bundle,
    "tflite": TFLiteRuntime.from_bundle,
}
"""Keyed by the manifest's ``runtime`` (the same keys as ``bundle.MODEL_FILES``)."""


def load_runtime(bundle: VerifiedBundle) -> ModelRuntime:
    """The runtime that executes a verified bundle's model."""
    return RUNTIMES[bundle.manifest.runtime](bundle)


def check_samples(runtime: ModelRuntime, manifest: Manifest, tolerance: float = SAMPLE_TOLERANCE) -> float:
    """Smoke test: the runtime must reproduce the manifest's sample probabilities; returns the max error."""
    expected = np.array(manifest.samples.probabilities, dtype=np.float64)
    actual = runtime.predict_proba(np.array(manifest.samples.rows, dtype=np.float64))
    error = float(np.max(np.abs(actual - expected)))
    if not error <= tolerance:  # also catches NaN
        raise BundleError(
            "smoke test", f"sample probabilities differ by {error:.3g} (tolerance {tolerance:g})"
        )
    return error
