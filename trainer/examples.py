"""What a model learns from: a dataset's rows as features ``X``, labels ``y``, their videos and frames."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

import numpy as np
import pandas as pd
from pandas.api.types import is_numeric_dtype

from device.cli import UsageError
from trainer.messages import some
from trainer.table import FRAME_COLUMNS, GROUP_COLUMN, Table


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
            f"{some(table.label_columns) if table.label_columns else '(none)'}"
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
        raise UsageError(f"--dataset {table.path}: feature columns are not numeric: {some(not_numeric)}")
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
            f"--value-map: no value {some(map(repr, unknown))} in {target} (values: {some(sorted(values))})"
        )
    return np.array([mapping.get(v, v) for v in y.tolist()], dtype=str) if mapping else y


def _feature_columns(table: Table, target: str, drop: str | None) -> tuple[str, ...]:
    columns = tuple(c for c in table.feature_columns if c != target)
    patterns = [p.strip() for p in drop.split(",") if p.strip()] if drop is not None else []
    unmatched = [p for p in patterns if not any(fnmatchcase(c, p) for c in columns)]
    if unmatched:
        raise UsageError(f"--drop: no feature column of {table.path} matches {some(map(repr, unmatched))}")
    kept = tuple(c for c in columns if not any(fnmatchcase(c, p) for p in patterns))
    if not kept:
        raise UsageError("--drop: no feature column would be left")
    return kept
