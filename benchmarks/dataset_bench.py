"""Dataset building throughput: reading, features + rows, and writing, timed apart.

A project of 100 keypoint files x 382 frames (the squats reference landmarks laid over the
example video's frame count, each with a copy of the seed's real annotation file) goes through
``trainer dataset`` for the strategies ``none`` and ``flatten_into_columns`` (W = 10). Each stage
is timed on its own, in one process, through the same functions the command uses; the whole
command (worker processes included) is timed last. The seed built ~1,300 frames/s end to end and
formatted (features + table) 3,800-4,300 frames/s; these numbers are the reference for the ratios.

Run: ``python -m benchmarks.dataset_bench`` (or ``make bench`` for every benchmark).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from device.keypoints import (
    KeypointSequence,
    empty_points,
    read_keypoints,
    sequence_records,
    write_frames_jsonl,
)
from trainer.annotations import LabelMapping
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

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MAPPING = Path(__file__).resolve().parents[1] / "examples" / "example_video.labels.toml"
FILES, FRAMES = 100, 382
SEED_BUILD_FRAMES_PER_S = 1_300
SEED_FORMAT_FRAMES_PER_S = 4_300  # the better end of the seed's 3,800-4,300
T = TypeVar("T")


def make_project(root: Path) -> tuple[Path, Path]:
    """``root/keypoints`` with FILES frame files and ``root/annotations`` with one JSON file each."""
    ref = np.array(json.loads((DATA / "keypoints" / "squats.reference_blazepose.json").read_text()))
    points = empty_points(len(ref))
    points[:, :, :3] = ref
    points[:, :, 3:] = 1.0
    points = np.tile(points, (-(-FRAMES // len(ref)), 1, 1))[:FRAMES]
    keypoints, annotations = root / "keypoints", root / "annotations"
    keypoints.mkdir()
    annotations.mkdir()
    sequence = KeypointSequence(
        "sample",
        np.arange(1, FRAMES + 1),
        np.arange(FRAMES) * 1000 / 30,
        np.tile([[720, 1280]], (FRAMES, 1)),
        points,
    )
    sample = keypoints / "video000.frames.jsonl"
    write_frames_jsonl(sequence_records(sequence), sample)
    seed = json.loads((DATA / "annotations" / "example_video.json").read_text())
    for i in range(FILES):
        stem = f"video{i:03d}"
        if i:
            os.link(sample, keypoints / f"{stem}.frames.jsonl")  # same bytes, its own name
        (annotations / f"{stem}.json").write_text(json.dumps({**seed, "name": f"{stem}.webm"}))
    return keypoints, annotations


def timed(fn: Callable[..., T], *args: object, repeat: int = 1) -> tuple[T, float]:
    """The result and the best wall time of ``repeat`` calls (the least disturbed by other work)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return result, best


def read_all(jobs: list[VideoJob], reader: Callable[[Path], KeypointSequence]) -> list[KeypointSequence]:
    return [reader(job.path) for job in jobs]


def rows_of(jobs: list[VideoJob], sequences: list[KeypointSequence]) -> Rows:
    return Rows.concat([video_result(job, seq).rows for job, seq in zip(jobs, sequences, strict=True)])


def main() -> dict[str, float]:
    mapping = LabelMapping.load(MAPPING)
    configs = {
        "none": DatasetConfig(mapping=mapping),
        "flatten_into_columns W=10": DatasetConfig(
            "flatten_into_columns", window=10, window_label="step_type", mapping=mapping
        ),
    }
    frames = FILES * FRAMES
    results: dict[str, float] = {}
    lines: list[tuple[str, float, int]] = []  # stage, seconds, rows

    with tempfile.TemporaryDirectory(prefix="dataset-bench-") as tmp:
        keypoints, annotations = make_project(Path(tmp))
        _, jobs, _ = plan_jobs(keypoints, annotations, configs["none"])
        _, reference_s = timed(read_all, jobs, read_keypoints)
        lines.append(("read keypoints, json (device.keypoints, baseline)", reference_s, 0))
        sequences, read_s = timed(read_all, jobs, read_frames)
        lines.append(("read keypoints, pyarrow (trainer.frame_files)", read_s, 0))
        results["read_frames_per_s"] = frames / read_s

        for name, config in configs.items():
            plan, jobs, _ = plan_jobs(keypoints, annotations, config)
            rows, rows_s = timed(rows_of, jobs, sequences, repeat=3)
            lines.append((f"{name}: features + rows", rows_s, len(rows)))
            for suffix in (".csv", ".parquet"):
                out = Path(tmp) / f"out{suffix}"
                sources = [j.video_id for j in jobs]
                _, write_s = timed(write_dataset, out, rows, plan, sources, frames, repeat=3)
                lines.append((f"{name}: write {suffix[1:]}", write_s, len(rows)))
                results[f"{name} {suffix[1:]} format_frames_per_s"] = frames / (rows_s + write_s)
            for workers in dict.fromkeys((1, os.cpu_count() or 1)):
                _, build_s = timed(
                    build_dataset, keypoints, annotations, Path(tmp) / "end.csv", config, workers
                )
                lines.append((f"{name}: whole command, csv, {workers} process(es)", build_s, len(rows)))
                results[f"{name} build_frames_per_s {workers} workers"] = frames / build_s

    print(f"Dataset building: {FILES} files x {FRAMES} frames = {frames:,} frames, default features")
    print(f"  {'stage':<56} {'seconds':>8} {'rows':>7} {'frames/s':>11}")
    for stage, seconds, rows in lines:
        print(f"  {stage:<56} {seconds:>8.3f} {rows or '':>7} {frames / seconds:>11,.0f}")
    seed = f"build {SEED_BUILD_FRAMES_PER_S:,} frames/s, features + table ~{SEED_FORMAT_FRAMES_PER_S:,}"
    print(f"  seed: {seed}")
    for name in configs:
        build = max(v for k, v in results.items() if k.startswith(f"{name} build_frames_per_s"))
        fmt = results[f"{name} csv format_frames_per_s"]
        print(
            f"  {name}: whole command {build / SEED_BUILD_FRAMES_PER_S:,.1f}x the seed (reading bound); "
            f"features + rows + CSV {fmt / SEED_FORMAT_FRAMES_PER_S:,.0f}x the seed's formatting"
        )
    return results


if __name__ == "__main__":
    main()
