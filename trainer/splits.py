"""Held-out rows and cross-validation folds: by whole videos, by the end of each video, or by row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold, train_test_split

from device.cli import UsageError
from trainer.examples import Examples
from trainer.messages import count, first_line, some
from trainer.table import FRAME_COLUMNS, GROUP_COLUMN

Folds = list[tuple[np.ndarray, np.ndarray]]


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
    needed, videos = round(1 / test_size), count(examples.videos, "video")
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
            f"--split {kind}: no training rows left for class {some(untrained)} "
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
        raise UsageError(f"--test-size {test_size}: too few rows ({len(y)}): {first_line(exc)}") from exc


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
            f"({count(examples.videos, 'video')}, {split.gap} rows between left out): the scores "
            f"measure later moments of people and places the model has seen, not new ones; {better}"
        )
    shared = split_sizes(examples, split)["shared_videos"]
    if shared:
        return (
            f"{shared} videos have rows in both parts (near-copies of each other): held-out scores are "
            f"optimistic; {better}, or use --split time"
        )
    return None
