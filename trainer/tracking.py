"""MLflow experiment tracking and model registry (the optional ``mlflow`` extra).

``train --mlflow`` records a finished run directory (docs/trainer-contracts.md) as an MLflow run:
its choices as parameters, the dataset's fingerprint as a tag and a dataset input, every number
of ``metrics.json`` as a metric, the report and the metrics as artifacts, and the signed bundle,
which becomes a registered model version with an alias. Everything is read back from the run
directory's files, so what MLflow shows is exactly what was written for ``export`` and the kiosks.

MLflow is imported only when a store is opened: the trainer and provisioning work without it, and
the device never sees it. The default store is MLflow's own default (``mlflow.db`` in the current
directory), so ``mlflow ui`` started in the same folder shows the runs without options; artifacts
go to ``mlruns/`` beside a SQLite file rather than wherever the current directory happens to be.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from device.cli import UsageError

if TYPE_CHECKING:  # the bundle code imports numpy; `train --help` and `push` need only the names here
    from device.model.bundle import VerifiedBundle

EXTRA = "pip install .[mlflow]"
STORE_FILE = "mlflow.db"  # MLflow's own default tracking URI is sqlite:///mlflow.db
ARTIFACTS_FOLDER = "mlruns"
DEFAULT_ALIAS = "candidate"
RUN_RECORD = "mlflow.json"
"""The run directory's note of where it was logged, for ``export --mlflow`` to log to the same run."""
BUNDLE_ARTIFACTS = "bundles"
"""Each registered bundle is the only file of ``bundles/<version>/``, the model version's source."""

# Model version tags, set at registration; push checks what it downloads against them.
TAG_FILE, TAG_SHA256 = "bundle.file", "bundle.sha256"
TAG_MODEL_ID, TAG_VERSION, TAG_MODEL_SHA256 = "bundle.model_id", "bundle.version", "bundle.model_sha256"

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # as a model id: `models:/NAME@ALIAS` stays parseable
ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
RESERVED_ALIAS = re.compile(r"^(latest|[vV]\d+)$", re.IGNORECASE)
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")
_HEALTH_TIMEOUT_S = 5.0
_MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value
_PARAMS_PER_BATCH, _METRICS_PER_BATCH = 100, 1000  # MLflow's limits on one log_batch call
_DIGEST_LENGTH = 32  # MLflow keeps at most 36 characters of a dataset digest


def check_name(name: str, option: str) -> str:
    """A registered model name spelled like a model id (letters, digits, ``.``, ``_``, ``-``)."""
    if not NAME.match(name):
        raise UsageError(f"{option} {name!r}: a registered model name is 1-64 letters, digits, '.', '_', '-'")
    return name


def check_alias(alias: str, option: str) -> str:
    """An alias MLflow accepts: letters, digits, ``_`` and ``-``; not ``latest`` nor ``v<number>``."""
    if not ALIAS.match(alias) or RESERVED_ALIAS.match(alias):
        raise UsageError(
            f"{option} {alias!r}: an alias is letters, digits, '_' and '-', and neither 'latest' "
            "nor v<number> (those mean versions)"
        )
    return alias


