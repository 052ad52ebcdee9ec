"""``python -m trainer keygen | export | verify``: signing keys, signed model bundles, and their check.

``export`` turns a run directory (docs/trainer-contracts.md) into the bundle a kiosk accepts: an
MLP becomes a TFLite model (checked against scikit-learn on every held-out row), any other model
travels as the run's skops file. The manifest is validated by the device's own schema before it
is signed, and the written bundle is opened exactly as a device would open it (signature, hash,
runtime, smoke test) before export reports success.

scikit-learn's metrics and the TFLite converter are imported where a bundle is made, so that
``keygen``, ``verify`` and every ``--help`` start without them.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from device import __version__ as DEVICE_VERSION
from device.cli import Command, ExitStatus, UsageError
from device.documents import read_document
from device.features import POOLS, FeatureSpec, FeatureSpecError, WindowSpec
from device.model.bundle import (
    MANIFEST,
    MAX_MANIFEST_SIZE,
    MAX_SMOOTHING_S,
    MODEL_FILES,
    NO_PERSON_POLICIES,
    SCHEMA_VERSION,
    BundleError,
    VerifiedBundle,
    key_id,
    load_private_key,
    load_public_key,
    open_bundle,
    write_atomic,
    write_bundle,
)
from device.model.fields import parse_version
from device.model.runtimes import (
    SAMPLE_TOLERANCE,
    ModelRuntime,
    SklearnRuntime,
    TFLiteRuntime,
    check_samples,
    load_runtime,
    load_skops,
)
from trainer import tracking
from trainer.export_documents import ActivitiesFile, LabelNames
from trainer.messages import some

SAMPLE_ROWS = 20
DEFAULT_SMOOTHING, DEFAULT_NO_PERSON = "none", "skip"
KEEP_CORRECT = 0.99
"""Share of the right held-out decisions the default threshold keeps; the rest become ``unknown``."""
DEFAULT_HYSTERESIS = (0.6, 0.4)  # enter, exit
PRIVATE_KEY, PUBLIC_KEY = "signing.key", "signing.pub"
_FLATTENED = re.compile(r"f\d+\.")


# --------------------------------------------------------------------------- keygen

KEYGEN_DESCRIPTION = """\
Create an Ed25519 signing key pair: DIR/signing.key (PKCS#8 PEM, mode 0600; keep it on the
workstation) and DIR/signing.pub (give it to the devices, which trust only the keys they hold).
Prints the key id, the first 16 hex digits of the SHA-256 of the raw public key.

Examples:
  python -m trainer keygen --out ~/.movement-edge/keys
  python -m trainer keygen --out keys --force      # replace an existing pair
"""


def add_keygen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the key pair")
    parser.add_argument("--force", action="store_true", help="replace an existing key pair")


def run_keygen(args: argparse.Namespace) -> int:
    paths = (args.out / PRIVATE_KEY, args.out / PUBLIC_KEY)
    existing = [p for p in paths if p.exists()]
    if existing and not args.force:
        raise UsageError(f"{existing[0]} exists; give --force to replace the key pair")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        write_atomic(paths[0], private_pem, mode=0o600)
        write_atomic(paths[1], public_pem, mode=0o644)
    except OSError as exc:
        raise UsageError(f"--out {args.out}: cannot write the key pair ({exc.strerror})") from exc
    print(f"wrote {paths[0]} (private, 0600) and {paths[1]}")
    print(f"key_id {key_id(key)}")
    return ExitStatus.OK


# --------------------------------------------------------------------------- reading a run


@dataclass(frozen=True)
class Run:
    """A run directory's contents, checked against each other."""

    directory: Path
    info: dict[str, Any]  # run.json
    model_bytes: bytes  # model.skops, exactly as evaluated
    reference: SklearnRuntime  # the fitted pipeline
    rows: np.ndarray  # test_rows.npz X
    truth: np.ndarray  # test_rows.npz y

    @property
    def labels(self) -> tuple[str, ...]:
        return self.reference.labels

    @property
    def columns(self) -> tuple[str, ...]:
        return self.reference.columns


def _read_json(path: Path) -> dict[str, Any]:
    data = read_document(path, "JSON", UsageError)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object")
    return data


