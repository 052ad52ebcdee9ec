"""``python -m trainer train``: a dataset file -> one fitted, evaluated pipeline in a run directory.

The stages are small functions with one job each: :func:`~trainer.table.read_table` (the dataset
file and its meta, per ``docs/trainer-contracts.md``), :func:`~trainer.examples.prepare` (target,
value map, feature columns), :func:`~trainer.splits.make_split` (held-out rows and
cross-validation folds), :func:`fit_model` (cross-validation or random search, then the final
fit), and :func:`write_run_dir` (everything at once, atomically).
Every check of the user's input happens before the first progress line and before anything is
written, so bad input costs nothing and leaves nothing behind. The command's options and help
live in :mod:`trainer.train_options`, which `--help` reads without importing scikit-learn.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import skops
import skops.io
from sklearn.model_selection import (
    RandomizedSearchCV,
    cross_validate,
)
from sklearn.pipeline import Pipeline

from device.cli import ExitStatus, UsageError
from device.model.bundle import VerifiedBundle
from trainer import report, timeline, tracking
from trainer.estimators import (
    TRUSTED_TYPES,
    build_pipeline,
    classifier_params,
    deployable,
    search_space,
)
from trainer.evaluate import (
    SCORING,
    classes_absent_quietly,
    cv_summary,
    feature_importance,
    held_out_metrics,
    summary_table,
)
from trainer.examples import Examples, parse_value_map, prepare
from trainer.export import ExportSettings, export_run, export_settings
from trainer.messages import first_line
from trainer.splits import Folds, Split, make_split, split_sizes, split_warning
from trainer.table import GROUP_COLUMN, Table, read_table
from trainer.train_options import BUNDLE_FILE

RUN_FORMAT = 1


# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class Fitted:
    """The deployable pipeline, its cross-validated scores and what it cost."""

    model: Pipeline
    cv: dict[str, Any] | None
    seconds: dict[str, float]


def fit_model(examples: Examples, split: Split, args: argparse.Namespace) -> Fitted:
    """Cross-validate (or search) on the training part, then fit the artifact on all of it."""
    X, y = examples.X[split.train], examples.y[split.train]
    pipeline = build_pipeline(args.model, args.seed, args.balance, split.smallest_class)
    try:
        if args.search:
            return _search(pipeline, X, y, split.folds, args)
        cv, cv_seconds = None, 0.0
        if split.folds:
            label = f"cross-validating {args.model} ({len(split.folds)} folds)"
            with stage(label) as clock, classes_absent_quietly():
                scores = cross_validate(pipeline, X, y, cv=split.folds, scoring=SCORING, n_jobs=-1)
            cv = cv_summary({name: scores[f"test_{name}"] for name in SCORING}, "cross_validate")
            cv_seconds = clock.seconds
        with stage(f"fitting {args.model} on {len(y)} rows") as clock:
            pipeline.fit(X, y)
        return Fitted(deployable(pipeline), cv, {"fit": clock.seconds, "cv": cv_seconds, "search": 0.0})
    except ValueError as exc:  # scikit-learn's own checks of data it cannot fit
        raise UsageError(f"--model {args.model}: cannot fit this data ({first_line(exc)})") from exc


def _search(
    pipeline: Pipeline, X: np.ndarray, y: np.ndarray, folds: Folds, args: argparse.Namespace
) -> Fitted:
    """Random search on the CV folds; its best candidate's fold scores are the CV scores."""
    refit = next(iter(SCORING))
    search = RandomizedSearchCV(
        pipeline,
        search_space(args.model),
        n_iter=args.iterations,
        scoring=SCORING,
        refit=refit,
        cv=folds,
        random_state=args.seed,
        n_jobs=-1,
        error_score="raise",
    )
    label = (
        f"searching {args.iterations} {args.model} candidates x {len(folds)} folds, then refitting the best"
    )
    with stage(label) as clock, classes_absent_quietly():
        search.fit(X, y)
    best, results = search.best_index_, search.cv_results_
    scores = {name: [results[f"split{i}_test_{name}"][best] for i in range(len(folds))] for name in SCORING}
    source = f"random search, best of {args.iterations} candidates by {refit} (optimistic)"
    seconds = {
        "fit": float(search.refit_time_),
        "cv": 0.0,
        "search": clock.seconds - float(search.refit_time_),
    }
    return Fitted(deployable(search.best_estimator_), cv_summary(scores, source), seconds)


