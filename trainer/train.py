"""``python -m trainer train``: a dataset file -> one fitted, evaluated pipeline in a run directory.

The stages are small functions with one job each: :func:`read_table` (the dataset file and its
meta, per ``docs/trainer-contracts.md``), :func:`prepare` (target, value map, feature columns),
:func:`make_split` (held-out rows and cross-validation folds), :func:`fit_model` (cross-validation
or random search, then the final fit), and :func:`write_run_dir` (everything at once, atomically).
Every check of the user's input happens before the first progress line and before anything is
written, so bad input costs nothing and leaves nothing behind.
"""

from __future__ import annotations

import argparse
import hashlib
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
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
import skops
import skops.io
from pandas.api.types import is_numeric_dtype
from sklearn.model_selection import (
    KFold,
    RandomizedSearchCV,
    StratifiedGroupKFold,
    StratifiedKFold,
    cross_validate,
    train_test_split,
)
from sklearn.pipeline import Pipeline

from device.cli import Command, ExitStatus, UsageError
from device.model.bundle import VerifiedBundle
from trainer import report, timeline, tracking
from trainer.estimators import (
    BALANCERS,
    DEFAULT_MODEL,
    MODELS,
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
from trainer.export import ExportSettings, export_run, export_settings

FRAME_COLUMNS: tuple[str, ...] = ("video_id", "first_frame", "last_frame")
GROUP_COLUMN = "video_id"
SPLITS: tuple[str, ...] = ("auto", "group", "time", "stratified", "random")
RUN_FORMAT = 1
BUNDLE_FILE = "bundle.zip"
Folds = list[tuple[np.ndarray, np.ndarray]]

DESCRIPTION = f"""\
Train one classifier on a dataset file (written by `python -m trainer dataset`) and evaluate it
on held-out rows. RUN_DIR receives model.skops (the fitted imputer -> scaler -> classifier
pipeline, which `export` bundles for the device), run.json, test_rows.npz, metrics.json and a
self-contained report.html. Rows without a target label are dropped (and counted); missing
feature values are imputed inside the pipeline, never dropped.

How rows are held out (--split, default auto). The rows of one video are near-copies of each
other (neighbouring frames, overlapping windows, the same person, light and camera). When some of
them are in the training part and their neighbours in the test part, the test measures recognition
of that video, not of the movement, and every metric comes out too high.
  group       each video_id wholly on one side (StratifiedGroupKFold: 1/round(1/TEST_SIZE) of the
              videos, class mix balanced), cross-validated by video too: the numbers predict what
              a kiosk will see with a new person. Needs round(1/TEST_SIZE) videos (5 at 0.2).
  time        with fewer videos: within each video, train on the first 1 - TEST_SIZE of its rows
              in frame order and test on the last TEST_SIZE, leaving out the rows between whose
              frames overlap the held-out ones (a window's length), so no frame is on both sides.
              Cross-validation chains forward within each video (fit on earlier blocks, score the
              next one). Honest where stratified is not: every score is on moments the model never
              saw, after a gap, as a kiosk meets the future; but they are the same people, so
              train says that the scores do not yet speak for new ones.
  stratified  rows drawn at random with the class mix kept (random: without); right for single
              examples such as BODY-25 poses, optimistic for videos, and train says so.
auto takes group when there are enough videos, else time when rows have frame ranges, else
stratified; run.json records the kind and why, metrics.json and report.html the warning.

Models (--model, default {DEFAULT_MODEL}):
{chr(10).join(f"  {name:<23} {choice.summary}" for name, choice in MODELS.items())}
The default is logistic regression. On the BODY-25 poses (benchmarks/train_bench.py) it is as
accurate as the tree ensembles (within two of 2,137 held-out rows), fits in about a second, and
classifies one row in 0.4 ms against 12 ms for 20-class histogram gradient boosting (2,000 trees
per row) in a 60 KB artifact instead of 13 MB; its probabilities are calibrated, which the device's
confidence threshold relies on, and it exports to TFLite. The pipeline imputes before every model,
so gradient boosting's native NaN handling brings nothing here. For non-linear targets compare with
--model hist_gradient_boosting: each run prints its cross-validated macro F1 as mean ± std.

Examples:
  python -m trainer train --dataset steps.parquet --target step_type --out runs/steps
  python -m trainer train --dataset steps.parquet --target weight_transfer_type --out runs/wt \\
      --value-map "Successful Weight Transfer=ok,Failure Weight Transfer=fail" --balance smote
  python -m trainer train --dataset poses.csv --target label --out runs/poses --split stratified \\
      --model hist_gradient_boosting --search random --iterations 20 --drop "seed.*"
  python -m trainer train --dataset poses.csv --target label --out runs/poses --overwrite --cv 0

Signed bundle and MLflow (optional extra: pip install .[mlflow]):
  --key FILE signs and exports the model into RUN_DIR/bundle.zip exactly as `export RUN_DIR --key
  FILE` would (with --model-id, --version and --label-names; the decision options keep export's
  defaults, the threshold among them from the held-out rows). --mlflow logs the run: parameters,
  the dataset fingerprint (a tag and a dataset input), every number of metrics.json, and
  report.html, metrics.json, run.json as artifacts; with --key also the bundle, registered as a new
  version of --register NAME (default: the model id) and pointed at by --alias (default
  candidate). The store is --tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db
  (artifacts in ./mlruns; `mlflow ui` in the same folder shows them). RUN_DIR/mlflow.json records
  the run. Nothing is written, and the MLflow run is marked FAILED, if any of it fails.
  python -m trainer train --dataset poses.parquet --target label --split stratified --out runs/poses \\
      --mlflow --key keys/signing.key --model-id poses --version 2.0.0
  python -m trainer train --dataset steps.parquet --target step_type --out runs/steps --mlflow \\
      --tracking-uri http://mlflow.lan:5000 --experiment steps --key keys/signing.key --alias staging
  python -m provisioning push models:/poses@candidate --fleet fleet.toml --promote production
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, required=True, help="dataset table: FILE.csv or FILE.parquet")
    parser.add_argument("--target", required=True, help="label column to predict")
    parser.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run directory to write")
    parser.add_argument(
        "--model", choices=tuple(MODELS), default=DEFAULT_MODEL, help=f"default {DEFAULT_MODEL}"
    )
    parser.add_argument("--value-map", metavar="OLD=NEW,...", help='rename or merge target values: "A=x,B=x"')
    parser.add_argument(
        "--drop", metavar="COLS", help="comma-separated feature columns (or glob patterns) to leave out"
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="auto",
        help="held-out split (default auto: group with enough videos, else time, else stratified)",
    )
    parser.add_argument(
        "--test-size", type=float, default=0.2, help="held-out fraction, 0 < x <= 0.5 (default 0.2)"
    )
    parser.add_argument("--balance", choices=tuple(BALANCERS), help="resample the training rows only")
    parser.add_argument(
        "--search", choices=("random",), help="randomized hyperparameter search on the CV folds"
    )
    parser.add_argument(
        "--iterations", type=int, default=20, help="candidates of --search random (default 20)"
    )
    parser.add_argument(
        "--cv", type=int, default=5, metavar="K", help="cross-validation folds, 0 to skip (default 5)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of every split, sampler and model (default 0)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty RUN_DIR")
    bundle = parser.add_argument_group("signed bundle (as `export` makes it)")
    bundle.add_argument("--key", type=Path, help=f"sign and export the model into RUN_DIR/{BUNDLE_FILE}")
    bundle.add_argument("--model-id", help="model id on the devices (default: the target column)")
    bundle.add_argument("--version", help="bundle version (default: UTC time YYYY.MM.DD.HHMMSS)")
    bundle.add_argument(
        "--label-names", type=Path, metavar="FILE.toml", help="display names of the labels, as for `export`"
    )
    mlflow = parser.add_argument_group(f"MLflow tracking and registry ({tracking.EXTRA})")
    mlflow.add_argument("--mlflow", action="store_true", help="log the run (and register the bundle)")
    mlflow.add_argument(
        "--tracking-uri",
        metavar="URI",
        help=f"default $MLFLOW_TRACKING_URI, else sqlite:///./{tracking.STORE_FILE}",
    )
    mlflow.add_argument("--experiment", metavar="NAME", help="MLflow experiment (default: the model id)")
    mlflow.add_argument("--register", metavar="NAME", help="registered model name (default: the model id)")
    mlflow.add_argument(
        "--alias", metavar="ALIAS", help=f"alias of the new version (default {tracking.DEFAULT_ALIAS})"
    )


# --------------------------------------------------------------------------- the dataset file


@dataclass(frozen=True)
class Table:
    """A dataset file and its meta (``None`` when ``FILE.meta.json`` does not exist)."""

    path: Path
    frame: pd.DataFrame
    meta: dict[str, Any] | None
    label_columns: tuple[str, ...]
    feature_columns: tuple[str, ...]
    fingerprint: str

    @property
    def meta_path(self) -> Path:
        return meta_path(self.path)


def meta_path(path: Path) -> Path:
    """``FILE.csv`` / ``FILE.parquet`` -> ``FILE.meta.json``."""
    return path.with_suffix(".meta.json")


# Only empty cells (and NaN spelled out) are missing: a label such as "NA" or "None" is a label.
_CSV_MISSING = ["", "NaN", "nan"]


def _read_csv(path: Path, meta: dict[str, Any] | None) -> pd.DataFrame:
    text_columns = [GROUP_COLUMN, *(meta["label_columns"] if meta else [])]
    return pd.read_csv(
        path, dtype=dict.fromkeys(text_columns, str), keep_default_na=False, na_values=_CSV_MISSING
    )


def _read_parquet(path: Path, meta: dict[str, Any] | None) -> pd.DataFrame:
    return pd.read_parquet(path)


READERS: dict[str, Callable[[Path, dict[str, Any] | None], pd.DataFrame]] = {
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def read_table(path: Path) -> Table:
    """Read a dataset file per the contract; every problem is a :class:`UsageError` naming the file."""
    if path.suffix not in READERS:
        raise UsageError(
            f"--dataset {path}: unknown extension {path.suffix or '(none)'!r}; expected .csv or .parquet"
        )
    if not path.is_file():
        raise UsageError(f"--dataset {path}: no such file")
    meta = _read_meta(meta_path(path))
    try:
        frame = READERS[path.suffix](path, meta)
    except (OSError, ValueError) as exc:  # pandas' and pyarrow's parse errors are ValueErrors
        raise UsageError(f"--dataset {path}: cannot read ({_first_line(exc)})") from exc
    fingerprint = file_fingerprint(path)
    if meta is not None and meta.get("fingerprint", fingerprint) != fingerprint:
        raise UsageError(f"{meta_path(path)}: describes a different table than {path} (fingerprint mismatch)")
    labels, features = _meta_columns(frame, meta, path) if meta else _inferred_columns(frame)
    return Table(path, frame, meta, labels, features, fingerprint)


def _read_meta(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read ({_first_line(exc)})") from exc
    if not isinstance(meta, dict):
        raise UsageError(f"{path}: expected a JSON object")
    for key in ("label_columns", "feature_columns"):
        if not isinstance(meta.get(key), list) or not all(isinstance(c, str) for c in meta[key]):
            raise UsageError(f"{path}: {key!r} must be a list of column names")
    for key in ("feature_spec", "window"):
        if not isinstance(meta.get(key), dict | None):
            raise UsageError(f"{path}: {key!r} must be an object or null")
    return meta


def _meta_columns(
    frame: pd.DataFrame, meta: dict[str, Any], path: Path
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    missing = [c for c in (*meta["label_columns"], *meta["feature_columns"]) if c not in frame.columns]
    if missing:
        raise UsageError(f"{meta_path(path)}: columns missing from {path}: {_some(missing)}")
    return tuple(meta["label_columns"]), tuple(meta["feature_columns"])


def _inferred_columns(frame: pd.DataFrame) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Without a meta file: text columns are labels, numeric ones features (frame columns aside)."""
    others = [str(c) for c in frame.columns if c not in FRAME_COLUMNS]
    labels = tuple(c for c in others if not is_numeric_dtype(frame[c]))
    return labels, tuple(c for c in others if c not in labels)


def file_fingerprint(path: Path) -> str:
    """``sha256:<hex>`` of the table file, as the dataset meta records it."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


# --------------------------------------------------------------------------- rows and columns


@dataclass(frozen=True)
class Examples:
    """What the model sees: features ``X`` (float64, NaN kept), labels ``y``, videos ``groups``,
    and each row's ``frames`` (first_frame, last_frame; None without those columns)."""

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None
    columns: tuple[str, ...]
    rows_without_target: int
    frames: np.ndarray | None = None

    @property
    def videos(self) -> int:
        return 0 if self.groups is None else len(np.unique(self.groups))

    @property
    def shares_videos(self) -> bool:
        """Whether rows share video_ids (a BODY-25 table gives each pose its own ``<stem>:<row>``)."""
        return 0 < self.videos < len(self.y)

    @property
    def from_videos(self) -> bool:
        """Whether rows are stretches of videos: they share video_ids and have frame ranges."""
        return self.frames is not None and self.shares_videos


def prepare(table: Table, target: str, value_map: dict[str, str], drop: str | None) -> Examples:
    """Select the labelled rows, apply the value map, and pick the feature columns."""
    # without a meta file any non-frame column may be the target; it is then no feature
    allowed = table.label_columns if table.meta else (*table.label_columns, *table.feature_columns)
    if target not in allowed:
        raise UsageError(
            f"--target {target!r} is not a label column of {table.path}; label columns: "
            f"{_some(table.label_columns) if table.label_columns else '(none)'}"
        )
    labels, present = _labels(table.frame[target])
    y = _apply_value_map(labels[present], value_map, target)
    classes = np.unique(y)
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if len(classes) else "no labelled rows"
        raise UsageError(
            f"--target {target}: {found} after dropping {int((~present).sum())} rows without a label; "
            "a classifier needs at least two classes"
        )
    columns = _feature_columns(table, target, drop)
    not_numeric = [c for c in columns if not is_numeric_dtype(table.frame[c])]
    if not_numeric:
        raise UsageError(f"--dataset {table.path}: feature columns are not numeric: {_some(not_numeric)}")
    X = table.frame.loc[present, list(columns)].to_numpy(dtype=np.float64, na_value=np.nan)
    groups = None
    if GROUP_COLUMN in table.frame.columns:
        groups = table.frame.loc[present, GROUP_COLUMN].astype("string").fillna("").to_numpy(dtype=str)
    return Examples(
        np.ascontiguousarray(X), y, groups, columns, int((~present).sum()), _frames(table.frame[present])
    )


def _frames(frame: pd.DataFrame) -> np.ndarray | None:
    """(first_frame, last_frame) per row as integers, or None unless every row has both."""
    names = list(FRAME_COLUMNS[1:])
    if not set(names) <= set(frame.columns) or not all(is_numeric_dtype(frame[c]) for c in names):
        return None
    values = frame[names].to_numpy(dtype=np.float64, na_value=np.nan)
    return None if np.isnan(values).any() else values.astype(np.int64)


def _labels(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Labels as strings and a mask of the rows that have one (null and blank cells have none)."""
    text = series.astype("string").fillna("")
    return text.to_numpy(dtype=str), (text.str.strip() != "").to_numpy(dtype=bool)


def parse_value_map(text: str | None) -> dict[str, str]:
    """``"A=x,B=y"`` -> ``{"A": "x", "B": "y"}``; surrounding spaces are ignored."""
    mapping: dict[str, str] = {}
    for item in text.split(",") if text is not None else []:
        old, sep, new = (part.strip() for part in item.partition("="))
        if not sep or not old or not new or "=" in new or old in mapping:
            raise UsageError(
                f'--value-map: {item.strip()!r} is not a new OLD=NEW pair (e.g. "Left=step,Right=step")'
            )
        mapping[old] = new
    return mapping


def _apply_value_map(y: np.ndarray, mapping: dict[str, str], target: str) -> np.ndarray:
    values = set(y.tolist())
    unknown = [old for old in mapping if old not in values]
    if unknown:
        raise UsageError(
            f"--value-map: no value {_some(map(repr, unknown))} in {target} (values: {_some(sorted(values))})"
        )
    return np.array([mapping.get(v, v) for v in y.tolist()], dtype=str) if mapping else y


def _feature_columns(table: Table, target: str, drop: str | None) -> tuple[str, ...]:
    columns = tuple(c for c in table.feature_columns if c != target)
    patterns = [p.strip() for p in drop.split(",") if p.strip()] if drop is not None else []
    unmatched = [p for p in patterns if not any(fnmatchcase(c, p) for c in columns)]
    if unmatched:
        raise UsageError(f"--drop: no feature column of {table.path} matches {_some(map(repr, unmatched))}")
    kept = tuple(c for c in columns if not any(fnmatchcase(c, p) for p in patterns))
    if not kept:
        raise UsageError("--drop: no feature column would be left")
    return kept


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    """Row indices of the training and test parts, and CV folds as indices into the training part.

    ``reason`` says why this kind was chosen, ``gap`` counts the rows a time split leaves out
    between the parts, and ``cv_method`` how the folds were made or why there are none.
    ``smallest_class`` is the row count of the smallest class in any set a model is fitted on (the
    training part or a training fold): SMOTE's neighbour count must stay below it.
    """

    kind: str
    reason: str
    test_size: float
    train: np.ndarray
    test: np.ndarray
    gap: int
    folds: Folds
    cv_method: str
    smallest_class: int


def choose_split(examples: Examples, requested: str, test_size: float) -> tuple[str, str]:
    """The kind of split for ``--split requested``, and why; ``auto`` takes the most honest one
    the data allows: whole videos held out, else the end of each video, else single rows."""
    if requested != "auto":
        return requested, f"--split {requested}"
    needed, videos = round(1 / test_size), _count(examples.videos, "video")
    if examples.shares_videos and examples.videos >= needed:
        return (
            "group",
            f"auto: {videos}, enough to hold out whole ones (--test-size {test_size} needs {needed})",
        )
    too_few = (
        f"auto: {videos}, fewer than the {needed} needed to hold out whole ones at --test-size {test_size}"
    )
    if examples.from_videos:
        return "time", f"{too_few}; the end of each is held out"
    if examples.shares_videos:
        return "stratified", f"{too_few}, and no frame ranges to cut them at"
    return "stratified", "auto: the rows are single examples, not stretches of videos"


def make_split(examples: Examples, kind: str, test_size: float, cv: int, seed: int) -> Split:
    """Hold out ``test_size`` of the rows (whole videos when grouped, the end of each video when
    time-blocked) and fold the rest for CV; ``kind`` "auto" is decided by :func:`choose_split`."""
    kind, reason = choose_split(examples, kind, test_size)
    y, groups, frames = examples.y, examples.groups, examples.frames
    if kind == "group":
        train, test = _grouped_holdout(y, groups, test_size, seed)
    elif kind == "time":
        train, test = _time_holdout(examples, test_size)
    elif kind == "stratified":
        label, count = _smallest_class(y)
        if count < 2:
            raise UsageError(f"--split stratified: class {label!r} has only one row; each class needs two")
        train, test = _holdout(y, test_size, seed, stratify=y)
    else:
        train, test = _holdout(y, test_size, seed, stratify=None)
    train, test = np.sort(train), np.sort(test)  # fold indices below refer to this order
    if not len(test):
        raise UsageError(f"--split {kind}: no video has enough rows to hold out {test_size} of them")
    untrained = sorted(set(y.tolist()) - set(y[train].tolist()))
    if untrained:
        hint = "use a smaller --test-size" if kind == "time" else "add videos of it"
        raise UsageError(
            f"--split {kind}: no training rows left for class {_some(untrained)} "
            f"({hint}, or use --split stratified)"
        )
    folds, cv_method = [], "none (--cv 0)"
    if cv:
        part = (
            groups[train] if groups is not None else None,
            frames[train] if frames is not None else None,
        )
        folds, cv_method = _folds(kind, y[train], *part, cv, seed)
    smallest = min(_smallest_class(y[train][rows])[1] for rows in [slice(None), *(fit for fit, _ in folds)])
    gap = len(y) - len(train) - len(test)
    return Split(kind, reason, test_size, train, test, gap, folds, cv_method, smallest)


def _grouped_holdout(
    y: np.ndarray, groups: np.ndarray | None, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    if groups is None:
        raise UsageError(f"--split group: the dataset has no {GROUP_COLUMN} column; use --split stratified")
    parts, videos = round(1 / test_size), len(np.unique(groups))
    if videos < parts:
        raise UsageError(
            f"--split group: only {videos} video(s) in the dataset, --test-size {test_size} needs {parts}; "
            "use --split time (the end of each video held out) or --split stratified (optimistic)"
        )
    splitter = StratifiedGroupKFold(n_splits=parts, shuffle=True, random_state=seed)
    return next(splitter.split(np.zeros(len(y)), y, groups))


def _time_holdout(examples: Examples, test_size: float) -> tuple[np.ndarray, np.ndarray]:
    """The last ``test_size`` of each video's rows in frame order, and the rows before them.

    Rows whose frames overlap the held-out ones' are in neither part (the gap): a sliding window
    ending just before the boundary shares most of its frames with the first held-out window.
    """
    if examples.frames is None or examples.groups is None:
        raise UsageError(
            f"--split time: the dataset has no {', '.join(FRAME_COLUMNS)} columns; use --split stratified"
        )
    if not examples.from_videos:
        raise UsageError(
            "--split time: every video_id holds one row (single examples, not videos); use --split stratified"
        )
    train, test = [], []
    for rows in _video_rows(examples.groups, examples.frames):
        held = rows[len(rows) - round(len(rows) * test_size) :]
        test.append(held)
        train.append(_apart(rows[: len(rows) - len(held)], held, examples.frames))
    return np.concatenate(train), np.concatenate(test)


def _video_rows(groups: np.ndarray, frames: np.ndarray) -> list[np.ndarray]:
    """Row indices of each video, in frame order."""
    order = np.lexsort((frames[:, 1], frames[:, 0], groups))
    return np.split(order, np.flatnonzero(groups[order][1:] != groups[order][:-1]) + 1)


def _apart(rows: np.ndarray, other: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """``rows`` less those whose frame range overlaps the span of ``other``'s (one video's rows)."""
    if not len(other):
        return rows
    start, end = frames[other, 0].min(), frames[other, 1].max()
    return rows[(frames[rows, 1] < start) | (frames[rows, 0] > end)]


def _holdout(
    y: np.ndarray, test_size: float, seed: int, stratify: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    try:
        return train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed, stratify=stratify)
    except ValueError as exc:  # too few rows for this test size and class count
        raise UsageError(f"--test-size {test_size}: too few rows ({len(y)}): {_first_line(exc)}") from exc


def _folds(
    kind: str, y: np.ndarray, groups: np.ndarray | None, frames: np.ndarray | None, k: int, seed: int
) -> tuple[Folds, str]:
    """K folds of the training part, of the same kind as the held-out split, and how they were made."""
    skip = "use a smaller --cv, or --cv 0 to skip cross-validation"
    if kind == "time":
        assert groups is not None and frames is not None  # the time holdout has checked
        return _time_folds(y, groups, frames, k)
    if kind == "group":
        assert groups is not None  # the grouped holdout has checked
        videos = len(np.unique(groups))
        if videos < k:
            raise UsageError(f"--cv {k}: the training part holds only {videos} videos; {skip}")
        splitter: Any = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        method = f"{k} folds of whole videos (StratifiedGroupKFold by {GROUP_COLUMN})"
    elif kind == "stratified":
        label, count = _smallest_class(y)
        if count < k:
            raise UsageError(f"--cv {k}: class {label!r} has only {count} training rows; {skip}")
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        method = f"{k} stratified folds of rows (StratifiedKFold)"
    else:
        if len(y) < k:
            raise UsageError(f"--cv {k}: only {len(y)} training rows; {skip}")
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
        method = f"{k} shuffled folds of rows (KFold)"
    return list(splitter.split(np.zeros(len(y)), y, groups if kind == "group" else None)), method


def _time_folds(y: np.ndarray, groups: np.ndarray, frames: np.ndarray, k: int) -> tuple[Folds, str]:
    """Forward-chaining folds, as TimeSeriesSplit makes them but within each video.

    Each video's training rows are cut into k + 1 blocks in frame order; fold i validates on
    every video's block i and fits on the blocks before it, less the rows overlapping block i (the
    same gap as the held-out split), so no fold learns from frames after the ones it is scored on.
    A fold whose fitting rows lack a class would score a different classifier: it is left out,
    and with fewer than two folds left there is no cross-validation (run.json says so).
    """
    blocks = [np.array_split(rows, k + 1) for rows in _video_rows(groups, frames)]
    classes, folds = set(y.tolist()), []
    for i in range(1, k + 1):
        validate = np.concatenate([video[i] for video in blocks])
        fit = np.concatenate([_apart(np.concatenate(video[:i]), video[i], frames) for video in blocks])
        if len(validate) and set(y[fit].tolist()) == classes:
            folds.append((np.sort(fit), np.sort(validate)))
    missing = f"{k - len(folds)} of {k} lack a class in their earlier blocks or have no rows"
    if len(folds) < 2:
        return [], f"none: too few rows for forward-chaining folds within each video ({missing})"
    left_out = f"; {missing} and are left out" if len(folds) < k else ""
    return folds, f"{len(folds)} forward-chaining folds within each video{left_out}"


def _smallest_class(y: np.ndarray) -> tuple[str, int]:
    labels, counts = np.unique(y, return_counts=True)
    return str(labels[counts.argmin()]), int(counts.min())


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
        raise UsageError(f"--model {args.model}: cannot fit this data ({_first_line(exc)})") from exc


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


def split_sizes(examples: Examples, split: Split) -> dict[str, int | None]:
    """Rows and videos on each side; ``shared_videos`` > 0 means the scores are optimistic."""
    sizes: dict[str, int | None] = {"train_rows": len(split.train), "test_rows": len(split.test)}
    groups = examples.groups
    train_videos = set(groups[split.train].tolist()) if groups is not None else None
    test_videos = set(groups[split.test].tolist()) if groups is not None else None
    sizes["train_videos"] = len(train_videos) if train_videos is not None else None
    sizes["test_videos"] = len(test_videos) if test_videos is not None else None
    shared = train_videos & test_videos if train_videos is not None and test_videos is not None else None
    sizes["shared_videos"] = len(shared) if shared is not None else None
    sizes["rows_without_target"] = examples.rows_without_target
    return sizes


def split_warning(examples: Examples, split: Split) -> str | None:
    """Why the held-out scores may promise more than a kiosk will see (train prints it, and
    metrics.json and report.html carry it where people look); None for whole videos held out."""
    parts = round(1 / split.test_size)
    better = f"record {parts} or more videos for --split group"
    if split.kind == "time":
        return (
            f"the held-out rows are the last {split.test_size:.0%} of each video's rows "
            f"({_count(examples.videos, 'video')}, {split.gap} rows between left out): the scores "
            f"measure later moments of people and places the model has seen, not new ones; {better}"
        )
    shared = split_sizes(examples, split)["shared_videos"]
    if shared:
        return (
            f"{shared} videos have rows in both parts (near-copies of each other): held-out scores are "
            f"optimistic; {better}, or use --split time"
        )
    return None


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _some(names: Any, limit: int = 12) -> str:
    """A readable, bounded list of names for a one-line message."""
    names = [str(n) for n in names]
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


COMMAND = Command(
    help="train and evaluate a classifier on a dataset file",
    description=DESCRIPTION,
    add_arguments=add_arguments,
    run=run,
)
