"""The seed's own code beside ours, in the same run, on the same keypoint files.

``make bench-seed`` installs the seed (``stream-pose-ml==0.3.1`` from PyPI, with its own pins of
numpy, pandas, scikit-learn, mlflow ...) into its own virtualenv, ``.cache/seed-venv``. This
benchmark runs the seed's code there, as a subprocess (:mod:`benchmarks.seed_side`, which reports
JSON timings; the seed is never imported here), and ours here, alternately, on the same files:

- **real-time window path**, per 30-frame window: the seed's ``run_keypoint_pipeline`` (one new
  frame's landmarks serialized, the window through ``BlazePoseSequence`` with geometry, its
  serializer and a ``SequenceTransformer`` to the model's input row; ``predict`` left out), with
  ``TenFrameFlatColumnAngleTransformer`` (angles and distances, flattened) and
  ``MLFlowTransformer`` (joint coordinates, flattened); ours computes the same kind of row from
  the window's keypoints: the ``seed`` preset's angles and distances, or the normalized joint
  coordinates, flattened over the 30 frames (:func:`device.features.window_features`);
- **per-frame geometry**: the seed's sequence classes over a whole video (what its
  ``VideoDataService`` runs after MediaPipe) against our :class:`FeatureEngine` with the
  ``seed`` preset on the same frames;
- **dataset**: the seed's ``build_dataset_from_data_files`` + ``format_dataset`` (strategies
  ``none`` and ``flatten_into_columns`` W = 10, one row per frame or window, not pooled) +
  ``write_dataset_to_csv``, against our whole ``trainer dataset`` (``build_dataset``) writing CSV;
  and writing Parquet (``none``), against the seed's build + format alone (its rows left in
  memory: CSV is its only output format); on projects of 10 and 100 videos of 382 frames (the
  squats landmarks over the example video's length, each with the seed's real annotation file,
  as ``python -m benchmarks dataset`` makes them). The seed reads the sequence files its
  ``VideoDataService`` writes (geometry already in them), made from the same frame files before
  timing; ours reads the columnar copies that ``trainer extract`` writes and computes every
  feature.

Comparable outputs are checked before anything counts: both sides read the same number of
frames; and the seed's 2D angles of the first window are compared with ours (``seed`` preset)
computed on the coordinates the seed works in (x / width, y / height): every angle both define
the same way must agree within 1e-6 degrees, or the benchmark stops. (Ours measures in pixels,
the seed in image-relative units; its distances use another formula and are not compared.) Row
counts are printed beside the times: for ``none`` both keep the same frames here (the seed keeps
frames labelled in every column, ours in any, and the example's two columns are labelled alike);
the seed's windows end on frames 11, 21, ..., ours on 10, 20, ..., so ``flatten_into_columns``
gives it a window or two more per video.

Without the seed's virtualenv the rows fall back to the seed's published figures, marked so.

Run: ``python -m benchmarks seed`` (``python -m benchmarks table`` shows it with the others).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import command
from benchmarks.rows import Row, render_text

if TYPE_CHECKING:  # numpy and the trainer are imported when measuring, not for --help
    import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEED_PYTHON = REPO / ".cache" / "seed-venv" / "bin" / "python"
SEED_SIDE = Path(__file__).with_name("seed_side.py")
WINDOW = 30
VIDEOS = (10, 100)
STRATEGIES: dict[str, dict[str, object]] = {
    "none": {},
    "flatten_into_columns W=10": {
        "segmentation_strategy": "flatten_into_columns",
        "segmentation_window": 10,
        "segmentation_window_label": "step_type",
    },
}
"""The seed's ``format_dataset`` options per strategy; ours are in :data:`benchmarks.dataset_bench`."""
KINDS = {
    "angles": ("angles + distances (TenFrameFlatColumnAngleTransformer)", ("seed",)),
    "joints": ("joint coordinates (MLFlowTransformer)", ("normalized",)),
}
"""Window rows: the seed's transformer, and our feature groups that make the same kind of row."""
# The seed's published figures (FACTS.md), for a machine without its virtualenv.
PUBLISHED_MS_PER_WINDOW = 938.0  # the better end of 938-1,490 ms
PUBLISHED_GEOMETRY_FRAMES_PER_S = 100.0
PUBLISHED_BUILD_FRAMES_PER_S, PUBLISHED_FORMAT_FRAMES_PER_S = 1_300.0, 4_300.0
OUTPUTS = {".csv": "CSV", ".parquet": "Parquet"}
"""Ours writes both (the seed only CSV): against Parquet, the seed's figure leaves writing out."""
ANGLE_TOLERANCE_DEG = 1e-6
SEED_TIMEOUT_S = 1800.0