def _require(info: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    """A run.json value of the expected JSON type, or a one-line error naming file and key."""
    if key not in info:
        raise UsageError(f"{path}: missing key {key!r}")
    if not isinstance(info[key], kind):
        raise UsageError(f"{path}: {key!r} has the wrong type ({type(info[key]).__name__})")
    return info[key]


def _read_run_json(directory: Path) -> dict[str, Any]:
    path = directory / "run.json"
    info = _read_json(path)
    if info.get("format") != 1:
        raise UsageError(f"{path}: unsupported format {info.get('format')!r} (expected 1)")
    if info.get("feature_spec", {}) is None:
        raise UsageError(
            f"{path}: feature_spec is null (the dataset had no .meta.json), so a device cannot "
            "compute the model's columns"
        )
    for key, kind in (("target", str), ("labels", list), ("columns", list), ("feature_spec", dict)):
        _require(info, key, kind, path)
    _require(info, "window", (dict, type(None)), path)
    dataset = _require(info, "dataset", dict, path)
    _require(dataset, "fingerprint", str, path)
    versions = _require(info, "versions", dict, path)
    try:
        info["feature_spec"] = FeatureSpec.from_dict(info["feature_spec"]).to_dict()
        if info["window"] is not None:
            info["window"] = WindowSpec.from_dict(info["window"]).to_dict()
    except (FeatureSpecError, KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{path}: bad feature_spec or window ({exc})") from exc
    info["versions"] = {str(k): str(v) for k, v in versions.items()}
    return info


def _read_test_rows(path: Path, width: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            rows, truth = np.asarray(archive["X"], dtype=np.float64), archive["y"]
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (KeyError, ValueError, TypeError) as exc:  # missing array, pickled objects, non-numeric X
        raise UsageError(f"{path}: expected arrays X (float) and y (labels) ({exc})") from exc
    if rows.ndim != 2 or rows.shape[1] != width or not len(rows):
        raise UsageError(
            f"{path}: X has shape {rows.shape}, expected (n >= 1, {width}) for the run's columns"
        )
    if truth.shape != (len(rows),) or truth.dtype.kind != "U":
        raise UsageError(f"{path}: y must hold one label string per row of X")
    return rows, truth


def read_run(directory: Path) -> Run:
    """Read and cross-check ``run.json``, ``model.skops`` and ``test_rows.npz``."""
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a run directory")
    info = _read_run_json(directory)
    model_path = directory / MODEL_FILES["sklearn"]
    try:
        model_bytes = model_path.read_bytes()
        pipeline = load_skops(model_bytes, str(model_path))
    except OSError as exc:
        raise UsageError(f"{model_path}: cannot read ({exc.strerror})") from exc
    except BundleError as exc:
        raise UsageError(str(exc)) from exc
    try:
        reference = SklearnRuntime(pipeline, info["labels"], info["columns"])
    except BundleError as exc:
        raise UsageError(f"{model_path} and run.json disagree: {exc.message}") from exc
    rows, truth = _read_test_rows(directory / "test_rows.npz", len(reference.columns))
    return Run(directory, info, model_bytes, reference, rows, truth)


# --------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportedModel:
    """What goes into the bundle for one runtime, and that runtime, to compute the samples with."""

    runtime: str
    content: bytes
    executor: ModelRuntime
    preprocessing: dict[str, Any] | None
    library_versions: dict[str, str]


def _export_sklearn(run: Run) -> ExportedModel:
    return ExportedModel("sklearn", run.model_bytes, run.reference, None, run.info["versions"])


def _export_tflite(run: Run) -> ExportedModel:
    """Convert the pipeline and refuse the result unless it matches scikit-learn on every test row."""
    from trainer.tflite import TFLiteConversionError, convert_pipeline

    try:
        converted = convert_pipeline(run.reference.pipeline)
    except TFLiteConversionError as exc:
        raise UsageError(
            f"{run.directory / MODEL_FILES['sklearn']}: cannot convert to TFLite ({exc})"
        ) from exc
    executor = TFLiteRuntime(converted.content, run.labels, run.columns, converted.fill)
    error = float(np.max(np.abs(executor.predict_proba(run.rows) - run.reference.predict_proba(run.rows))))
    if not error <= SAMPLE_TOLERANCE:
        raise UsageError(
            f"the TFLite model differs from scikit-learn by {error:.3g} on the test rows "
            f"(tolerance {SAMPLE_TOLERANCE:g}); export with --runtime sklearn instead"
        )
    print(f"TFLite vs scikit-learn on {len(run.rows)} test rows: max |difference| {error:.2g}")
    versions = {**run.info["versions"], "ai_edge_litert": package_version("ai-edge-litert")}
    return ExportedModel("tflite", converted.content, executor, {"fill": list(converted.fill)}, versions)


EXPORTERS: dict[str, Callable[[Run], ExportedModel]] = {"sklearn": _export_sklearn, "tflite": _export_tflite}
"""One exporter per device runtime (the keys of ``bundle.MODEL_FILES``)."""


def _runtime_name(run: Run, requested: str) -> str:
    if requested != "auto":
        return requested
    from trainer.tflite import is_convertible

    return "tflite" if is_convertible(run.reference.pipeline) else "sklearn"


def _window_layout(columns: tuple[str, ...]) -> tuple[bool, tuple[str, ...]]:
    """Whether the columns are flattened window features, and which pooled statistics they use."""
    flatten = any(_FLATTENED.match(c) for c in columns)
    return flatten, tuple(p for p in POOLS if any(c.startswith(f"{p}.") for c in columns))


def _window(run: Run, size: int | None, stride: int | None, fps: float | None) -> dict[str, Any] | None:
    """The run's window, or the one given with --window/--stride (e.g. for split_on_label clips).

    Its frame rate is --fps, else the one the dataset took from its keypoint files' timestamps:
    a device running pose at another rate resamples to it, so the model sees windows as long
    (in seconds) as the ones it learned from.
    """
    window = run.info["window"]
    flatten, pool = (window["flatten"], tuple(window["pool"])) if window else _window_layout(run.columns)
    if size is None:
        if stride is not None:
            raise UsageError("--stride needs --window W")
        if window is None and (flatten or pool):
            raise UsageError(
                f"{run.directory / 'run.json'}: the model reads window features but the run has no "
                "window; give --window W --stride S"
            )
        if window is None:
            if fps is not None:
                raise UsageError("--fps: the model reads per-frame features; it has no window to time")
            return None
    elif not (flatten or pool):
        raise UsageError("--window: the model reads per-frame features; it has no window")
    fps = fps or (window and window.get("fps")) or run.info.get("fps")
    if not fps:
        raise UsageError(
            f"{run.directory / 'run.json'}: the dataset's keypoints had no timestamps to take a frame "
            "rate from; give --fps F (the frame rate of the videos the model learned from)"
        )
    try:
        size = window["size"] if size is None else size
        default_stride = window["stride"] if window else 1
        stride = default_stride if stride is None else stride
        return WindowSpec(size, stride, flatten, pool, float(fps)).to_dict()
    except FeatureSpecError as exc:
        raise UsageError(f"--window/--stride/--fps: {exc}") from exc


def _smoothing(text: str) -> dict[str, Any]:
    """``none``, ``mean:SECONDS`` or ``hysteresis[:ENTER:EXIT]`` as the manifest's smoothing object."""
    kind, _, rest = text.partition(":")
    values = rest.split(":") if rest else []
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        numbers = None
    span, (enter, exit_) = 0.0, DEFAULT_HYSTERESIS
    if kind == "mean" and numbers is not None and len(numbers) == 1:
        span = numbers[0]
        if not 0 < span <= MAX_SMOOTHING_S:
            raise UsageError(f"--smoothing {text!r}: SECONDS must be within 0..{MAX_SMOOTHING_S:g}")
    elif kind == "hysteresis" and numbers is not None and len(numbers) in (0, 2):
        enter, exit_ = numbers or (enter, exit_)
        if not 0 <= exit_ <= enter <= 1:
            raise UsageError(f"--smoothing {text!r}: need 0 <= EXIT <= ENTER <= 1")
    elif not (kind == "none" and not values):
        raise UsageError(f"--smoothing {text!r}: expected none, mean:SECONDS or hysteresis[:ENTER:EXIT]")
    return {"kind": kind, "span_s": span, "enter": enter, "exit": exit_}


def _decision(threshold: float | None, smoothing: str, no_person: str) -> dict[str, Any]:
    """The manifest's decision object; a ``None`` threshold is filled in from the held-out rows."""
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--threshold must be within 0..1, got {threshold}")
    return {"threshold": threshold, "smoothing": _smoothing(smoothing), "no_person": no_person}


@dataclass(frozen=True)
class Threshold:
    """The confidence threshold a bundle gets, and why, for the export summary."""

    value: float
    why: str


def held_out_threshold(labels: tuple[str, ...], truth: np.ndarray, probabilities: np.ndarray) -> Threshold:
    """The default threshold: the one that keeps :data:`KEEP_CORRECT` of the right held-out decisions.

    A threshold of 0 never says ``unknown``, so a kiosk names one of its movements for anything
    it sees; a number picked by hand bears no relation to how sure this model is when it is
    right. The 1st percentile of the winning probability over the held-out rows the model got
    right is a property of the model itself: the least sure 1% of right answers become
    ``unknown``, and so do the wrong answers that are no surer than those. Not 5%: held-out rows
    come from the training recordings, and on new video a model is less sure — on squats.mp4 the
    20-pose model's 5th percentile (0.94) made a third of the frames ``unknown``, its 1st (0.80)
    a fifth (the moves between squatting and standing), and it still refuses nine of its ten
    wrong held-out answers. Rounded down to two
    decimals so that the share kept is never below the promise; 0.0 when nothing was right.
    """
    winning = probabilities.max(axis=1)
    right = np.asarray(labels)[probabilities.argmax(axis=1)] == truth
    if not right.any():
        why = f"none of the {len(truth)} held-out rows was classified correctly"
        return Threshold(0.0, f"the default from the held-out rows: {why} (--threshold X overrides it)")
    percentile = float(np.percentile(winning[right], 100 * (1 - KEEP_CORRECT)))
    value = math.floor(round(percentile * 100, 9)) / 100  # round() first: 0.57 * 100 is 56.99999…
    kept, refused = int((winning[right] >= value).sum()), int((winning[~right] < value).sum())
    return Threshold(
        value,
        f"the default from the held-out rows: it keeps {kept} of the {int(right.sum())} rows the "
        f"model classified correctly (the 1st percentile of their winning probability, rounded down) "
        f"and turns {refused} of the {int((~right).sum())} wrong ones into unknown "
        "(--threshold X overrides it)",
    )


def _metrics(run: Run, probabilities: np.ndarray) -> dict[str, float]:
    """Held-out scores of the model exactly as the device will run it."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    predicted = np.asarray(run.labels)[np.argmax(probabilities, axis=1)]
    labels = list(run.labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # labels absent from the test rows
        return {
            "macro_f1": float(
                f1_score(run.truth, predicted, labels=labels, average="macro", zero_division=0)
            ),
            "accuracy": float(accuracy_score(run.truth, predicted)),
            "balanced_accuracy": float(balanced_accuracy_score(run.truth, predicted)),
        }


def _samples(rows: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """The smoke-test sample; JSON has no NaN, so missing features are ``null``."""
    cells = [[None if np.isnan(v) else float(v) for v in row] for row in rows[:SAMPLE_ROWS]]
    return {"rows": cells, "probabilities": probabilities[:SAMPLE_ROWS].tolist()}


def _version(text: str | None, now: datetime) -> str:
    if text is None:
        return now.strftime("%Y.%m.%d.%H%M%S")
    try:
        parse_version(text)
    except ValueError as exc:
        raise UsageError(f"--version: {exc}") from exc
    return text


def build_manifest(
    run: Run, model: ExportedModel, probabilities: np.ndarray, options: dict[str, Any]
) -> dict[str, Any]:
    """The manifest (without ``key_id`` and ``sha256``, which signing fills in).

    ``options`` holds the command line's ``model_id``, ``version``, ``created_at``, ``window``,
    ``decision``, ``label_names`` and ``activities``, checked before the model was loaded and converted;
    ``probabilities`` are the exported model's on the held-out rows.
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "model_id": options["model_id"],
        "version": options["version"],
        "created_at": options["created_at"],
        "runtime": model.runtime,
        "model_file": MODEL_FILES[model.runtime],
        "target": run.info["target"],
        "feature_spec": run.info["feature_spec"],
        "columns": list(run.columns),
        "labels": list(run.labels),
        "window": options["window"],
        "preprocessing": model.preprocessing,
        "decision": options["decision"],
        "label_names": options["label_names"],
        "activities": options["activities"],
        "metrics": _metrics(run, probabilities),
        "dataset_fingerprint": run.info["dataset"]["fingerprint"],
        "min_device_version": DEVICE_VERSION,
        "library_versions": model.library_versions,
        "samples": _samples(run.rows, probabilities),
    }


def _output_path(path: Path) -> Path:
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; give a .zip file name")
    if not path.parent.is_dir():
        raise UsageError(f"--out {path}: folder {path.parent} does not exist")
    return path


def _check_written(path: Path, public_key: Ed25519PublicKey) -> VerifiedBundle:
    """Open the written bundle as a device would; remove it if a device would refuse it."""
    try:
        bundle = open_bundle(path, [public_key])
        check_samples(load_runtime(bundle), bundle.manifest)
    except BundleError as exc:
        path.unlink(missing_ok=True)
        raise UsageError(f"{path}: the written bundle fails verification ({exc}); removed it") from exc
    return bundle


EXPORT_DESCRIPTION = """\
Package a run directory (model.skops, run.json, test_rows.npz from `train`) as a signed bundle
for the devices. An MLP or logistic-regression pipeline becomes a TFLite model (about 5x faster
per row on the device, no scikit-learn needed there), checked against scikit-learn on every
held-out row (max difference 1e-5); any other model ships as the run's skops file
(`--runtime sklearn` keeps an MLP or logistic regression as skops). The bundle is verified with
the key's public half before success is reported; on any error nothing is written.

The decision threshold: below it the kiosk publishes `unknown` instead of a label. By default it
is the threshold that keeps 99% of the right decisions on the run's held-out rows (test_rows.npz):
the 1st percentile, rounded down to 2 decimals, of the winning probability over the held-out rows
the exported model classifies correctly (0.0 if it classifies none correctly). A fixed default
such as 0 would never say `unknown`, and a hand-picked number ignores how sure this particular
model is when it is right. --threshold X overrides it; export prints which one it used and why.

Display names: --label-names FILE.toml holds one table, e.g.
  [label_names]
  squats_down = "Squat (down)"
  "Left Step" = "Left step"
Every key must be one of the model's labels; labels without a name are shown as they are.

Examples:
  python -m trainer export runs/weight-transfer --out model.zip --key keys/signing.key
  python -m trainer export runs/step --out step.zip --key keys/signing.key \\
      --model-id step-type --smoothing mean:1 --threshold 0.6 --label-names names.toml
  python -m trainer export runs/clips --out clips.zip --key keys/signing.key --window 30 --stride 5

With --mlflow (a run trained with `train --mlflow`, optional extra: pip install .[mlflow]) the
bundle is also logged to that run (RUN_DIR/mlflow.json says where) and registered as a new version
of --register NAME (default: the model train registered there), pointed at by --alias (default
candidate); --model-id defaults to the model id train gave that bundle:
  python -m trainer export runs/steps --out steps-3.zip --key keys/signing.key \\
      --smoothing hysteresis --mlflow --alias candidate

Versions: a device installs a bundle only if its version is above the active one (a downgrade
needs --force), comparing number by number from the left. The default, the UTC time of the
export (2026.12.02.081500), is above every earlier default. Keep to one scheme per model: a
hand-picked 3.0.0 is below any such time (3 < 2026), so give --version from the start or never.
"""


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory written by `train`")
    parser.add_argument("--out", type=Path, required=True, help="bundle to write (.zip)")
    parser.add_argument("--key", type=Path, required=True, help="signing key (signing.key from `keygen`)")
    parser.add_argument(
        "--model-id",
        help="model id on the devices (default: the target column; with --mlflow the one train registered)",
    )
    parser.add_argument(
        "--version",
        help="dotted-integer version (default: UTC time YYYY.MM.DD.HHMMSS; keep to one scheme, see above)",
    )
    parser.add_argument("--window", type=int, metavar="W", help="frames per window (default: the run's)")
    parser.add_argument(
        "--stride", type=int, metavar="S", help="frames between windows (default: the run's, or 1)"
    )
    parser.add_argument(
        "--fps",
        type=float,
        metavar="F",
        help="frame rate the window's frames were sampled at (default: the dataset's, from its timestamps)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="minimum confidence to publish a label (default: keep 99%% of the right held-out decisions)",
    )
    parser.add_argument(
        "--smoothing",
        default=DEFAULT_SMOOTHING,
        help="none | mean:SECONDS (average the probabilities of the last SECONDS) | "
        "hysteresis[:ENTER:EXIT] (default 0.6:0.4)",
    )
    parser.add_argument(
        "--no-person", choices=NO_PERSON_POLICIES, default=DEFAULT_NO_PERSON, help="when nobody is seen"
    )
    parser.add_argument(
        "--label-names", type=Path, metavar="FILE.toml", help="display names: a [label_names] table"
    )
    parser.add_argument(
        "--activities",
        type=Path,
        metavar="FILE.toml",
        help="repetitions, sets and holds to count: [activity.<name>] tables (README: Activities)",
    )
    parser.add_argument(
        "--runtime",
        choices=("auto", *MODEL_FILES),
        default="auto",
        help="device runtime (default auto: tflite for an MLP or logistic regression, sklearn otherwise)",
    )
    mlflow = parser.add_argument_group(f"MLflow registry ({tracking.EXTRA})")
    mlflow.add_argument(
        "--mlflow", action="store_true", help="log and register the bundle in the run's MLflow run"
    )
    mlflow.add_argument(
        "--tracking-uri", metavar="URI", help=f"default: the store recorded in RUN_DIR/{tracking.RUN_RECORD}"
    )
    mlflow.add_argument(
        "--register", metavar="NAME", help="registered model name (default: train's, else the model id)"
    )
    mlflow.add_argument(
        "--alias", metavar="ALIAS", help=f"alias of the new version (default {tracking.DEFAULT_ALIAS})"
    )


@dataclass(frozen=True)
class ExportSettings:
    """How to make a bundle, checked before the (slow) run directory is read and converted.

    ``export`` builds it from its options; ``train --key`` from its own, with export's defaults
    for the rest, so both commands make identical bundles from identical choices.
    """

    private_key: Ed25519PrivateKey
    version: str
    created_at: str
    decision: dict[str, Any]  # its threshold None: from the held-out rows
    model_id: str | None = None  # None: the run's target column
    label_names: LabelNames | None = None
    activities: ActivitiesFile | None = None
    window: int | None = None
    stride: int | None = None
    fps: float | None = None
    runtime: str = "auto"


def export_settings(
    key: Path,
    *,
    model_id: str | None = None,
    version: str | None = None,
    threshold: float | None = None,
    smoothing: str = DEFAULT_SMOOTHING,
    no_person: str = DEFAULT_NO_PERSON,
    label_names: Path | None = None,
    activities: Path | None = None,
    window: int | None = None,
    stride: int | None = None,
    fps: float | None = None,
    runtime: str = "auto",
) -> ExportSettings:
    """Load the signing key and check the options; every problem is a :class:`UsageError`."""
    try:
        private_key = load_private_key(key)
    except BundleError as exc:
        raise UsageError(f"--key {exc.message}") from exc
    now = datetime.now(UTC).replace(microsecond=0)
    return ExportSettings(
        private_key=private_key,
        version=_version(version, now),
        created_at=now.isoformat(),
        decision=_decision(threshold, smoothing, no_person),
        model_id=model_id,
        label_names=LabelNames.read(label_names) if label_names is not None else None,
        activities=ActivitiesFile.read(activities) if activities is not None else None,
        window=window,
        stride=stride,
        fps=fps,
        runtime=runtime,
    )


@dataclass(frozen=True)
class Exported:
    """A written, verified bundle and the threshold it was given."""

    bundle: VerifiedBundle
    threshold: Threshold

    def summary(self, path: Path) -> list[str]:
        """What was written and which threshold it says ``unknown`` below, and why."""
        shown = self.bundle.manifest
        return [
            f"wrote {path}: {shown.model_id} {shown.version} ({shown.runtime}, {len(shown.labels)} labels, "
            f"{len(shown.columns)} columns), signed by key {self.bundle.signer}; verified",
            f"decision threshold {self.threshold.value:g}: {self.threshold.why}",
        ]


def export_run(run_dir: Path, out: Path, settings: ExportSettings) -> Exported:
    """Read, convert, sign and write ``run_dir``'s model to ``out``, then verify it as a device would."""
    run = read_run(run_dir)  # the slow part: loading the skops file
    options = {
        "version": settings.version,
        "created_at": settings.created_at,
        "model_id": settings.model_id or run.info["target"],
        "window": _window(run, settings.window, settings.stride, settings.fps),
        "label_names": settings.label_names.for_model(run.labels) if settings.label_names else {},
        "activities": (
            settings.activities.for_model(run.labels, run.info["feature_spec"]) if settings.activities else {}
        ),
    }
    model = EXPORTERS[_runtime_name(run, settings.runtime)](run)
    probabilities = model.executor.predict_proba(run.rows)  # as the device will compute them
    given = settings.decision["threshold"]
    threshold = (
        held_out_threshold(run.labels, run.truth, probabilities)
        if given is None
        else Threshold(given, "given with --threshold")
    )
    options["decision"] = {**settings.decision, "threshold": threshold.value}
    try:
        manifest = build_manifest(run, model, probabilities, options)
        write_bundle(out, manifest, model.content, settings.private_key)
    except BundleError as exc:
        raise UsageError(f"{run_dir}: the device would refuse this bundle ({exc})") from exc
    return Exported(_check_written(out, settings.private_key.public_key()), threshold)


def run_export(args: argparse.Namespace) -> int:
    logged = _logged_run(args)
    settings = export_settings(
        args.key,
        model_id=args.model_id or (logged and logged.model_id),
        version=args.version,
        threshold=args.threshold,
        smoothing=args.smoothing,
        no_person=args.no_person,
        window=args.window,
        stride=args.stride,
        fps=args.fps,
        runtime=args.runtime,
        label_names=args.label_names,
        activities=args.activities,
    )
    out = _output_path(args.out)
    store = None
    if logged is not None:
        store = tracking.open_store(args.tracking_uri or logged.tracking_uri, create=False)
        tracking.check_unlogged(store, logged.run_id, settings.version)
    exported = export_run(args.run_dir, out, settings)
    for line in exported.summary(out):
        print(line)
    bundle = exported.bundle
    if store is not None and logged is not None:
        # the registered model of the run's own bundle, unless this bundle has another identity
        same = args.model_id is None and logged.registered_model
        name = args.register or (same and logged.registered_model) or bundle.manifest.model_id
        alias = args.alias or tracking.DEFAULT_ALIAS
        print(tracking.register_bundle(store, logged.run_id, out, bundle, name, alias).describe())
    return ExitStatus.OK


def _logged_run(args: argparse.Namespace) -> tracking.LoggedRun | None:
    """With --mlflow: where ``train --mlflow`` logged the run; the registry options checked."""
    if not args.mlflow:
        for option in ("tracking_uri", "register", "alias"):
            if getattr(args, option) is not None:
                raise UsageError(f"--{option.replace('_', '-')} needs --mlflow")
        return None
    if args.register is not None:
        tracking.check_name(args.register, "--register")
    if args.alias is not None:
        tracking.check_alias(args.alias, "--alias")
    return tracking.read_record(args.run_dir)


# --------------------------------------------------------------------------- verify

VERIFY_DESCRIPTION = """\
Check a bundle exactly as a device does: zip layout and sizes, the signature against the given
public keys, the manifest schema, the model's sha256, loading the model, and the smoke test on
the manifest's sample rows. Prints what the bundle is (model id and version, runtime, labels,
window, decision threshold, activities, signing key) and OK, or the failing check; --json prints
the whole manifest instead.

Examples:
  python -m trainer verify model.zip --pub keys/signing.pub
  python -m trainer verify model.zip --pub old/signing.pub --pub new/signing.pub
  python -m trainer verify model.zip --pub keys/signing.pub --json > manifest.json
"""


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle to check (.zip)")
    parser.add_argument(
        "--pub", type=Path, action="append", required=True, help="trusted public key (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="print the whole manifest (JSON) instead")


def _public_keys(paths: list[Path]) -> list[Ed25519PublicKey]:
    try:
        return [load_public_key(p) for p in paths]
    except BundleError as exc:
        raise UsageError(f"--pub {exc.message}") from exc


def _claimed_key_id(path: Path) -> str:
    """The key id the (unverified) manifest names, only to say which key signed a refused bundle."""
    try:
        with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as archive, archive.open(MANIFEST) as member:
            claimed = json.loads(member.read(MAX_MANIFEST_SIZE + 1)).get("key_id")
    except (OSError, ValueError, KeyError, AttributeError, RecursionError, zipfile.BadZipFile):
        return "unreadable"
    return claimed if isinstance(claimed, str) else "none"


def _signature_keys(args: argparse.Namespace, keys: list[Ed25519PublicKey]) -> str:
    """Both sides of a signature refusal: the key the bundle names and the ones trusted here."""
    trusted = ", ".join(f"{key_id(key)} ({path})" for key, path in zip(keys, args.pub, strict=True))
    return f"the bundle names key {_claimed_key_id(args.bundle)}; trusted: {trusted}"


def _window_text(window: WindowSpec | None) -> str:
    if window is None:
        return "none: each frame is classified on its own"
    shape = "flattened" if window.flatten else ""
    if window.pool:
        shape += f"{' and ' if shape else ''}pooled ({', '.join(window.pool)})"
    span = "" if window.duration_s is None else f" ({window.duration_s:.2g} s)"
    return f"{window.size} frames every {window.stride} at {window.fps:.4g} frames/s{span}, {shape}"


def _verify_summary(bundle: VerifiedBundle, error: float) -> list[str]:
    """What a bundle is, in the words a person checks before pushing it to a fleet."""
    shown = bundle.manifest
    decision, smoothing = shown.decision, shown.decision.smoothing
    steadied = {
        "none": "no smoothing",
        "mean": f"smoothing: mean over {smoothing.span_s:g} s",
        "hysteresis": f"smoothing: hysteresis {smoothing.enter:g}/{smoothing.exit:g}",
    }[smoothing.kind]
    samples = len(shown.samples.rows)
    return [
        f"model       {shown.model_id} {shown.version} ({shown.runtime}, {len(shown.columns)} columns, "
        f"created {shown.created_at})",
        f"labels      {len(shown.labels)}: {some(shown.labels)}",
        f"window      {_window_text(shown.window)}",
        f"decision    threshold {decision.threshold:g}, {steadied}, no person: {decision.no_person}",
        f"activities  {some(f'{a.name} ({a.kind})' for a in shown.activities) or 'none'}",
        f"signed by   key {bundle.signer}; the {samples} sample rows reproduced within {error:.2g}",
        "OK",
    ]


def run_verify(args: argparse.Namespace) -> int:
    keys = _public_keys(args.pub)
    try:
        bundle = open_bundle(args.bundle, keys)
        error = check_samples(load_runtime(bundle), bundle.manifest)
    except BundleError as exc:
        both = f" ({_signature_keys(args, keys)})" if exc.step == "signature" else ""
        raise UsageError(f"{args.bundle}: {exc}{both}") from exc
    if args.json:
        print(bundle.manifest_bytes.decode("utf-8"), end="")
    else:
        print("\n".join(_verify_summary(bundle, error)))
    return ExitStatus.OK


KEYGEN = Command(
    description=KEYGEN_DESCRIPTION,
    add_arguments=add_keygen_arguments,
    run=run_keygen,
)
EXPORT = Command(
    description=EXPORT_DESCRIPTION,
    add_arguments=add_export_arguments,
    run=run_export,
)
VERIFY = Command(
    description=VERIFY_DESCRIPTION,
    add_arguments=add_verify_arguments,
    run=run_verify,
)