# --------------------------------------------------------------------------- the run directory


def run_record(
    args: argparse.Namespace, table: Table, examples: Examples, split: Split, fitted: Fitted
) -> dict[str, Any]:
    """``run.json``: everything needed to reproduce the run and to export it for the device."""
    meta = table.meta or {}
    return {
        "format": RUN_FORMAT,
        "target": args.target,
        "model": args.model,
        "labels": [str(c) for c in fitted.model.classes_],
        "columns": list(examples.columns),
        "feature_spec": meta.get("feature_spec"),
        "window": meta.get("window"),
        "fps": meta.get("fps"),
        "dataset": {
            "path": str(table.path.resolve()),
            "fingerprint": table.fingerprint,
            "rows": len(table.frame),
        },
        "split": {
            "kind": split.kind,
            "requested": args.split,
            "reason": split.reason,
            "test_size": split.test_size,
            "group_by": GROUP_COLUMN if split.kind == "group" else None,
            "gap_rows": split.gap,
            "cv": len(split.folds),
            "cv_method": split.cv_method,
        },
        "balance": args.balance,
        "seed": args.seed,
        "params": classifier_params(fitted.model),
        "fit_seconds": round(fitted.seconds["fit"], 3),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "sklearn": sklearn.__version__,
            "skops": skops.__version__,
        },
        "search": {"kind": args.search, "iterations": args.iterations} if args.search else None,
        "preparation": {
            "value_map": parse_value_map(args.value_map),
            "drop": args.drop,
            "rows_without_target": examples.rows_without_target,
        },
    }


def held_out_npz(examples: Examples, split: Split) -> bytes:
    """``test_rows.npz``: held-out ``X`` (float64, NaN kept) and ``y`` (unicode), with their videos
    and frame ranges where the dataset has them; no object arrays."""
    arrays = {"X": examples.X[split.test].astype(np.float64), "y": examples.y[split.test].astype(str)}
    if examples.groups is not None:
        arrays["video_id"] = examples.groups[split.test].astype(str)
    if examples.frames is not None:
        arrays["first_frame"], arrays["last_frame"] = examples.frames[split.test].T
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_run_dir(
    out: Path, files: dict[str, bytes], finish: Callable[[Path], None] = lambda staging: None
) -> None:
    """Write every file into a hidden folder beside ``out``, then rename it into place.

    ``finish(staging)`` runs on the complete staging folder before the rename (the bundle export
    and the MLflow run read the files from there). A reader sees either the previous run directory
    or the complete new one; a failure or Ctrl-C removes the staging folder, so nothing
    half-written is ever left at ``out``.
    """
    staging = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()  # unlike mkdtemp's 0700, the run directory gets the user's usual permissions
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create ({exc.strerror})") from exc
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        finish(staging)
        _replace_dir(staging, out)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write ({exc.strerror})") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_dir(staging: Path, out: Path) -> None:
    if not out.exists():
        os.rename(staging, out)
        return
    retired = staging.with_suffix(".old")
    os.rename(out, retired)
    try:
        os.rename(staging, out)
    except BaseException:  # Ctrl-C included: put the previous run back
        os.rename(retired, out)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _check_out(out: Path, overwrite: bool, dataset: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"--out {out}: folder exists and is not empty; add --overwrite to replace it")
        if out.resolve() in dataset.resolve().parents:
            raise UsageError(f"--out {out}: --overwrite would delete the dataset inside it")


# --------------------------------------------------------------------------- the command


