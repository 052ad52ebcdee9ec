"""Keypoint extraction throughput: ``trainer extract`` on a Dask cluster against the local process pool.

The three sample videos (squats, dance, example_video: 549 frames), each ``--copies`` times
(default 2: six videos, so that two workers have work to share), are extracted four ways, each
into a fresh folder by ``trainer.extract.extract_batch`` (what the command runs): the local
process pool with 1 and 2 processes (the baselines) and a Dask ``LocalCluster`` with 1 and 2
single-threaded worker processes (``--dask local:N``). Times are wall clock for the whole batch as
a user waits for it, start-up included (worker processes importing MediaPipe and the trainer; for
Dask also its scheduler). The four take turns for ``--repeat`` rounds and each keeps its best
time, so that load from other work on the machine does not always hit the same one. Every run's
frame files must be byte-identical to the first run's.

Run: ``python -m benchmarks extract [--copies K] [--repeat R]`` (about five minutes on two cores).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import command
from benchmarks.rows import Row, render_text
from benchmarks.samples import VIDEOS
from device.pose import PoseOptions, offline_task_path
from trainer.cluster import Backend, DaskCluster, LocalPool
from trainer.extract import ExtractOptions, Outcome, extract_batch

WORKERS = (1, 2)


@dataclass(frozen=True)
class ExtractRun:
    backend: str  # "local pool" or "Dask LocalCluster"
    workers: int
    videos: int
    frames: int
    seconds: float  # wall clock of the whole batch, start-up included

    @property
    def videos_per_min(self) -> float:
        return 60 * self.videos / self.seconds

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds


@dataclass(frozen=True)
class ExtractNumbers:
    runs: list[ExtractRun]

    def run(self, backend: str, workers: int) -> ExtractRun:
        return next(r for r in self.runs if (r.backend, r.workers) == (backend, workers))

    def rows(self) -> list[Row]:
        """Each Dask size against the pool of the same size; the 2-process pool against 1 process."""
        one, two = self.run("local pool", 1), self.run("local pool", 2)
        rows = [_row(two, one)]
        rows += [_row(self.run("Dask LocalCluster", n), self.run("local pool", n)) for n in WORKERS]
        return rows


def _name(run: ExtractRun) -> str:
    many = run.workers > 1
    unit = (
        ("processes" if many else "process")
        if run.backend == "local pool"
        else ("workers" if many else "worker")
    )
    return f"{run.backend}, {run.workers} {unit}"


def _row(run: ExtractRun, baseline: ExtractRun) -> Row:
    what = f"{_name(run)} ({run.videos} videos, {run.frames} frames)"
    return Row("extract", what, run.videos_per_min, "videos/min", baseline.videos_per_min, _name(baseline))


def sample_copies(folder: Path, copies: int) -> list[Path]:
    """Symbolic links ``<k>-<name>`` to each sample video, ``copies`` rounds of all three."""
    links = []
    for k in range(1, copies + 1):
        for video in VIDEOS:
            link = folder / f"{k}-{video.name}"
            link.symlink_to(video)
            links.append(link)
    return links


def run_batch(
    backend_name: str, backend: Backend, workers: int, videos: list[Path], options: ExtractOptions
) -> tuple[ExtractRun, dict[str, str]]:
    """(the run's numbers, sha256 of each frame file by name) for one backend on a fresh folder."""
    with tempfile.TemporaryDirectory(prefix="extract-bench-") as out:
        started = time.perf_counter()
        results = extract_batch(videos, Path(out), options, backend)
        seconds = time.perf_counter() - started
        failed = [r.error for r in results if r.outcome is not Outcome.DONE]
        if failed:
            raise RuntimeError(f"{backend_name}: {failed}")
        digests = {r.output.name: hashlib.sha256(r.output.read_bytes()).hexdigest() for r in results}
    frames = sum(r.frames for r in results)
    return ExtractRun(backend_name, workers, len(videos), frames, seconds), digests


def measure(copies: int = 2, repeat: int = 2) -> ExtractNumbers:
    """The local pool and a Dask LocalCluster with 1 and 2 workers each, on the same videos.

    The four run in turn, ``repeat`` rounds, and each keeps its best time: the run least disturbed
    by whatever else the machine does, and no backend always runs while the load is higher.
    """
    options = ExtractOptions(PoseOptions(model_path=offline_task_path()))
    backends: list[tuple[str, int, Backend]] = []
    for n in WORKERS:
        backends += [("local pool", n, LocalPool(n)), ("Dask LocalCluster", n, DaskCluster(workers=n))]
    best: dict[tuple[str, int], ExtractRun] = {}
    reference = None
    with tempfile.TemporaryDirectory(prefix="extract-bench-videos-") as folder:
        videos = sample_copies(Path(folder), copies)
        for _ in range(repeat):
            for name, workers, backend in backends:
                run, digests = run_batch(name, backend, workers, videos, options)
                reference = reference or digests
                if digests != reference:
                    raise RuntimeError(f"{_name(run)} wrote other frame files than the first run")
                if (name, workers) not in best or run.seconds < best[name, workers].seconds:
                    best[name, workers] = run
    return ExtractNumbers(list(best.values()))


def main(argv: list[str] | None = None) -> int:
    parser = command("extract", __doc__)
    parser.add_argument("--copies", type=int, default=2, metavar="K", help="each video K times (default: 2)")
    parser.add_argument("--repeat", type=int, default=2, metavar="R", help="best of R rounds (default: 2)")
    args = parser.parse_args(argv)
    for option, value in (("--copies", args.copies), ("--repeat", args.repeat)):
        if value < 1:
            parser.error(f"{option} {value}: expected at least 1")
    load_before = os.getloadavg()[0]
    numbers = measure(args.copies, args.repeat)
    print(f"{'backend':<32} {'videos':>6} {'frames':>6} {'wall s':>7} {'videos/min':>10} {'frames/s':>8}")
    for run in numbers.runs:
        print(
            f"{_name(run):<32} {run.videos:>6} {run.frames:>6} {run.seconds:>7.1f} "
            f"{run.videos_per_min:>10.1f} {run.frames_per_s:>8.1f}"
        )
    print("every run wrote byte-identical frame files")
    print(f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f}\n")
    print(render_text(numbers.rows()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
