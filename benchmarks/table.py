"""``python -m benchmarks [table]`` (``make bench``): every benchmark, one table, each next to its baseline.

Runs, in one process and one go: feature throughput and per-window cost (``features``), dataset
building (``dataset``), the seed's own code beside ours on the same keypoints (``seed``, when
``make bench-seed`` installed it; else its published figures), every model but the slow
gradient boosting (``train``), the daemon's per-frame overhead, end-to-end frames/s, its budget
on one core and memory over a soak (``device``), where that memory goes (``memory``), the
status API under concurrent clients while the pipeline runs (``load``), replay's throughput and
the cost of resampling a window (``replay``), the activity stage's cost per frame
(``activities``), frames/s with 1, 2 and 3 people in view (``people``), and how long every
command takes to answer ``--help`` against the bare interpreter (``startup``). Each row comes
from the same ``measure()`` its benchmark's own command uses (``python -m benchmarks NAME
--help`` for one benchmark in detail). The default sizes keep the whole run around fifteen
minutes on two cores (the seed's own code adds about three); ``--soak-seconds`` lengthens the
memory soak, ``--quick`` shrinks everything to check that the table runs (its numbers mean
nothing).

Every ratio is result / baseline: above 1 is faster for a rate, below 1 is cheaper for a cost.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from benchmarks import command
from benchmarks.rows import Row, Table, render_markdown, render_text, to_json
from benchmarks.samples import VIDEOS

OUT_FORMATS: dict[str, Callable[[Table], str]] = {".json": to_json, ".md": render_markdown}


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does in one table run; None is the benchmark's own default.

    The benchmark modules are imported only once the arguments are checked (they pull in
    MediaPipe, scikit-learn and the trainer: seconds before a usage error could be reported).
    """

    feature_frames: int | None = None
    feature_baseline_frames: int | None = None
    windows: int | None = None
    baseline_windows: int | None = None
    dataset_files: int | None = None
    dataset_frames: int | None = None
    seed_videos: tuple[int, ...] | None = None  # None: 10 and 100 videos
    seed_windows: int | None = None
    train_models: tuple[str, ...] | None = None  # None: every model but the slow gradient boosting
    latency_calls: int | None = None
    overhead_cases: tuple[tuple[str, float], ...] | None = None  # None: the device benchmark's TABLE_CASES
    overhead_frames: int | None = None
    videos: tuple[Path, ...] | None = None
    soak_seconds: float = 120.0
    one_core_seconds: float | None = None
    one_core_video_frames: int | None = None
    memory_seconds: float | None = None
    clients: int | None = None
    load_seconds: float | None = None
    quiet_seconds: float | None = None
    single_seconds: float | None = None
    activity_frames: int | None = None
    people_runs: int | None = None
    startup_repeat: int | None = None
    startup_commands: tuple[str, ...] | None = None  # None: every command of the three packages


QUICK = Sizes(
    feature_frames=2_000,
    feature_baseline_frames=200,
    windows=20,
    baseline_windows=5,
    dataset_files=2,
    dataset_frames=382,
    seed_videos=(2,),
    seed_windows=1,
    train_models=(),
    latency_calls=20,
    overhead_cases=(("full", 0.0),),
    overhead_frames=60,
    videos=VIDEOS[:1],
    soak_seconds=2.0,
    one_core_seconds=2.0,
    one_core_video_frames=60,
    memory_seconds=2.0,
    clients=4,
    load_seconds=1.0,
    quiet_seconds=1.0,
    single_seconds=1.0,
    activity_frames=200,
    people_runs=1,
    startup_repeat=1,
    startup_commands=("device", "trainer", "provisioning"),
)


