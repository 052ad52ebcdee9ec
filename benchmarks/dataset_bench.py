"""Dataset building throughput: reading, features + rows, and writing, timed apart.

A project of 100 keypoint files x 382 frames (the squats reference landmarks laid over the
example video's frame count, each with a copy of the seed's real annotation file) goes through
``trainer dataset`` for the strategies ``none`` and ``flatten_into_columns`` (W = 10). Each stage
is timed on its own, in one process, through the same functions the command uses; the whole
command (worker processes included) is timed last. The baseline for reading is the stdlib JSON
reader (``device.keypoints``) in the same run; for building, the seed's published figures (~1,300
frames/s end to end, 3,800-4,300 frames/s features + table), which cannot be re-run here.

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
from trainer.frame_files import read_frames

MAPPING = Path(__file__).resolve().parents[1] / "examples" / "example_video.labels.toml"
SEED_BUILD_FRAMES_PER_S = 1_300
SEED_FORMAT_FRAMES_PER_S = 4_300  # the better end of the seed's 3,800-4,300
STRATEGIES = ("none", "flatten_into_columns W=10")


def make_project(root: Path, files: int, frames: int) -> tuple[Path, Path]:
    """``root/keypoints`` with ``files`` frame files and ``root/annotations`` with one JSON file each."""
    keypoints, annotations = root / "keypoints", root / "annotations"
    keypoints.mkdir()
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
    seed = json.loads((DATA / "annotations" / "example_video.json").read_text())
    for i in range(files):
        stem = f"video{i:03d}"
        if i:
            os.link(sample, keypoints / f"{stem}.frames.jsonl")  # same bytes, its own name
        (annotations / f"{stem}.json").write_text(json.dumps({**seed, "name": f"{stem}.webm"}))
    return keypoints, annotations


def read_all(jobs: list[VideoJob], reader: Callable[[Path], KeypointSequence]) -> list[KeypointSequence]:
    return [reader(job.path) for job in jobs]


def rows_of(jobs: list[VideoJob], sequences: list[KeypointSequence]) -> Rows:
    return Rows.concat([video_result(job, seq).rows for job, seq in zip(jobs, sequences, strict=True)])


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
    build_frames_per_s: dict[str, float]  # strategy -> whole command, best worker count
    format_frames_per_s: dict[str, float]  # strategy -> features + rows + CSV, in one process

    def rows(self) -> list[Row]:
        rows = [
            Row(
                "dataset",
                f"read keypoint files, pyarrow ({self.files} x {self.frames // self.files} frames)",
                self.read_frames_per_s,
                "frames/s",
                self.read_json_frames_per_s,
                "stdlib json reader",
            )
        ]
        for strategy in STRATEGIES:
            rows.append(
                Row(
                    "dataset",
                    f"whole `trainer dataset`, {strategy}, CSV",
                    self.build_frames_per_s[strategy],
                    "frames/s",
                    SEED_BUILD_FRAMES_PER_S,
                    "the seed",
                    same_run=False,
                )
            )
            rows.append(
                Row(
                    "dataset",
                    f"features + rows + CSV, {strategy}, one process",
                    self.format_frames_per_s[strategy],
                    "frames/s",
                    SEED_FORMAT_FRAMES_PER_S,
                    "the seed's formatting",
                    same_run=False,
                )
            )
        return rows


def measure(files: int = 100, frames_per_file: int = 382) -> DatasetNumbers:
    """Every stage on its own, then the whole command with one and with all worker processes."""
    mapping = LabelMapping.load(MAPPING)
    configs = {
        "none": DatasetConfig(mapping=mapping),
        "flatten_into_columns W=10": DatasetConfig(
            "flatten_into_columns", window=10, window_label="step_type", mapping=mapping
        ),
    }
    frames = files * frames_per_file
    stages: list[Stage] = []
    build: dict[str, float] = {}
    fmt: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="dataset-bench-") as tmp:
        keypoints, annotations = make_project(Path(tmp), files, frames_per_file)
        _, jobs, _ = plan_jobs(keypoints, annotations, configs["none"])
        _, json_s = timed(read_all, jobs, read_keypoints)
        stages.append(Stage("read keypoints, json (device.keypoints, baseline)", json_s))
        sequences, read_s = timed(read_all, jobs, read_frames)
        stages.append(Stage("read keypoints, pyarrow (trainer.frame_files)", read_s))

        for name, config in configs.items():
            plan, jobs, _ = plan_jobs(keypoints, annotations, config)
            rows, rows_s = timed(rows_of, jobs, sequences, repeat=3)
            stages.append(Stage(f"{name}: features + rows", rows_s, len(rows)))
            sources = [j.video_id for j in jobs]
            for suffix in (".csv", ".parquet"):
                out = Path(tmp) / f"out{suffix}"
                _, write_s = timed(write_dataset, out, rows, plan, sources, frames, repeat=3)
                stages.append(Stage(f"{name}: write {suffix[1:]}", write_s, len(rows)))
                if suffix == ".csv":
                    fmt[name] = frames / (rows_s + write_s)
            for workers in dict.fromkeys((1, os.cpu_count() or 1)):
                _, build_s = timed(
                    build_dataset, keypoints, annotations, Path(tmp) / "end.csv", config, workers
                )
                stages.append(Stage(f"{name}: whole command, csv, {workers} process(es)", build_s, len(rows)))
                build[name] = max(build.get(name, 0.0), frames / build_s)
    return DatasetNumbers(files, frames, stages, frames / json_s, frames / read_s, build, fmt)


def main(argv: list[str] | None = None) -> int:
    command("dataset", __doc__).parse_args(argv)
    numbers = measure()
    print(f"Dataset building: {numbers.files} files, {numbers.frames:,} frames, default features")
    print(f"  {'stage':<56} {'seconds':>8} {'rows':>7} {'frames/s':>11}")
    for stage in numbers.stages:
        per_s = numbers.frames / stage.seconds
        print(f"  {stage.name:<56} {stage.seconds:>8.3f} {stage.rows or '':>7} {per_s:>11,.0f}")
    print()
    print(render_text(numbers.rows()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
