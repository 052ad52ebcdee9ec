"""``trainer dataset``: keypoint files + annotations -> one table of labeled rows (CSV or Parquet).

Each video goes through the same steps, in a worker process when there are several: read its
keypoints, check its annotated ranges against its frames, turn the ranges into label arrays,
compute the per-frame features with :class:`device.features.FeatureEngine` (the kiosk's own
code), cut the frames into segments by the chosen strategy, and make one row per segment with
:func:`device.features.window_features` (so pooled and flattened columns are exactly what the
kiosk computes from its rolling window). Segments never cross videos. The rows of all videos are
written once, atomically, followed by ``FILE.meta.json`` (docs/trainer-contracts.md).

Strategies differ only in how they choose segments (a registry of :class:`Strategy`); the
options each one needs or accepts are declared there and checked before any file is read.
Tables of single labeled poses (``--body25``, ``--blazepose``) differ only in their reader and
feature spec (a registry of :class:`PoseTableFormat`) and go through one builder.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from device.annotations import (
    AnnotationError,
    Issue,
    LabelMapping,
    LabelRange,
    ValidationError,
    ValidationPolicy,
    ValidationReport,
    check_frame_ranges,
    label_codes,
    match_annotations,
    read_annotations,
)
from device.cli import Command, ExitStatus, UsageError
from device.features import (
    GROUPS,
    POOLS,
    FeatureEngine,
    FeatureSpec,
    FeatureSpecError,
    WindowSpec,
    window_features,
    window_names,
    window_starts,
)
from device.keypoints import (
    BODY25_JOINTS,
    FRAMES_SUFFIX,
    JOINTS,
    BlazePoseTable,
    Body25Table,
    KeypointFileError,
    KeypointSequence,
    body25_to_blazepose,
    frames_stem,
    read_blazepose_table,
    read_body25_table,
)
from trainer.frame_columns import CopyRead, columns_path, copy_note

if TYPE_CHECKING:  # pyarrow is imported where tables are read and written, not for --help
    import pyarrow as pa

DEFAULT_GROUPS: tuple[str, ...] = ("normalized", "angles", "distances")
META_FORMAT = 1
CSV_DECIMALS = 6
CHUNK_FRAMES = 1 << 16
"""Frames gathered per window_features call: bounds memory on long videos with sliding windows."""
CSV_BLOCK_ROWS = 1 << 14
"""Rows formatted as CSV per block (one thread each); bounds memory on large tables."""
CSV_PARALLEL_ROWS = 1 << 10
"""Tables from this many rows are formatted on every core; smaller ones in one pass."""


class DatasetError(ValueError):
    """Options or inputs that cannot make a dataset; the message names the option or file."""


# --------------------------------------------------------------------------- configuration

OPTION_FLAGS: dict[str, str] = {
    "window": "--window",
    "stride": "--stride",
    "splitter_label": "--splitter-label",
    "window_label": "--window-label",
    "pool": "--pool",
}
"""Strategy options (fields of DatasetConfig) and their command-line names, for messages."""


def _flags(names: set[str] | frozenset[str]) -> str:
    return " and ".join(flag for name, flag in OPTION_FLAGS.items() if name in names)


@dataclass(frozen=True)
class DatasetConfig:
    """The command's options as data; ``None`` means "not given". Validated on creation."""

    strategy: str = "none"
    window: int | None = None
    stride: int | None = None
    splitter_label: str | None = None
    window_label: str | None = None
    pool: tuple[str, ...] | None = None
    groups: tuple[str, ...] = DEFAULT_GROUPS
    z: bool = False
    include_unlabeled: bool = False
    decimals: int | None = None
    mapping: LabelMapping = field(default_factory=LabelMapping)
    policy: ValidationPolicy = field(default_factory=ValidationPolicy)

    def __post_init__(self) -> None:
        strategy = STRATEGIES.get(self.strategy)
        if strategy is None:
            raise DatasetError(f"--strategy {self.strategy!r}: choose from {', '.join(STRATEGIES)}")
        given = {name for name in OPTION_FLAGS if getattr(self, name) is not None}
        if strategy.needs - given:
            raise DatasetError(f"--strategy {self.strategy} needs {_flags(strategy.needs)}")
        if extra := given - strategy.needs - strategy.allows:
            raise DatasetError(f"{_flags(extra)} does not apply to --strategy {self.strategy}")
        for name in ("window", "stride"):
            if (value := getattr(self, name)) is not None and value < 1:
                raise DatasetError(f"{OPTION_FLAGS[name]} {value}: expected at least 1")
        if self.pool is not None and (not self.pool or set(self.pool) - set(POOLS)):
            raise DatasetError(f"--pool {','.join(self.pool)}: name one or more of {','.join(POOLS)}")
        if not self.groups or set(self.groups) - set(GROUPS):
            raise DatasetError(f"--features {','.join(self.groups)}: name one or more of {','.join(GROUPS)}")
        if self.decimals is not None and self.decimals < 0:
            raise DatasetError(f"--decimals {self.decimals}: expected at least 0")

    @property
    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec.from_groups(self.groups, z=self.z)