class SeedError(RuntimeError):
    """The seed's side failed or computed something not comparable with ours."""


def seed_available() -> bool:
    return SEED_PYTHON.is_file()


class SeedSide:
    """The seed's code, run by :mod:`benchmarks.seed_side` in its own virtualenv."""

    measured = True

    def __init__(self, work: Path) -> None:
        self.work = work

    def run(self, request: dict) -> dict:
        """One run of the seed's side; its JSON result."""
        request_path, result_path = self.work / "request.json", self.work / "result.json"
        request_path.write_text(json.dumps(request))
        done = subprocess.run(
            [str(SEED_PYTHON), str(SEED_SIDE), str(request_path), str(result_path)],
            capture_output=True,
            text=True,
            timeout=SEED_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise SeedError(
                f"the seed's side ({request['mode']}) failed with status {done.returncode}: {last}"
            )
        return json.loads(result_path.read_text())

    def window(self, keypoints_file: Path, frames: int, windows: int) -> dict:
        return self.run(
            {"mode": "window", "keypoints_file": str(keypoints_file), "window": WINDOW, "windows": windows}
        )

    def dataset(
        self, keypoints: Path, annotations: Path, mapping: dict[str, str], videos: int, frames: int
    ) -> dict:
        seed_work = keypoints.parent / "seed"
        seed_work.mkdir()
        request = {
            "mode": "dataset",
            "keypoints": str(keypoints),
            "annotations": str(annotations),
            "work": str(seed_work),
            "mapping": mapping,
            "strategies": STRATEGIES,
        }
        return self.run(request)


class PublishedSeed:
    """The seed's published figures in the shape of :class:`SeedSide`'s results, for a machine
    without its virtualenv: nothing of the seed runs, and nothing is checked against it."""

    measured = False

    def window(self, keypoints_file: Path, frames: int, windows: int) -> dict:
        window_s = PUBLISHED_MS_PER_WINDOW / 1000
        return {
            "frames": frames,
            "geometry_s": frames / PUBLISHED_GEOMETRY_FRAMES_PER_S,
            "window_s": dict.fromkeys(KINDS, window_s),
            "window_columns": dict.fromkeys(KINDS, "?"),
            "first_window_angles": None,
        }

    def dataset(
        self, keypoints: Path, annotations: Path, mapping: dict[str, str], videos: int, frames: int
    ) -> dict:
        return {
            "videos": videos,
            "frames": frames,
            "build_s": frames / PUBLISHED_BUILD_FRAMES_PER_S,
            "format_s": dict.fromkeys(STRATEGIES, frames / PUBLISHED_FORMAT_FRAMES_PER_S),  # CSV included
            "csv_s": dict.fromkeys(STRATEGIES, 0.0),
            "rows": dict.fromkeys(STRATEGIES, "?"),
            "max_rss_mb": float("nan"),
        }


@dataclass(frozen=True)
class Pair:
    """One measure, ours and the seed's, both as rates (so that ours / seed is a speed-up)."""

    measure: str
    unit: str
    ours: float
    seed: float
    seed_does: str = "the seed"  # what the seed's figure covers, when it is not the same work


@dataclass
class SeedNumbers:
    measured: bool  # False: the seed's published figures stand in
    pairs: list[Pair] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def rows(self) -> list[Row]:
        how = "same run" if self.measured else "`make bench-seed` measures it"
        return [
            Row("seed", p.measure, p.ours, p.unit, p.seed, f"{p.seed_does}, {how}", same_run=self.measured)
            for p in self.pairs
        ]


def check_angles(seed_angles: dict[str, list[float | None]], points: np.ndarray, sizes: np.ndarray) -> str:
    """Our ``seed`` preset's 2D angles against the seed's on the same window; raises when they differ."""
    import numpy as np

    from device.features import FeatureEngine, FeatureSpec
    from device.keypoints import X, Y, Z

    relative = points.copy()  # the seed's units: MediaPipe's image-relative coordinates
    relative[..., X] /= sizes[:, None, 1]
    relative[..., Y] /= sizes[:, None, 0]
    relative[..., Z] /= sizes[:, None, 1]
    engine = FeatureEngine(FeatureSpec.from_groups(("seed",)))
    ours = dict(zip(engine.names, engine.compute(relative).T, strict=True))
    # the seed stores its left forearm under the right forearm's name: angles using it differ by design
    shared = [n for n in seed_angles if f"seed.angle.{n}" in ours and "right_elbow_right_wrist" not in n]
    if not shared:
        raise SeedError("the seed's angles and ours have no names in common: not comparable")
    theirs = {n: np.array(seed_angles[n], dtype=float) for n in shared}  # None (nobody in view) -> NaN
    worst = max(float(np.nanmax(np.abs(ours[f"seed.angle.{n}"] - theirs[n]))) for n in shared)
    if worst > ANGLE_TOLERANCE_DEG:
        raise SeedError(f"the seed's angles and ours differ by up to {worst:.3g} degrees: not comparable")
    return (
        f"check: {len(shared)} angles x {len(points)} frames agree with the seed's within {worst:.1e} degrees"
    )


def measure_windows(
    seed: SeedSide | PublishedSeed, keypoints_file: Path, windows: int, numbers: SeedNumbers
) -> None:
    """The per-window path and per-frame geometry, ours and the seed's, on one frame file."""
    import numpy as np

    from benchmarks.timing import timed
    from device.features import FeatureEngine, FeatureSpec, WindowSpec, window_features
    from trainer.frame_columns import read_keypoint_file

    sequence, _ = read_keypoint_file(keypoints_file)
    theirs = seed.window(keypoints_file, len(sequence), windows)
    if theirs["frames"] != len(sequence):
        raise SeedError(f"the seed read {theirs['frames']} frames, we read {len(sequence)}")
    if theirs["first_window_angles"] is not None:
        window_sizes = sequence.sizes[:WINDOW]
        numbers.details.append(
            check_angles(theirs["first_window_angles"], sequence.points[:WINDOW], window_sizes)
        )
    flat = WindowSpec(WINDOW, WINDOW, flatten=True, pool=())
    window_points = np.ascontiguousarray(sequence.points[:WINDOW])
    repeat = 200
    for kind, (label, groups) in KINDS.items():
        engine = FeatureEngine(FeatureSpec.from_groups(groups))

        def rows(engine: FeatureEngine = engine) -> list[np.ndarray]:
            return [window_features(engine.compute(window_points), flat) for _ in range(repeat)]

        _, seconds = timed(rows, repeat=3)
        per_s = 1 / theirs["window_s"][kind]
        numbers.pairs.append(
            Pair(f"real-time path per {WINDOW}-frame window, {label}", "windows/s", repeat / seconds, per_s)
        )
        columns = rows()[0].shape[1]
        numbers.details.append(
            f"model input, {kind}: ours {columns} columns, the seed's {theirs['window_columns'][kind]}"
        )
    engine = FeatureEngine(FeatureSpec.from_groups(("seed",)))
    _, seconds = timed(engine.compute, sequence.points, repeat=5)
    measure = f"per-frame geometry, the seed's angles and distances ({len(sequence)} frames)"
    numbers.pairs.append(
        Pair(measure, "frames/s", len(sequence) / seconds, theirs["frames"] / theirs["geometry_s"])
    )


def measure_datasets(
    seed: SeedSide | PublishedSeed,
    videos: tuple[int, ...],
    frames_per_file: int,
    work: Path,
    numbers: SeedNumbers,
) -> None:
    """The whole dataset command, ours and the seed's build + format + CSV, per project size and strategy."""
    from benchmarks.dataset_bench import MAPPING, configs, make_project
    from benchmarks.timing import timed
    from device.annotations import LabelMapping
    from trainer.dataset import build_dataset

    mapping = LabelMapping.load(MAPPING)
    seed_mapping = {label: column for column, labels in mapping.columns.items() for label in labels}
    for count in videos:
        root = work / f"videos-{count}"
        keypoints, annotations = make_project(root, count, frames_per_file)
        frames = count * frames_per_file
        ours: dict[tuple[str, str], tuple[float, int]] = {}
        for (name, config), suffix in itertools.product(configs(mapping).items(), OUTPUTS):
            if suffix == ".csv" or name == "none":
                out = root / f"ours{suffix}"
                result, seconds = timed(build_dataset, keypoints, annotations, out, config, repeat=3)
                ours[name, suffix] = (seconds, result.meta["rows"])
        theirs = seed.dataset(keypoints, annotations, seed_mapping, count, frames)
        if (theirs["videos"], theirs["frames"]) != (count, frames):
            raise SeedError(
                f"the seed read {theirs['videos']} videos, {theirs['frames']} frames; we {count}, {frames}"
            )
        for (name, suffix), (seconds, rows) in ours.items():
            seed_s = theirs["build_s"] + theirs["format_s"][name]
            seed_does = "the seed's build + format, rows in memory"
            if suffix == ".csv":  # the seed's one output format: the same work
                seed_s += theirs["csv_s"][name]
                seed_does = "the seed"
            measure = f"whole `trainer dataset`, {count} videos, {name}, {OUTPUTS[suffix]}"
            numbers.pairs.append(Pair(measure, "frames/s", frames / seconds, frames / seed_s, seed_does))
            numbers.details.append(
                f"{count} videos, {name}, {OUTPUTS[suffix]}: ours {seconds * 1000:.1f} ms, {rows} rows; "
                f"the seed {seed_s:.2f} s (build {theirs['build_s']:.2f} + format "
                f"{theirs['format_s'][name]:.2f} + CSV {theirs['csv_s'][name]:.2f}), "
                f"{theirs['rows'][name]} rows, peak {theirs['max_rss_mb']:.0f} MB"
            )


def measure(videos: tuple[int, ...] = VIDEOS, frames_per_file: int = 382, windows: int = 10) -> SeedNumbers:
    """Ours and the seed's side by side; the seed's published figures when its virtualenv is absent."""
    from benchmarks.dataset_bench import make_project

    with tempfile.TemporaryDirectory(prefix="seed-bench-") as tmp:
        work = Path(tmp)
        seed = SeedSide(work) if seed_available() else PublishedSeed()
        numbers = SeedNumbers(measured=seed.measured)
        if not seed.measured:
            numbers.details.append(
                f"{SEED_PYTHON} is missing: `make bench-seed` installs the seed; "
                "its published figures stand in"
            )
        keypoints, _ = make_project(work / "window", 1, frames_per_file)
        measure_windows(seed, next(keypoints.glob("*.frames.jsonl")), windows, numbers)
        measure_datasets(seed, videos, frames_per_file, work, numbers)
    return numbers


def main(argv: list[str] | None = None) -> int:
    parser = command("seed", __doc__)
    parser.add_argument(
        "--windows", type=int, default=10, help="windows the seed's path is timed over (default 10)"
    )
    args = parser.parse_args(argv)
    if args.windows < 1:
        parser.error("--windows must be at least 1")
    numbers = measure(windows=args.windows)
    print("\n".join(numbers.details))
    print()
    print(render_text(numbers.rows()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