def _check_options(args: argparse.Namespace) -> None:
    if not 0 < args.test_size <= 0.5:
        raise UsageError(f"--test-size must be within (0, 0.5], got {args.test_size}")
    if args.cv == 1 or args.cv < 0:
        raise UsageError(f"--cv must be 0 (skip) or at least 2, got {args.cv}")
    if args.search and args.cv == 0:
        raise UsageError("--search needs cross-validation folds: give --cv 2 or more")
    if args.iterations < 1:
        raise UsageError(f"--iterations must be at least 1, got {args.iterations}")
    _check_out(args.out, args.overwrite, args.dataset)


@dataclass(frozen=True)
class Publishing:
    """What ``train`` does beyond the run directory, checked before any training starts."""

    export: ExportSettings | None  # --key: sign and export into RUN_DIR/bundle.zip
    store: tracking.Store | None  # --mlflow
    experiment: str
    register: str
    alias: str


def _refuse_without(needed: str, given: bool, options: dict[str, object], why: str = "") -> None:
    """A usage error naming the first of ``options`` that was set although ``needed`` was not."""
    if not given:
        for option, value in options.items():
            if value is not None:
                raise UsageError(f"{option} needs {needed}{why}")


def _publishing(args: argparse.Namespace) -> Publishing:
    bundle_options = {
        "--model-id": args.model_id,
        "--version": args.version,
        "--label-names": args.label_names,
    }
    registry_options = {"--register": args.register, "--alias": args.alias}
    _refuse_without(
        "--key", args.key is not None, bundle_options | registry_options, " (it describes the signed bundle)"
    )
    tracking_options = {"--tracking-uri": args.tracking_uri, "--experiment": args.experiment}
    _refuse_without("--mlflow", args.mlflow, tracking_options | registry_options)
    model_id = args.model_id or args.target
    register = args.register or model_id
    alias = tracking.check_alias(args.alias or tracking.DEFAULT_ALIAS, "--alias")
    export = None
    if args.key is not None:
        tracking.check_name(register, "--register" if args.register else "--model-id")
        export = export_settings(
            args.key, model_id=args.model_id, version=args.version, label_names=args.label_names
        )
    store = None
    if args.mlflow:
        store = tracking.open_store(tracking.tracking_uri(args.tracking_uri), create=True)
    return Publishing(export, store, args.experiment or model_id, register, alias)


def _publish(staging: Path, out: Path, plan: Publishing) -> list[str]:
    """Export and log from the complete staging folder; the lines to print once it is in place."""
    said: list[str] = []
    bundle: VerifiedBundle | None = None
    if plan.export is not None:
        with stage(f"signing and exporting {BUNDLE_FILE}"):
            exported = export_run(staging, staging / BUNDLE_FILE, plan.export)
        said.extend(exported.summary(out / BUNDLE_FILE))
        bundle = exported.bundle
    if plan.store is not None:
        with (
            stage(f"logging to MLflow ({plan.store.uri})"),
            tracking.logged_run(plan.store, plan.experiment, staging, out) as logged,
        ):
            said.append(f"MLflow run {logged.run_id} in experiment {plan.experiment!r} ({plan.store.uri})")
            if bundle is not None:
                done = tracking.register_bundle(
                    plan.store, logged.run_id, staging / BUNDLE_FILE, bundle, plan.register, plan.alias
                )
                said.append(done.describe())
                logged = replace(logged, model_id=bundle.manifest.model_id, registered_model=done.name)
            else:
                said.append("no bundle registered: give --key to sign, export and register the model")
            tracking.write_record(staging, logged)
    return said


