"""Dataset building throughput: reading, features + rows, and writing, timed apart.

A project of 100 keypoint files x 382 frames (the squats reference landmarks laid over the
example video's frame count, each with a copy of the seed's real annotation file, and the
columnar copy ``trainer extract`` writes beside each) goes through ``trainer dataset`` for the
strategies ``none`` and ``flatten_into_columns`` (W = 10). Each stage is timed on its own, in
one process, through the same functions the command uses; the whole command last, once reading
the columnar copies and once with them removed (the JSONL parsed, in worker processes as the
command then chooses). Reading has two baselines in the same run: the columnar copies against
pyarrow's JSON reader, and that against the stdlib JSON reader (``device.keypoints``). The whole
command against the seed's own code is :mod:`benchmarks.seed_bench`.

The detail output also times reading one file's keypoints in the formats the columnar copy could
have had (Arrow IPC, ``.npz``, Parquet): the measurement behind :mod:`trainer.frame_columns`.

Run: ``python -m benchmarks dataset`` (``python -m benchmarks table`` shows it with the others).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import command
from benchmarks.rows import Row, render_text
from benchmarks.samples import DATA, reference_points
from benchmarks.timing import timed
from device.annotations import LabelMapping
from device.keypoints import KeypointSequence, read_keypoints, sequence_records, write_frames_jsonl
from trainer.dataset import (
    DatasetConfig,
    Rows,
    VideoJob,
    build_dataset,
    plan_jobs,
    video_result,
    write_dataset,
)
from trainer.frame_columns import COLUMNS_SUFFIX, columns_path, read_keypoint_file, write_columns
from trainer.frame_files import read_frames

MAPPING = Path(__file__).resolve().parents[1] / "examples" / "example_video.labels.toml"


def configs(mapping: LabelMapping) -> dict[str, DatasetConfig]:
    """The strategies measured, by the name the rows give them."""
    return {
        "none": DatasetConfig(mapping=mapping),
        "flatten_into_columns W=10": DatasetConfig(
            "flatten_into_columns", window=10, window_label="step_type", mapping=mapping
        ),
    }


def make_project(root: Path, files: int, frames: int) -> tuple[Path, Path]:
    """``root/keypoints`` with ``files`` frame files (and their columnar copies, as extraction
    writes them) and ``root/annotations`` with one JSON file each."""
    keypoints, annotations = root / "keypoints", root / "annotations"
    keypoints.mkdir(parents=True)
    annotations.mkdir()
    sequence = KeypointSequence(
        "sample",
        np.arange(1, frames + 1),
        np.arange(frames) * 1000 / 30,
        np.tile([[720, 1280]], (frames, 1)),
        reference_points(frames),
    )
    sample = keypoints / "video000.frames.jsonl"
    write_frames_jsonl(sequence_records(sequence), sample)
    write_columns(sample)
    seed = json.loads((DATA / "annotations" / "example_video.json").read_text())
    for i in range(files):
        stem = f"video{i:03d}"
        if i:  # same bytes, their own names
            os.link(sample, keypoints / f"{stem}.frames.jsonl")
            os.link(columns_path(sample), keypoints / f"{stem}{COLUMNS_SUFFIX}")
        (annotations / f"{stem}.json").write_text(json.dumps({**seed, "name": f"{stem}.webm"}))
    return keypoints, annotations


def read_all(jobs: list[VideoJob], reader: Callable[[Path], KeypointSequence]) -> list[KeypointSequence]:
    return [reader(job.path) for job in jobs]


def read_copy(path: Path) -> KeypointSequence:
    return read_keypoint_file(path)[0]


def rows_of(jobs: list[VideoJob], sequences: list[KeypointSequence]) -> Rows:
    return Rows.concat([video_result(job, seq).rows for job, seq in zip(jobs, sequences, strict=True)])


def format_choice(sequence: KeypointSequence, frames_file: Path, folder: Path) -> dict[str, float]:
    """Milliseconds to read one file's arrays back, per format the columnar copy could have had,
    beside the copy as the builder reads it (checksum and fingerprint included) and the JSONL."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    arrays = {
        "frame_numbers": sequence.frame_numbers,
        "timestamps_ms": sequence.timestamps_ms,
        "sizes": sequence.sizes,
        "points": sequence.points,
    }
    np.savez(folder / "choice.npz", **arrays)
    table = pa.table({k: pa.array(list(v.reshape(len(sequence), -1))) for k, v in arrays.items()})
    pq.write_table(table, folder / "choice.parquet")
    copy = columns_path(frames_file)

    def arrow() -> None:
        read = ipc.open_file(pa.py_buffer(copy.read_bytes())).read_all()
        [column.combine_chunks().flatten().to_numpy() for column in read.columns[4:]]
        [column.to_numpy() for column in read.columns[:4]]

    def npz() -> None:
        with np.load(folder / "choice.npz", allow_pickle=False) as z:
            [z[name] for name in z.files]

    def parquet() -> None:
        read = pq.read_table(folder / "choice.parquet")
        [np.stack(read.column(k).to_numpy(zero_copy_only=False)) for k in arrays]

    candidates = {
        "Arrow IPC": arrow,
        ".npz": npz,
        "Parquet": parquet,
        "Arrow IPC, checked (the copy)": lambda: read_copy(frames_file),
        "JSONL, pyarrow's reader": lambda: read_frames(frames_file),
    }
    return {name: timed(read, repeat=20)[1] * 1000 for name, read in candidates.items()}