@dataclass(frozen=True)
class Plan:
    """Everything a video goes through, with its label columns; plain data, so it pickles."""

    config: DatasetConfig
    spec: FeatureSpec
    label_columns: tuple[str, ...]
    categories: Mapping[str, tuple[str, ...]]
    fps: float | None = None  # the keypoint files' frame rate, once read (None: no timestamps)

    def __post_init__(self) -> None:
        target = self.strategy.target
        column = getattr(self.config, target) if target else None
        if column is not None and column not in self.label_columns:
            known = ", ".join(self.label_columns) or "none"
            flag = OPTION_FLAGS[target]
            raise DatasetError(f"{flag} {column!r}: not a label column (label columns: {known})")
        if clash := set(self.label_columns) & set(self.feature_names):
            raise DatasetError(f"label column {sorted(clash)[0]!r} has the name of a feature column")

    @property
    def strategy(self) -> Strategy:
        return STRATEGIES[self.config.strategy]

    @property
    def target_index(self) -> int:
        """Row of the label column that decides runs and which rows are labeled."""
        return self.label_columns.index(getattr(self.config, self.strategy.target))

    @property
    def pool(self) -> tuple[str, ...]:
        if self.config.pool is not None:
            return self.config.pool
        return () if self.strategy.flatten else POOLS

    @property
    def window(self) -> WindowSpec | None:
        """The window a device must slide to reproduce the rows; None for per-frame rows and
        for whole clips (split_on_label without --window)."""
        size = self.config.window
        if self.strategy.per_frame or size is None:
            return None
        stride = self.config.stride or (size if self.strategy.stride_is_size else 1)
        return WindowSpec(size, stride, self.strategy.flatten, self.pool, self.fps)

    @property
    def feature_names(self) -> tuple[str, ...]:
        names = _engine(self.spec).names
        if self.strategy.per_frame:
            return names
        return window_names(names, self.window or WindowSpec(1, 1, self.strategy.flatten, self.pool))


@functools.lru_cache(maxsize=8)
def _engine(spec: FeatureSpec) -> FeatureEngine:
    """One engine per spec and process: building one resolves every feature name to indices."""
    return FeatureEngine(spec)


# --------------------------------------------------------------------------- strategies


@dataclass(frozen=True)
class Segments:
    """Frame index ranges ``[starts, stops)`` of one video's rows."""

    starts: np.ndarray
    stops: np.ndarray
    skipped: int = 0  # runs too short for the window (flatten_on_example)


@dataclass(frozen=True)
class Strategy:
    """How one video's frames are cut into rows, and which options that takes."""

    segment: Callable[[np.ndarray, Plan], Segments]
    needs: frozenset[str] = frozenset()
    allows: frozenset[str] = frozenset()
    target: str | None = None  # the DatasetConfig field naming the column that decides labels/runs
    per_frame: bool = False
    flatten: bool = False
    stride_is_size: bool = False  # the stride defaults to the window size (non-overlapping windows)


def _frames(codes: np.ndarray, plan: Plan) -> Segments:
    """``none``: every frame with a label in any column (every frame with --include-unlabeled)."""
    keep = (codes >= 0).any(axis=0) | plan.config.include_unlabeled
    starts = np.flatnonzero(keep)
    return Segments(starts, starts + 1)


def _runs(codes: np.ndarray, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """Maximal runs of one value in the target column; a run's last frame belongs to it.

    Unlabeled runs are dropped unless --include-unlabeled.
    """
    values = codes[plan.target_index]
    if not len(values):
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.intp)
    change = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts, stops = np.concatenate(([0], change)), np.concatenate((change, [len(values)]))
    if not plan.config.include_unlabeled:
        labeled = values[starts] >= 0
        starts, stops = starts[labeled], stops[labeled]
    return starts, stops


def _clips(codes: np.ndarray, plan: Plan) -> Segments:
    """``split_on_label``: each run, or its last --window frames (a shorter run stays whole)."""
    starts, stops = _runs(codes, plan)
    if plan.config.window is not None:
        starts = np.maximum(starts, stops - plan.config.window)
    return Segments(starts, stops)


def _examples(codes: np.ndarray, plan: Plan) -> Segments:
    """``flatten_on_example``: the last --window frames of each run; shorter runs are skipped."""
    starts, stops = _runs(codes, plan)
    size = plan.config.window
    whole = stops - starts >= size
    return Segments(stops[whole] - size, stops[whole], skipped=int((~whole).sum()))