def given(**kwargs: object) -> dict[str, object]:
    """The keyword arguments that were set: the rest keep the benchmark's own defaults."""
    return {key: value for key, value in kwargs.items() if value is not None}


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, {system}, Python {platform.python_version()}"


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run(sizes: Sizes, progress: Callable[[str], None]) -> list[Row]:
    """Every benchmark in turn; the device and load benchmarks share one trained model."""
    from benchmarks import (
        activity_bench,
        dataset_bench,
        device_bench,
        feature_bench,
        load_bench,
        memory_bench,
        people_bench,
        replay_bench,
        seed_bench,
        startup_bench,
        train_bench,
    )
    from benchmarks.daemon_process import train_model

    rows: list[Row] = []

    def step(name: str, measure: Callable[[], list[Row]]) -> None:
        began = time.monotonic()
        progress(f"{name} ...")
        rows.extend(measure())
        progress(f"{name}: {time.monotonic() - began:.0f} s")

    s = sizes
    features = given(
        frames=s.feature_frames,
        baseline_frames=s.feature_baseline_frames,
        windows=s.windows,
        baseline_windows=s.baseline_windows,
    )
    step("features", lambda: feature_bench.measure(**features).rows())
    dataset = given(files=s.dataset_files, frames_per_file=s.dataset_frames)
    step("dataset", lambda: dataset_bench.measure(**dataset).rows())
    seed = given(videos=s.seed_videos, frames_per_file=s.dataset_frames, windows=s.seed_windows)
    step("seed", lambda: seed_bench.measure(**seed).rows())
    models = train_bench.TABLE_MODELS if s.train_models is None else s.train_models
    train = given(latency_calls=s.latency_calls)
    step("train", lambda: train_bench.measure(models, **train).rows())
    device = given(
        cases=device_bench.TABLE_CASES if s.overhead_cases is None else s.overhead_cases,
        overhead_frames=s.overhead_frames,
        videos=s.videos,
        soak_seconds=s.soak_seconds,
        one_core_seconds=s.one_core_seconds,
        one_core_video_frames=s.one_core_video_frames,
    )
    memory = given(seconds=s.memory_seconds, video_frames=s.one_core_video_frames)
    load = given(
        clients=s.clients,
        seconds=s.load_seconds,
        quiet_seconds=s.quiet_seconds,
        single_seconds=s.single_seconds,
    )
    with tempfile.TemporaryDirectory(prefix="bench-table-") as tmp:
        work = Path(tmp)
        progress("training the device's pose model ...")
        model = train_model(work)
        step("device", lambda: device_bench.measure(model, work / "device", **device).rows())
        step("memory", lambda: memory_bench.measure(model, work / "memory", **memory).rows())
        step("load", lambda: load_bench.measure(model, work / "load", **load).rows())
        replay = given(videos=s.videos, windows=s.windows)
        step("replay", lambda: replay_bench.measure(model, **replay).rows())
        activities = given(frames=s.activity_frames)
        step("activities", lambda: activity_bench.measure(model, **activities).rows())
        people = given(runs=s.people_runs)
        step("people", lambda: [n.row() for n in people_bench.measure(model, work, **people)])
    startup = given(repeat=s.startup_repeat, commands=s.startup_commands)
    step("startup", lambda: startup_bench.measure(**startup).rows())
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = command("table", __doc__)
    parser.add_argument(
        "--soak-seconds", type=float, help=f"memory soak length (default {Sizes.soak_seconds:.0f})"
    )
    parser.add_argument("--clients", type=int, help="load: concurrent clients (default 50)")
    parser.add_argument("--load-seconds", type=float, help="load: its length in seconds (default 30)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks the table runs, nothing more"
    )
    parser.add_argument("--out", type=Path, help="also write the table to FILE.md (Markdown) or FILE.json")
    args = parser.parse_args(argv)
    # usage mistakes are found before ten minutes of measuring, not after
    if args.out is not None:
        if args.out.suffix not in OUT_FORMATS:
            parser.error(f"--out {args.out}: the name must end in {' or '.join(OUT_FORMATS)}")
        if not args.out.parent.is_dir():
            parser.error(f"--out {args.out}: folder {args.out.parent} does not exist")
    if args.soak_seconds is not None and args.soak_seconds < 0:
        parser.error("--soak-seconds must be 0 or more")
    for flag, value in (("--clients", args.clients), ("--load-seconds", args.load_seconds)):
        if value is not None and value <= 0:
            parser.error(f"{flag} must be more than 0")
    options = given(soak_seconds=args.soak_seconds, clients=args.clients, load_seconds=args.load_seconds)
    sizes = replace(QUICK if args.quick else Sizes(), **options)

    began, load_before = time.monotonic(), load_average()
    started = datetime.now().astimezone()
    rows = run(sizes, lambda line: print(line, file=sys.stderr, flush=True))
    table = Table(
        rows,
        context={
            "date": started.strftime("%Y-%m-%d %H:%M %Z"),
            "machine": machine(),
            "command": "python -m benchmarks table " + " ".join(argv if argv is not None else sys.argv[1:]),
            "run time": f"{(time.monotonic() - began) / 60:.1f} min",
            "load average (1, 5, 15 min) before / after": f"{load_before} / {load_average()}",
        },
        notes=[
            "Ratios are result / baseline: above 1 is faster for a rate, below 1 is cheaper for a cost.",
            "Baselines are measured in the same run, except the seed's published figures (marked).",
        ],
    )
    if any(not row.same_run for row in rows):
        table.notes.append(
            "The seed's virtualenv (.cache/seed-venv) is missing, so its published figures stand in for "
            "the seed rows: `make bench-seed` installs it, and the next run measures the seed's own code."
        )
    if args.quick:
        table.notes.append("--quick: tiny sizes; these numbers only show that the table runs.")
    print()
    print("\n".join(f"{key}: {value}" for key, value in table.context.items()))
    print()
    print(render_text(table.rows))
    print()
    print("\n".join(table.notes))
    if args.out is not None:
        partial = args.out.with_name(args.out.name + ".partial")
        partial.write_text(OUT_FORMATS[args.out.suffix](table))
        partial.replace(args.out)
        print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