@dataclass(frozen=True)
class Stage:
    name: str
    seconds: float
    rows: int = 0


@dataclass(frozen=True)
class DatasetNumbers:
    files: int
    frames: int  # in the whole project
    stages: list[Stage]
    read_json_frames_per_s: float
    read_frames_per_s: float
    read_copies_frames_per_s: float
    build_frames_per_s: dict[str, float]  # strategy -> whole command, columnar copies
    build_jsonl_frames_per_s: dict[str, float]  # strategy -> whole command, JSONL only
    formats_ms: dict[str, float]

    def rows(self) -> list[Row]:
        size = f"{self.files} x {self.frames // self.files} frames"
        rows = [
            Row(
                "dataset",
                f"read keypoint files, columnar copies ({size})",
                self.read_copies_frames_per_s,
                "frames/s",
                self.read_frames_per_s,
                "the JSONL, pyarrow's reader",
            ),
            Row(
                "dataset",
                f"read keypoint files, JSONL with pyarrow ({size})",
                self.read_frames_per_s,
                "frames/s",
                self.read_json_frames_per_s,
                "stdlib json reader",
            ),
        ]
        for strategy, per_s in self.build_frames_per_s.items():
            rows.append(
                Row(
                    "dataset",
                    f"whole `trainer dataset`, {strategy}, CSV, columnar copies",
                    per_s,
                    "frames/s",
                    self.build_jsonl_frames_per_s[strategy],
                    "the same from the JSONL",
                )
            )
        return rows


def measure(files: int = 100, frames_per_file: int = 382) -> DatasetNumbers:
    """Every stage on its own, then the whole command with and without the columnar copies."""
    mapping = LabelMapping.load(MAPPING)
    frames = files * frames_per_file
    stages: list[Stage] = []
    build: dict[str, float] = {}
    build_jsonl: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="dataset-bench-") as tmp:
        keypoints, annotations = make_project(Path(tmp), files, frames_per_file)
        _, jobs, _ = plan_jobs(keypoints, annotations, configs(mapping)["none"])
        _, json_s = timed(read_all, jobs, read_keypoints)
        stages.append(Stage("read keypoints, json (device.keypoints, baseline)", json_s))
        sequences, read_s = timed(read_all, jobs, read_frames)
        stages.append(Stage("read keypoints, pyarrow (trainer.frame_files)", read_s))
        _, copies_s = timed(read_all, jobs, read_copy, repeat=3)
        stages.append(Stage("read keypoints, columnar copies (trainer.frame_columns)", copies_s))
        formats = format_choice(sequences[0], jobs[0].path, Path(tmp))

        for name, config in configs(mapping).items():
            plan, jobs, _ = plan_jobs(keypoints, annotations, config)
            rows, rows_s = timed(rows_of, jobs, sequences, repeat=3)
            stages.append(Stage(f"{name}: features + rows", rows_s, len(rows)))
            sources = [j.video_id for j in jobs]
            for suffix in (".csv", ".parquet"):
                out = Path(tmp) / f"out{suffix}"
                _, write_s = timed(write_dataset, out, rows, plan, sources, frames, repeat=3)
                stages.append(Stage(f"{name}: write {suffix[1:]}", write_s, len(rows)))
            _, build_s = timed(build_dataset, keypoints, annotations, Path(tmp) / "end.csv", config, repeat=3)
            stages.append(Stage(f"{name}: whole command, csv, columnar copies", build_s, len(rows)))
            build[name] = frames / build_s
        for copy in keypoints.glob(f"*{COLUMNS_SUFFIX}"):
            copy.unlink()
        for name, config in configs(mapping).items():
            _, build_s = timed(build_dataset, keypoints, annotations, Path(tmp) / "end.csv", config)
            stages.append(Stage(f"{name}: whole command, csv, JSONL only", build_s))
            build_jsonl[name] = frames / build_s
    reads = (frames / json_s, frames / read_s, frames / copies_s)
    return DatasetNumbers(files, frames, stages, *reads, build, build_jsonl, formats)


def main(argv: list[str] | None = None) -> int:
    command("dataset", __doc__).parse_args(argv)
    numbers = measure()
    print(f"Dataset building: {numbers.files} files, {numbers.frames:,} frames, default features")
    print(f"  {'stage':<56} {'seconds':>8} {'rows':>7} {'frames/s':>11}")
    for stage in numbers.stages:
        per_s = numbers.frames / stage.seconds
        print(f"  {stage.name:<56} {stage.seconds:>8.3f} {stage.rows or '':>7} {per_s:>11,.0f}")
    print()
    print(f"Reading one file's keypoints ({numbers.frames // numbers.files} frames), per format of the copy:")
    for name, ms in numbers.formats_ms.items():
        print(f"  {name:<30} {ms:8.3f} ms")
    print()
    print(render_text(numbers.rows()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
