"""The dataset file ``train`` reads: a CSV or Parquet table and its ``.meta.json``.

The format is docs/trainer-contracts.md's; ``dataset`` writes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pandas.api.types import is_numeric_dtype

from device.cli import UsageError
from trainer.messages import first_line, some

FRAME_COLUMNS: tuple[str, ...] = ("video_id", "first_frame", "last_frame")
GROUP_COLUMN = "video_id"
"""The columns that say where a row came from (``video_id`` groups rows by recording)."""


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
        raise UsageError(f"--dataset {path}: cannot read ({first_line(exc)})") from exc
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
        raise UsageError(f"{path}: cannot read ({first_line(exc)})") from exc
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
        raise UsageError(f"{meta_path(path)}: columns missing from {path}: {some(missing)}")
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