def tracking_uri(option: str | None, env: Mapping[str, str] = os.environ, cwd: Path | None = None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.

    The default is made absolute, so the run directory's record of it still points at the same
    store when ``export`` or ``push`` run from another folder.
    """
    if option:
        return option
    if env.get("MLFLOW_TRACKING_URI"):
        return env["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(cwd or Path.cwd()).resolve() / STORE_FILE}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///FILE`` URI (None for other stores or in-memory ones)."""
    if not uri.startswith("sqlite:///") or uri == "sqlite:///:memory:":
        return None
    return Path(uri.removeprefix("sqlite:///"))


def _import_mlflow() -> Any:
    """MLflow, quietened; a one-line error naming the extra when it is not installed."""
    try:
        import mlflow
    except ImportError as exc:
        raise UsageError(f"--mlflow and models:/ URIs need MLflow: {EXTRA} ({exc})") from None
    # database migrations on a new store and similar notes are INFO, and downloads draw a progress
    # bar: keep stderr for our own progress (an explicit MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR wins)
    for name in ("mlflow", "alembic", "urllib3.connectionpool"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return mlflow


def _check_server(uri: str) -> None:
    """Fail fast and clearly: MLflow's own client retries a dead server for minutes."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=_HEALTH_TIMEOUT_S) as answer:
            answer.read()
    except urllib.error.HTTPError as exc:
        raise UsageError(
            f"--tracking-uri {uri}: not an MLflow server (GET /health: HTTP {exc.code})"
        ) from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UsageError(f"--tracking-uri {uri}: no MLflow server answers ({reason})") from None


@dataclass(frozen=True)
class Store:
    """An open tracking store and model registry (one URI for both)."""

    uri: str
    client: Any  # mlflow.MlflowClient
    mlflow: Any  # the imported module, for its exception type

    @contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """MLflow's exceptions as one-line usage errors naming the store."""
        try:
            yield
        except self.mlflow.exceptions.MlflowException as exc:
            message = str(exc.message).strip().splitlines()[0] if str(exc.message).strip() else repr(exc)
            raise UsageError(f"{doing} ({self.uri}): {message}") from None

    def experiment_id(self, name: str) -> str:
        """The experiment called ``name``; created (artifacts beside a SQLite file) when missing."""
        with self.errors(f"experiment {name!r}"):
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                return str(found.experiment_id)
            database = _sqlite_path(self.uri)
            location = (database.parent / ARTIFACTS_FOLDER).resolve().as_uri() if database else None
            return str(self.client.create_experiment(name, artifact_location=location))


def open_store(uri: str, *, create: bool) -> Store:
    """Connect to ``uri``; ``create`` allows a new SQLite file (train does, push does not)."""
    mlflow = _import_mlflow()
    database = _sqlite_path(uri)
    scheme = urlsplit(uri).scheme
    if database is not None and not database.exists():
        if not create:
            raise UsageError(f"--tracking-uri {uri}: no MLflow store there ({database} does not exist)")
        if not database.parent.is_dir():
            raise UsageError(f"--tracking-uri {uri}: folder {database.parent} does not exist")
    elif scheme in ("http", "https"):
        _check_server(uri)
    return Store(uri, mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), mlflow)


# --------------------------------------------------------------------------- what a run logs


def safe_name(name: str) -> str:
    """A label as part of an MLflow key: characters MLflow refuses become ``_``."""
    return _NAME_UNSAFE.sub("_", name)


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= _MAX_PARAM_LENGTH else text[: _MAX_PARAM_LENGTH - 1] + "…"


def run_params(record: Mapping[str, Any]) -> dict[str, str]:
    """The choices behind a run (run.json): model, split, seed, hyper-parameters, features, window."""
    spec = record.get("feature_spec") or {}
    window = record.get("window")
    split = record.get("split") or {}
    search = record.get("search") or {}
    params: dict[str, Any] = {
        "model": record["model"],
        "target": record["target"],
        "split": split.get("kind"),
        "test_size": split.get("test_size"),
        "cv_folds": split.get("cv"),
        "balance": record.get("balance"),
        "seed": record.get("seed"),
        "search": search.get("kind"),
        "search_iterations": search.get("iterations"),
        "features": len(record["columns"]),
        "labels": len(record["labels"]),
        "window": f"{window['size']}/{window['stride']}" if window else "per-frame",
        "dataset.fingerprint": record["dataset"]["fingerprint"],
        "dataset.rows": record["dataset"]["rows"],
    }
    params |= {
        f"feature_spec.{key}": len(value) if isinstance(value, list) else value
        for key, value in spec.items()
        if key != "presets"
    }
    params["feature_spec.presets"] = ",".join(spec.get("presets", [])) or "none"
    if window:
        params |= {"window.flatten": window["flatten"], "window.pool": ",".join(window["pool"]) or "none"}
    params |= {f"classifier.{safe_name(key)}": value for key, value in record.get("params", {}).items()}
    return {key: _text(value) for key, value in params.items()}


def run_metrics(metrics: Mapping[str, Any]) -> dict[str, list[float]]:
    """Every number of metrics.json by dotted name; a list of numbers (per-fold scores) is a history.

    The confusion matrix and the importance ranking are tables, not series: they stay in the
    metrics.json artifact. Labels become part of a name through :func:`safe_name`.
    """
    found: dict[str, list[float]] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, int | float):
            found[prefix] = [float(value)]
        elif isinstance(value, dict):
            for key, child in value.items():
                walk(f"{prefix}.{safe_name(str(key))}" if prefix else safe_name(str(key)), child)
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        ):
            found[prefix] = [float(v) for v in value]

    for key, value in metrics.items():
        if key not in ("format", "confusion_matrix", "importance"):
            walk(safe_name(key), value)
    return found


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class LoggedRun:
    """An MLflow run of a run directory, as RUN_DIR/mlflow.json records it."""

    experiment_id: str
    run_id: str
    tracking_uri: str
    model_id: str | None = None  # of the bundle registered with the run, if one was
    registered_model: str | None = None


@contextmanager
def logged_run(store: Store, experiment: str, run_dir: Path, final: Path) -> Iterator[LoggedRun]:
    """An MLflow run holding ``run_dir``'s run.json, metrics.json and report.html, for the block.

    ``run_dir`` may be the staging folder that becomes ``final``: the run is named after ``final``.
    The run ends FINISHED only when the block (registering the bundle) completes too; otherwise
    FAILED (KILLED on Ctrl-C), so a half-logged run never looks complete.
    """
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    experiment_id = store.experiment_id(experiment)
    dataset = record["dataset"]
    tags = {
        "dataset.fingerprint": dataset["fingerprint"],
        "dataset.path": dataset["path"],
        "trainer.run_dir": str(final.resolve()),
    }
    with store.errors("creating the run"):
        run = store.client.create_run(experiment_id, run_name=final.name, tags=tags)
    status = "FAILED"
    try:
        with store.errors("logging the run"):
            _log_contents(store, run, record, metrics, run_dir)
        yield LoggedRun(experiment_id, run.info.run_id, store.uri)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        with store.errors("ending the run"):
            store.client.set_terminated(run.info.run_id, status)