def _windows(codes: np.ndarray, plan: Plan) -> Segments:
    """Windows every stride frames, labeled by their last frame (unlabeled ones dropped)."""
    window = plan.window
    starts = window_starts(codes.shape[1], window)
    stops = starts + window.size
    if not plan.config.include_unlabeled:
        keep = codes[plan.target_index, stops - 1] >= 0
        starts, stops = starts[keep], stops[keep]
    return Segments(starts, stops)


_WINDOWED = frozenset({"window", "window_label"})
STRATEGIES: dict[str, Strategy] = {
    "none": Strategy(_frames, per_frame=True),
    "split_on_label": Strategy(
        _clips, frozenset({"splitter_label"}), frozenset({"window", "pool"}), "splitter_label"
    ),
    "window": Strategy(_windows, _WINDOWED, frozenset({"pool"}), "window_label", stride_is_size=True),
    "sliding_window": Strategy(_windows, _WINDOWED, frozenset({"stride", "pool"}), "window_label"),
    "flatten_into_columns": Strategy(
        _windows, _WINDOWED, frozenset({"stride", "pool"}), "window_label", flatten=True, stride_is_size=True
    ),
    "flatten_on_example": Strategy(
        _examples,
        frozenset({"window", "splitter_label"}),
        frozenset({"pool"}),
        "splitter_label",
        flatten=True,
    ),
}


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Rows:
    """Dataset rows: ids, frame ranges, label strings (None = no label) and feature values."""

    video_id: np.ndarray  # object, one per row
    first_frame: np.ndarray
    last_frame: np.ndarray
    labels: np.ndarray  # (rows, label columns) object
    features: np.ndarray  # (rows, feature columns) float64

    def __len__(self) -> int:
        return len(self.first_frame)

    @classmethod
    def concat(cls, parts: Sequence[Rows]) -> Rows:
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)))


def segment_features(features: np.ndarray, starts: np.ndarray, lengths: np.ndarray, plan: Plan) -> np.ndarray:
    """One row per segment ``features[start : start + length]``, pooled and/or flattened.

    Segments of equal length are gathered back to back and windowed with stride = size, so
    clips of any length go through the kiosk's :func:`window_features` unchanged.
    """
    out = np.empty((len(starts), len(plan.feature_names)))
    for size in np.unique(lengths).tolist():
        chosen = np.flatnonzero(lengths == size)
        window = WindowSpec(size, size, plan.strategy.flatten, plan.pool)
        per_call = max(1, CHUNK_FRAMES // size)
        for block in (chosen[i : i + per_call] for i in range(0, len(chosen), per_call)):
            frames = (starts[block, None] + np.arange(size)).ravel()
            out[block] = window_features(features[frames], window)
    return out


def sequence_rows(
    video_id: str, frame_numbers: np.ndarray, features: np.ndarray, codes: np.ndarray, plan: Plan
) -> tuple[Rows, int]:
    """The rows of one video and the number of runs skipped; each row takes its last frame's labels."""
    segments = plan.strategy.segment(codes, plan)
    last = segments.stops - 1
    if plan.strategy.per_frame:
        values = features[segments.starts]
    else:
        values = segment_features(features, segments.starts, segments.stops - segments.starts, plan)
    labels = np.empty((len(last), len(plan.label_columns)), dtype=object)
    for j, column in enumerate(plan.label_columns):
        names = np.array([*plan.categories[column], None], dtype=object)  # code -1 picks None
        labels[:, j] = names[codes[j, last]]
    ids = np.full(len(last), video_id, dtype=object)
    rows = Rows(ids, frame_numbers[segments.starts], frame_numbers[last], labels, values)
    return rows, segments.skipped


@dataclass(frozen=True)
class VideoJob:
    """One video to turn into rows; sent to a worker process."""

    video_id: str
    path: Path
    ranges: tuple[LabelRange, ...]
    plan: Plan


@dataclass(frozen=True)
class VideoResult:
    """One video's rows, frame count and range report; sent back from a worker process."""

    video_id: str
    frames: int
    rows: Rows | None  # None when the video's ranges have errors
    skipped: int
    report: ValidationReport
    fps: float | None = None  # from the keypoint file's timestamps
    keypoints: CopyRead | None = None  # how the keypoints were read (the columnar copy or why not)


def video_result(job: VideoJob, sequence: KeypointSequence) -> VideoResult:
    """Check, label, featurize and segment one video whose keypoints are read."""
    frame_numbers = sequence.frame_numbers
    if (np.diff(frame_numbers) <= 0).any():
        raise KeypointFileError(f"{job.path}: frame numbers must increase from line to line")
    report = check_frame_ranges(job.video_id, job.ranges, frame_numbers)
    if report.errors:
        return VideoResult(job.video_id, len(sequence), None, 0, report, sequence.frame_rate)
    plan = job.plan
    codes = label_codes(job.ranges, frame_numbers, plan.label_columns, plan.categories)
    features = _engine(plan.spec).compute(sequence.points)
    rows, skipped = sequence_rows(job.video_id, frame_numbers, features, codes, plan)
    return VideoResult(job.video_id, len(sequence), rows, skipped, report, sequence.frame_rate)


def build_video(job: VideoJob) -> VideoResult:
    """Read one video's keypoints (from the columnar copy when it is fresh) and make its rows
    (what a worker process runs)."""
    from trainer.frame_columns import read_keypoint_file

    sequence, how = read_keypoint_file(job.path)
    return dataclasses.replace(video_result(job, sequence), keypoints=how)


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which cancels what is queued and exits with 130."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


PARALLEL_JSON_BYTES = 64 << 20
"""JSON to parse (frame files without a columnar copy) above which the default is one worker
process per core: spawning one costs about a second, in which pyarrow parses ~30 MB of JSON."""


def json_bytes(job: VideoJob) -> int:
    """Bytes of JSON a job parses: none with a columnar copy (one read costs ~1 ms), else the file's."""
    path = job.path
    if path.is_dir():
        return sum(p.stat().st_size for p in path.glob("keypoints-*.json"))
    return 0 if columns_path(path).is_file() else path.stat().st_size


def default_workers(jobs: Sequence[VideoJob]) -> int:
    """One process per core when there is much JSON to parse; otherwise this process alone.

    With columnar copies a video costs a few milliseconds, far less than starting a process.
    """
    if sum(json_bytes(job) for job in jobs) > PARALLEL_JSON_BYTES:
        return os.cpu_count() or 1
    return 1


def run_jobs(
    jobs: Sequence[VideoJob], workers: int | None = None, progress: bool = False
) -> list[VideoResult]:
    """Every job's result in job order; in worker processes when more than one is useful.

    Parsing JSON holds the GIL, hence processes. They are spawned (a clean interpreter, no
    forked threads), which costs about a second, so by default (:func:`default_workers`) they
    are used only when there is enough JSON to parse, and a single job always runs in-process.
    """
    workers = min(workers or default_workers(jobs), len(jobs))
    quiet = None if progress else True  # None: tqdm shows the bar only on a terminal
    bar = tqdm(total=len(jobs), unit="file", desc="dataset", file=sys.stderr, disable=quiet)
    with bar:
        if workers <= 1:
            results = []
            for job in jobs:
                results.append(build_video(job))
                bar.update()
            return results
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_ignore_sigint)
        try:
            futures = [pool.submit(build_video, job) for job in jobs]
            for future in as_completed(futures):
                future.result()  # a worker's error ends the build now, not after the rest
                bar.update()
        finally:
            pool.shutdown(cancel_futures=True)
        return [future.result() for future in futures]