def run(args: argparse.Namespace) -> int:
    _check_options(args)
    plan = _publishing(args)
    value_map = parse_value_map(args.value_map)
    table = read_table(args.dataset)
    examples = prepare(table, args.target, value_map, args.drop)
    split = make_split(examples, args.split, args.test_size, args.cv, args.seed)
    if args.balance == "smote" and split.smallest_class < 2:
        raise UsageError(
            "--balance smote: a class has a single row in a training fold; use --balance upsample"
        )
    if args.search and not split.folds:
        raise UsageError(f"--search needs cross-validation folds; --split {split.kind} has {split.cv_method}")
    sizes = split_sizes(examples, split)
    warning = split_warning(examples, split)
    _announce(args, table, examples, split, sizes, warning)

    fitted = fit_model(examples, split, args)
    X_test, y_test = examples.X[split.test], examples.y[split.test]
    with stage(f"evaluating on {len(y_test)} held-out rows"):
        artifact = skops.io.dumps(fitted.model)
        # evaluate the artifact itself, as the device will load it: what is measured is what ships
        model = skops.io.loads(artifact, trusted=list(TRUSTED_TYPES))
        metrics = {
            "format": RUN_FORMAT,
            **held_out_metrics(model, X_test, y_test),
            "split_warning": warning,
            "cv": fitted.cv,
            "sizes": sizes,
            "seconds": {name: round(value, 3) for name, value in fitted.seconds.items()},
            "importance": feature_importance(model, X_test, y_test, examples.columns, args.seed),
        }
    record = run_record(args, table, examples, split, fitted)
    said: list[str] = []
    with stage(f"writing {args.out}"):
        files = {
            "model.skops": artifact,
            "run.json": _json_bytes(record),
            "test_rows.npz": held_out_npz(examples, split),
            "metrics.json": _json_bytes(metrics),
            "report.html": report.render(record, metrics, _timelines(examples, split, model)).encode("utf-8"),
        }
        write_run_dir(args.out, files, lambda staging: said.extend(_publish(staging, args.out, plan)))
    published = [name for name in (BUNDLE_FILE, tracking.RUN_RECORD) if (args.out / name).exists()]
    print(f"{args.model} on {args.target!r}: {len(model.classes_)} classes; held-out {split.kind} split")
    print(summary_table(metrics))
    print(f"wrote {args.out}: {', '.join([*files, *published])}")
    for line in said:
        print(line)
    return ExitStatus.OK


def _timelines(examples: Examples, split: Split, model: Pipeline) -> list[timeline.Timeline]:
    """True and predicted labels of each held-out video along its frames (none for single rows)."""
    if not examples.from_videos:
        return []
    assert examples.groups is not None and examples.frames is not None  # from_videos says so
    test = split.test
    return timeline.timelines(
        examples.groups[test], examples.frames[test], examples.y[test], model.predict(examples.X[test])
    )


def _announce(
    args: argparse.Namespace,
    table: Table,
    examples: Examples,
    split: Split,
    sizes: dict[str, int | None],
    warning: str | None,
) -> None:
    """The input as understood, and what makes its scores or its export doubtful."""
    classes = len(np.unique(examples.y))
    progress(
        f"{len(examples.y)} rows x {len(examples.columns)} features, {classes} classes of {args.target!r} "
        f"({examples.rows_without_target} rows without a label dropped)"
    )
    videos = (
        "" if sizes["train_videos"] is None else f" ({sizes['train_videos']} / {sizes['test_videos']} videos)"
    )
    gap = f", {split.gap} rows between left out" if split.gap else ""
    progress(
        f"split {split.kind} ({split.reason}): {sizes['train_rows']} training / {sizes['test_rows']} "
        f"held-out rows{videos}{gap}; cross-validation: {split.cv_method}"
    )
    if table.meta is None:
        progress(
            f"note: {table.meta_path} not found: feature_spec and window are recorded as null, so `export` "
            "will refuse this run (the device could not compute its features); rebuild it with `dataset`"
        )
    if warning:
        progress(f"warning: {warning}")


def progress(message: str) -> None:
    print(f"train: {message}", file=sys.stderr, flush=True)


@dataclass
class Clock:
    """Seconds a :func:`stage` took, set when it ends."""

    seconds: float = 0.0


@contextmanager
def stage(label: str) -> Iterator[Clock]:
    """Announce a long step on stderr, then its duration."""
    clock, start = Clock(), time.perf_counter()
    progress(f"{label} ...")
    yield clock
    clock.seconds = time.perf_counter() - start
    progress(f"{label}: {clock.seconds:.1f} s")


def _json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode("utf-8")