def _log_contents(
    store: Store, run: Any, record: dict[str, Any], metrics: dict[str, Any], run_dir: Path
) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

    run_id = run.info.run_id
    params = [Param(key, value) for key, value in run_params(record).items()]
    for batch in _batches(params, _PARAMS_PER_BATCH):
        store.client.log_batch(run_id, params=batch)
    stamp = run.info.start_time
    series = [
        Metric(key, value, stamp, step)
        for key, values in run_metrics(metrics).items()
        for step, value in enumerate(values)
    ]
    for batch in _batches(series, _METRICS_PER_BATCH):
        store.client.log_batch(run_id, metrics=batch)
    dataset = record["dataset"]
    table = Dataset(
        name=Path(dataset["path"]).name,
        digest=dataset["fingerprint"].removeprefix("sha256:")[:_DIGEST_LENGTH],
        source_type="local",
        source=json.dumps({"uri": dataset["path"]}),
        profile=json.dumps({"rows": dataset["rows"], "features": len(record["columns"])}),
    )
    store.client.log_inputs(
        run_id, datasets=[DatasetInput(table, tags=[InputTag("mlflow.data.context", "training")])]
    )
    for name in ("report.html", "metrics.json", "run.json"):
        store.client.log_artifact(run_id, str(run_dir / name))


# --------------------------------------------------------------------------- the registry


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Registered:
    name: str
    version: str  # the registry's version number
    alias: str
    bundle_version: str

    def describe(self) -> str:
        return (
            f"registered {self.name} version {self.version} (bundle {self.bundle_version}) "
            f"as models:/{self.name}@{self.alias}"
        )


def register_bundle(
    store: Store, run_id: str, bundle_path: Path, bundle: VerifiedBundle, name: str, alias: str
) -> Registered:
    """Log the bundle to the run and register it as a new version of ``name``, pointed at by ``alias``.

    The version's tags carry the bundle's identity and the SHA-256 of the zip file, so whoever
    downloads it (``provisioning push models:/…``) can check it is byte for byte what was registered.
    """
    manifest = bundle.manifest
    artifact_path = check_unlogged(store, run_id, manifest.version)
    tags = {
        TAG_FILE: bundle_path.name,
        TAG_SHA256: file_sha256(bundle_path),
        TAG_MODEL_ID: manifest.model_id,
        TAG_VERSION: manifest.version,
        TAG_MODEL_SHA256: manifest.sha256,
    }
    with store.errors(f"registering {name}"):
        store.client.log_artifact(run_id, str(bundle_path), artifact_path)
        if not store.client.search_registered_models(filter_string=f"name = '{name}'"):
            store.client.create_registered_model(
                name, description="Signed movement-edge bundles (python -m trainer train --mlflow)"
            )
        source = f"{store.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        version = store.client.create_model_version(name, source, run_id=run_id, tags=tags)
        store.client.set_registered_model_alias(name, alias, version.version)
    return Registered(name, str(version.version), alias, manifest.version)


def check_unlogged(store: Store, run_id: str, version: str) -> str:
    """The artifact folder for a bundle ``version``; refused if the run holds one there already.

    Overwriting it would change the files behind an existing model version.
    """
    artifact_path = f"{BUNDLE_ARTIFACTS}/{version}"
    with store.errors(f"run {run_id}"):
        if store.client.list_artifacts(run_id, artifact_path):
            raise UsageError(
                f"--version {version}: MLflow run {run_id} already holds a bundle {version}; "
                "give a new --version"
            )
    return artifact_path


def read_record(run_dir: Path) -> LoggedRun:
    """Where ``train --mlflow`` logged ``run_dir`` (its mlflow.json), for ``export --mlflow``."""
    path = run_dir / RUN_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return LoggedRun(
            str(record["experiment_id"]),
            str(record["run_id"]),
            str(record["tracking_uri"]),
            record.get("model_id"),
            record.get("registered_model"),
        )
    except FileNotFoundError:
        raise UsageError(f"{path} not found: the run was not logged (train it with --mlflow)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a record of an MLflow run ({exc!r})") from None


def write_record(run_dir: Path, logged: LoggedRun) -> None:
    """``RUN_DIR/mlflow.json``: where the run was logged."""
    record = {
        "tracking_uri": logged.tracking_uri,
        "experiment_id": logged.experiment_id,
        "run_id": logged.run_id,
        "model_id": logged.model_id,
        "registered_model": logged.registered_model,
    }
    (run_dir / RUN_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