# --------------------------------------------------------------------------- inputs


def find_keypoint_files(folder: Path) -> dict[str, Path]:
    """Video stem -> keypoint file (``<stem>.frames.jsonl``) or seed folder, in name order."""
    if not folder.is_dir():
        raise DatasetError(f"--keypoints {folder}: not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.endswith(FRAMES_SUFFIX):
            stem = frames_stem(path)
        elif path.is_dir() and any(path.glob("keypoints-*.json")):
            stem = path.name
        else:
            continue
        if stem in found:
            raise DatasetError(f"{found[stem]} and {path}: two keypoint files for video {stem!r}")
        found[stem] = path
    if not found:
        kinds = f"*{FRAMES_SUFFIX} files or folders of keypoints-NNNN.json"
        raise DatasetError(f"--keypoints {folder}: no keypoint files ({kinds})")
    return found


def body25_spec(config: DatasetConfig) -> FeatureSpec:
    """The configured spec without normalized joints BODY-25 lacks (they would be all-NaN columns)."""
    present = ~np.isnan(body25_to_blazepose(np.zeros((1, len(BODY25_JOINTS), 1))))[0, :, 0]
    kept = {joint for joint, has in zip(JOINTS, present.tolist(), strict=True) if has}
    spec = config.feature_spec
    return dataclasses.replace(spec, normalized=tuple(j for j in spec.normalized if j in kept))


# --------------------------------------------------------------------------- output


@dataclass(frozen=True)
class OutputFormat:
    """How a table file is written, chosen by the extension of ``--out``."""

    write: Callable[[pa.Table, Path], None]
    default_decimals: int | None  # CSV is text anyway; Parquet keeps full precision


def _write_csv(table: pa.Table, path: Path) -> None:
    """The table as CSV, its rows formatted in blocks on every core and written in order.

    Turning floats into text is most of a build's time once keypoints are read from columnar
    copies; pyarrow does it without the GIL, so blocks format in parallel (1.4x on two cores).
    At most one block per thread is held in memory at a time.
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    rows = table.num_rows
    threads = (os.cpu_count() or 1) if rows >= CSV_PARALLEL_ROWS else 1  # threads cost more on few rows
    size = min(CSV_BLOCK_ROWS, max(1, -(-rows // threads)))  # smaller tables: one block per thread

    def block(start: int) -> pa.Buffer:
        sink = pa.BufferOutputStream()
        options = pa_csv.WriteOptions(quoting_style="needed", include_header=start == 0)
        pa_csv.write_csv(table.slice(start, size), sink, options)
        return sink.getvalue()

    starts = range(0, max(rows, 1), size)
    with ThreadPoolExecutor(threads, thread_name_prefix="dataset-csv") as pool, path.open("wb") as out:
        for first in range(0, len(starts), threads):
            for text in pool.map(block, starts[first : first + threads]):
                out.write(text)


def _write_parquet(table: pa.Table, path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, path)


FORMATS: dict[str, OutputFormat] = {
    ".csv": OutputFormat(_write_csv, CSV_DECIMALS),
    ".parquet": OutputFormat(_write_parquet, None),
}


def output_format(out: Path) -> OutputFormat:
    """The writer for ``--out``, checked before any work: extension, not a folder, folder exists."""
    writer = FORMATS.get(out.suffix.lower())
    if writer is None:
        raise DatasetError(f"--out {out}: unknown extension {out.suffix!r}; use .csv or .parquet")
    for path in (out, meta_path(out)):
        if path.is_dir():
            raise DatasetError(f"--out {out}: {path} is a folder")
    if not out.parent.is_dir():
        raise DatasetError(f"--out {out}: folder {out.parent} does not exist")
    return writer


def meta_path(out: Path) -> Path:
    """``FILE.csv`` -> ``FILE.meta.json``."""
    return out.with_suffix(".meta.json")


def _arrow_table(rows: Rows, plan: Plan, decimals: int | None) -> pa.Table:
    import pyarrow as pa

    values = rows.features if decimals is None else np.round(rows.features, decimals)
    # one conversion for every feature (NaN -> null: an empty cell), then a zero-copy slice per
    # column: converting the columns one by one costs more than the rest on wide windowed tables
    by_column = np.asfortranarray(values).T.reshape(-1)
    features = pa.array(by_column, pa.float64(), from_pandas=True)
    n = len(rows)
    columns: dict[str, pa.Array] = {
        "video_id": pa.array(rows.video_id, pa.string()),
        "first_frame": pa.array(rows.first_frame, pa.int64()),
        "last_frame": pa.array(rows.last_frame, pa.int64()),
    }
    for j, name in enumerate(plan.label_columns):
        columns[name] = pa.array(np.ascontiguousarray(rows.labels[:, j]), pa.string())
    for j, name in enumerate(plan.feature_names):
        columns[name] = features.slice(j * n, n)
    return pa.table(columns)


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _fsync(path: Path) -> None:
    """Flush a written file to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_dataset(
    out: Path, rows: Rows, plan: Plan, sources: Sequence[str], frames: int, decimals: int | None = None
) -> dict[str, Any]:
    """Write the table and then ``FILE.meta.json``; returns the meta.

    Both go to temporary files beside their targets and are renamed into place only when both
    are complete, so an error leaves either the previous files or nothing, never half a file.
    """
    writer = output_format(out)
    table = _arrow_table(rows, plan, writer.default_decimals if decimals is None else decimals)
    meta_out = meta_path(out)
    temps = [p.with_name(f".{p.name}.{os.getpid()}.partial") for p in (out, meta_out)]
    try:
        writer.write(table, temps[0])
        # the table's fsync (milliseconds: as long as the rest) runs while the meta is written
        with ThreadPoolExecutor(1, thread_name_prefix="dataset-fsync") as syncing:
            table_synced = syncing.submit(_fsync, temps[0])
            meta = {
                "format": META_FORMAT,
                "strategy": plan.config.strategy,
                "feature_spec": plan.spec.to_dict(),
                "window": plan.window.to_dict() if plan.window else None,
                "fps": plan.fps,
                "label_columns": list(plan.label_columns),
                "feature_columns": list(plan.feature_names),
                "rows": len(rows),
                "frames": frames,
                "fingerprint": f"sha256:{_sha256(temps[0])}",
                "sources": list(sources),
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            with temps[1].open("w", encoding="utf-8") as handle:
                handle.write(json.dumps(meta, indent=2) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            table_synced.result()
        os.replace(temps[0], out)
        os.replace(temps[1], meta_out)
    except OSError as exc:
        raise DatasetError(f"--out {out}: cannot write ({exc})") from exc
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    return meta


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class DatasetResult:
    """What a build wrote and found: the meta, rows per label, runs skipped, the validation report."""

    path: Path
    meta: dict[str, Any]
    summary: dict[str, dict[str | None, int]]  # label column -> label (None = no label) -> rows
    skipped_runs: int
    report: ValidationReport
    keypoints: tuple[CopyRead, ...] = ()  # how each video's keypoints were read


def label_summary(rows: Rows, plan: Plan) -> dict[str, dict[str | None, int]]:
    """Rows per label per label column: every known label in order (zeros too), then None."""
    summary = {}
    for j, column in enumerate(plan.label_columns):
        counts = Counter(rows.labels[:, j].tolist())
        summary[column] = {label: counts[label] for label in plan.categories[column]}
        if counts[None]:
            summary[column][None] = counts[None]
    return summary


def _collect(results: Sequence[VideoResult], plan: Plan) -> Rows:
    parts = [r.rows for r in results if r.rows is not None and len(r.rows)]
    if not parts:
        longest = max(results, key=lambda r: r.frames, default=None)
        window = plan.config.window
        if window is not None and longest is not None and window > longest.frames:
            raise DatasetError(
                f"no rows to write: --window {window} is longer than the longest video "
                f"({longest.video_id}, {longest.frames} frames)"
            )
        skipped = sum(r.skipped for r in results)
        why = f"; {skipped} runs were shorter than --window {plan.config.window}" if skipped else ""
        raise DatasetError(f"no rows to write: no labeled frames or segments in {len(results)} videos{why}")
    return Rows.concat(parts)


def plan_jobs(
    keypoints: Path, annotations: Path, config: DatasetConfig
) -> tuple[Plan, list[VideoJob], ValidationReport]:
    """The plan, one job per video to read, and the report of matching annotations to keypoints.

    Raises :class:`ValidationError` when matching finds errors. Videos without annotations are
    read only with ``include_unlabeled``: otherwise they cannot give a row.
    """
    sources = find_keypoint_files(keypoints)
    matched, report = match_annotations(read_annotations(annotations), sources, config.mapping, config.policy)
    report.raise_for_errors()
    plan = Plan(config, config.feature_spec, matched.columns, matched.categories)
    stems = sorted(sources) if config.include_unlabeled else sorted(matched.ranges)
    return plan, [VideoJob(s, sources[s], matched.ranges.get(s, ()), plan) for s in stems], report


def build_dataset(
    keypoints: Path,
    annotations: Path,
    out: Path,
    config: DatasetConfig,
    workers: int | None = None,
    progress: bool = False,
) -> DatasetResult:
    """Build ``out`` from a folder of keypoint files and annotation files (a folder or one file).

    Raises :class:`ValidationError` (with the whole report) when the annotations have errors,
    :class:`DatasetError` or :class:`AnnotationError` for bad options and files; nothing is
    written then.
    """
    output_format(out)
    plan, jobs, report = plan_jobs(keypoints, annotations, config)
    results = run_jobs(jobs, workers, progress)
    report = sum((r.report for r in results), report)
    report.raise_for_errors()
    rows = _collect(results, plan)
    rates = [r.fps for r in results if r.fps is not None]
    if rates:  # a window's frame rate: the device resamples what it sees to it
        plan = dataclasses.replace(plan, fps=round(float(np.median(rates)), 6))  # no 30.000000000000004
    sources = [job.video_id for job in jobs]
    meta = write_dataset(out, rows, plan, sources, sum(r.frames for r in results), config.decimals)
    reads = tuple(r.keypoints for r in results if r.keypoints is not None)
    return DatasetResult(out, meta, label_summary(rows, plan), sum(r.skipped for r in results), report, reads)


TABLE_LABEL = "label"
"""The label column of a dataset made from a table of single poses."""


@dataclass(frozen=True)
class PoseTableFormat:
    """A table of single labeled poses (``--body25``, ``--blazepose``): how it is read and which
    features it can give. The two differ only here; one builder makes a dataset of either."""

    name: str  # as messages say it: "a BODY-25 table ..."
    read: Callable[[Path], Body25Table | BlazePoseTable]
    spec: Callable[[DatasetConfig], FeatureSpec]
    has_z: bool


POSE_TABLES: dict[str, PoseTableFormat] = {
    "body25": PoseTableFormat("BODY-25", read_body25_table, body25_spec, has_z=False),
    "blazepose": PoseTableFormat(
        "BlazePose", read_blazepose_table, lambda config: config.feature_spec, has_z=True
    ),
}
"""Table formats by their option name (``--body25 FILE``, ``--blazepose FILE``)."""


def table_stem(path: Path) -> str:
    """``poses.csv`` and ``poses.csv.gz`` -> ``poses``: the source name of a table's rows."""
    return Path(path.name.removesuffix(".gz")).stem


def build_pose_table_dataset(table: Path, out: Path, config: DatasetConfig, kind: str) -> DatasetResult:
    """Build ``out`` from a table of single labeled poses (``kind`` a key of :data:`POSE_TABLES`).

    One row per pose, per-frame features only (a pose has no neighbours to window over).
    ``video_id`` is ``<file stem>:<row number>`` and both frame columns hold the row number, so
    the dataset still says where every row came from.
    """
    form = POSE_TABLES[kind]
    output_format(out)
    if config.strategy != "none":
        raise DatasetError(f"--strategy {config.strategy}: a {form.name} table holds single poses; use none")
    if config.z and not form.has_z:
        raise DatasetError(f"--z: a {form.name} table has no z coordinates")
    if config.mapping.columns:
        raise DatasetError(f"--labels/--label: a {form.name} table has its labels in column {TABLE_LABEL!r}")
    poses = form.read(table)
    names, codes = np.unique(poses.labels.astype(str), return_inverse=True)
    if len(names) and names[0] == "":  # sorts first: poses without a label
        names, codes = names[1:], codes - 1
    plan = Plan(config, form.spec(config), (TABLE_LABEL,), {TABLE_LABEL: tuple(names.tolist())})
    numbers = np.arange(1, len(codes) + 1)
    features = _engine(plan.spec).compute(poses.points)
    stem = table_stem(table)
    rows, _ = sequence_rows(stem, numbers, features, codes[None].astype(np.int32), plan)
    ids = np.array([f"{stem}:{n}" for n in rows.first_frame.tolist()], dtype=object)
    rows = dataclasses.replace(rows, video_id=ids)
    meta = write_dataset(out, rows, plan, [stem], len(numbers), config.decimals)
    return DatasetResult(out, meta, label_summary(rows, plan), 0, ValidationReport())


# --------------------------------------------------------------------------- command line

DESCRIPTION = """\
Turn keypoint files and their annotations into one table for training: a row per frame, per
window or per labeled clip, with video_id, first_frame, last_frame, the label columns and the
feature columns (names as in `python -m trainer features --list`, or window names such as
f0.<feature> and mean.<feature>). Writes FILE.csv or FILE.parquet and then FILE.meta.json.

Annotations are the seed's JSON files (one video each; its labels go to label columns through
--labels FILE.toml or --label "LABEL=COLUMN") or CSV files with the columns
video,start_frame,end_frame,column,label. They are matched to keypoint files by video stem.
Problems are errors (exit status 2, nothing written) unless they have one obvious outcome:
  errors    annotations of a video without keypoints (--skip-unknown-videos to ignore them),
            labels no column takes (--ignore-unmapped-labels), two labels on one frame in one
            column, a range wholly outside its video
  warnings  keypoint files nobody annotated, ranges running past the video (clipped), the
            same label over overlapping ranges (merged)

Tables of single labeled poses give one row per pose (strategy none, label column `label`,
video_id `<file stem>:<row>`), read as they are or gzipped (FILE.csv.gz):
  --body25 FILE         OpenPose BODY-25 with a header: label, accuracy, x0, y0 ... x24, y24
                        (y up, 0,0 = missing); features of the joints BODY-25 has
  --blazepose FILE      BlazePose landmarks, no header: name, label, x0, y0, z0 ... x32, y32, z32
                        (pixels, MediaPipe's joint order), as ML Kit's pose samples; the
                        kiosk's own features, so the model runs on its keypoints

Strategies (every one per video; a row's labels are its last frame's):
  none                  a row per labeled frame (every frame with --include-unlabeled)
  split_on_label        a row per run of one --splitter-label value, pooled (--pool); with
                        --window W only the run's last W frames
  window                non-overlapping windows of --window W frames labeled by their last
                        frame's --window-label; pooled
  sliding_window        the same every --stride S frames (default 1)
  flatten_into_columns  windows of W frames every S (default W) as f0.<feature> ... f<W-1>.<feature>,
                        plus pooled columns only with --pool
  flatten_on_example    the last W frames of each run flattened; shorter runs are skipped

Examples:
  python -m trainer dataset --keypoints keypoints/ --annotations annotations/ \\
      --labels examples/example_video.labels.toml --out frames.parquet
  python -m trainer dataset --keypoints keypoints/ --annotations annotations/ \\
      --labels examples/example_video.labels.toml --out steps.csv \\
      --strategy sliding_window --window 30 --stride 5 --window-label step_type --pool mean,std
  python -m trainer dataset --keypoints keypoints/ --annotations labels.csv --out clips.csv \\
      --strategy split_on_label --splitter-label weight_transfer_type --window 20
  python -m trainer dataset --keypoints keypoints/ --annotations annotations/ --out ex.parquet \\
      --label "Left Step=step_type" --label "Right Step=step_type" --ignore-unmapped-labels \\
      --strategy flatten_on_example --window 10 --splitter-label step_type
  python -m trainer dataset --body25 BodyPose_Dataset.csv --out poses.parquet --features angles,distances
  python -m trainer dataset --blazepose fitness_pose_samples.csv.gz --out fitness.parquet
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--keypoints", type=Path, metavar="DIR", help="folder of <stem>.frames.jsonl files")
    source.add_argument("--body25", type=Path, metavar="FILE.csv", help="or a BODY-25 table of labeled poses")
    source.add_argument(
        "--blazepose", type=Path, metavar="FILE.csv", help="or a BlazePose landmark table of labeled poses"
    )
    parser.add_argument(
        "--annotations", type=Path, metavar="DIR", help="folder (or file) of .json/.csv annotations"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="FILE.csv or FILE.parquet")
    parser.add_argument(
        "--labels", type=Path, metavar="FILE", help='label mapping TOML: [columns] col = ["Label"]'
    )
    parser.add_argument(
        "--label", action="append", default=[], metavar="LABEL=COL", help="map a label (repeatable)"
    )
    parser.add_argument(
        "--strategy", default="none", choices=list(STRATEGIES), help="how rows are cut (none)"
    )
    parser.add_argument("--window", type=int, metavar="W", help="window size in frames")
    parser.add_argument("--stride", type=int, metavar="S", help="frames between window starts")
    parser.add_argument("--splitter-label", metavar="COL", help="label column whose runs make clips")
    parser.add_argument("--window-label", metavar="COL", help="label column that labels windows")
    parser.add_argument("--pool", metavar="STATS", help=f"pooled statistics: {','.join(POOLS)}")
    groups = f"feature groups: {','.join(GROUPS)} (default {','.join(DEFAULT_GROUPS)})"
    parser.add_argument("--features", metavar="GROUPS", help=groups)
    parser.add_argument("--z", action="store_true", help="use the z axis too")
    parser.add_argument("--include-unlabeled", action="store_true", help="keep rows without a label")
    rounding = f"round features to N decimals (default {CSV_DECIMALS} for CSV, none for Parquet)"
    parser.add_argument("--decimals", type=int, metavar="N", help=rounding)
    parser.add_argument("--workers", type=int, metavar="N", help="parallel processes (default: one per core)")
    parser.add_argument(
        "--skip-unknown-videos", action="store_true", help="ignore annotations of videos without keypoints"
    )
    parser.add_argument("--ignore-unmapped-labels", action="store_true", help="ignore labels no column takes")


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(n.strip() for n in text.split(",") if n.strip())


def config_from_args(args: argparse.Namespace) -> DatasetConfig:
    mapping = LabelMapping.load(args.labels) if args.labels else LabelMapping()
    return DatasetConfig(
        strategy=args.strategy,
        window=args.window,
        stride=args.stride,
        splitter_label=args.splitter_label,
        window_label=args.window_label,
        pool=_names(args.pool),
        groups=_names(args.features) if args.features is not None else DEFAULT_GROUPS,
        z=args.z,
        include_unlabeled=args.include_unlabeled,
        decimals=args.decimals,
        mapping=mapping.merged(LabelMapping.parse(args.label)),
        policy=ValidationPolicy(args.skip_unknown_videos, args.ignore_unmapped_labels),
    )


def _print_issues(issues: Sequence[Issue]) -> None:
    for issue in issues:
        print(f"trainer dataset: {issue.severity}: {issue}", file=sys.stderr)


def _print_summary(result: DatasetResult) -> None:
    meta = result.meta
    print(
        f"wrote {meta['rows']} rows x {len(meta['feature_columns'])} features to {result.path} and "
        f"{meta_path(result.path).name} (sources: {len(meta['sources'])}, frames: {meta['frames']})"
    )
    if result.skipped_runs:
        print(f"skipped {result.skipped_runs} runs shorter than the window")
    cells = [
        (column, "(no label)" if label is None else label, count)
        for column, counts in result.summary.items()
        for label, count in counts.items()
    ]
    wide_column = max([len("column"), *(len(c) for c, _, _ in cells)])
    wide_label = max([len("label"), *(len(label) for _, label, _ in cells)])
    print(f"{'column':<{wide_column}}  {'label':<{wide_label}}  {'rows':>8}")
    for column, label, count in cells:
        print(f"{column:<{wide_column}}  {label:<{wide_label}}  {count:>8}")


def run(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: expected at least 1")
    try:
        config = config_from_args(args)
        kind = next((kind for kind in POSE_TABLES if getattr(args, kind) is not None), None)
        if kind is not None:
            if args.annotations:
                name = POSE_TABLES[kind].name
                raise DatasetError(f"--annotations: a {name} table carries its labels; leave it out")
            result = build_pose_table_dataset(getattr(args, kind), args.out, config, kind)
        else:
            if not args.annotations:
                raise DatasetError("--keypoints needs --annotations DIR")
            result = build_dataset(
                args.keypoints, args.annotations, args.out, config, args.workers, progress=True
            )
    except ValidationError as exc:
        _print_issues(exc.report.warnings + exc.report.errors[1:])
        raise UsageError(str(exc)) from exc
    except (AnnotationError, DatasetError, FeatureSpecError) as exc:
        raise UsageError(str(exc)) from exc
    _print_issues(result.report.warnings)
    if note := copy_note(result.keypoints, args.keypoints):
        print(f"trainer dataset: note: {note}", file=sys.stderr)
    _print_summary(result)
    return ExitStatus.OK


COMMAND = Command(
    description=DESCRIPTION,
    add_arguments=add_arguments,
    run=run,
)
