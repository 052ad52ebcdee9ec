"""Where the daemon's memory goes: its parts loaded one at a time, then the daemon itself running.

1. The breakdown: a fresh interpreter (:mod:`benchmarks.memory_steps`) loads, in order, numpy and
   OpenCV; MediaPipe; the outbox (sqlite_utils); person tracking (scipy); the rest of what
   ``python -m device run`` imports; the pose graph (the offline ``.task``, both networks) run on
   30 frames; the classifier model (verified, loaded, smoke-tested). Each row is what its step
   added to the resident memory (RSS), read against the running daemon's RSS (the ratio is the
   step's share). Then it builds and starts the daemon of the same configuration and counts the
   modules it imported while classifying, per package: a kiosk should hold nothing of pandas or
   the trainer, and scikit-learn only for a skops bundle.
2. The daemon running: ``python -m device run`` in its own process, looping the kiosk's
   640×480 video in real time and publishing to a real mosquitto, with the live picture fetched
   (JPEG) every second, for ``--seconds``; its RSS at the end, and apart that of the processes it
   started (:func:`device.logs.quiet_native_logs`' forwarder, a fork whose RSS counts pages it
   shares with the daemon; the web face, when that runs in a process of its own). What the
   daemon holds beyond the parts of step 1 is its running state: threads and their stacks,
   malloc's arenas, the frame slot, the live view and its JPEG, the outbox's SQLite cache, the
   web server's buffers.
3. The same run with ``MALLOC_ARENA_MAX=2`` in the daemon's environment (glibc's allocator
   otherwise gives each busy thread an arena of its own, up to 8 per core), against step 2.

Run: ``python -m benchmarks memory [--seconds N]`` (default 60). The 10-minute soak is the device
benchmark's (``python -m benchmarks device --soak-seconds 600``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks import command
from benchmarks.daemon_process import REPO, DaemonProcess, daemon_config, train_model, write_config
from benchmarks.one_core import kiosk_video
from benchmarks.rows import Row, render_text
from tests.broker import Mosquitto
from trainer.recipes import PoseBundle

ARENAS = {"MALLOC_ARENA_MAX": "2"}
NOT_ON_A_KIOSK = ("pandas", "trainer", "sklearn", "skops")  # skops and sklearn: only for skops bundles


@dataclass(frozen=True)
class MemoryNumbers:
    steps: list[tuple[str, float]]  # cumulative RSS (MB) after each step of the breakdown
    modules: dict[str, int]  # modules of the running daemon per top-level package
    runtime: str  # the bundle's runtime: scikit-learn belongs only to "skops"
    seconds: float
    running_mb: float  # the daemon's RSS after ``seconds``
    arenas_mb: float  # the same with MALLOC_ARENA_MAX=2
    frames: int  # frames the running daemon processed
    children_mb: (
        float  # RSS of the processes it started (log forwarder; web face in its own), shared pages too
    )

    def rows(self) -> list[Row]:
        share = (self.running_mb, f"the daemon's RSS after {self.seconds:.0f} s")
        first, mb = self.steps[0]
        rows = [Row("memory", f"{first} (a fresh process, parts loaded one by one)", mb, "MB", *share)]
        for (_, before), (name, after) in zip(self.steps, self.steps[1:], strict=False):
            rows.append(Row("memory", f"+ {name}", after - before, "MB", *share))
        loaded = self.steps[-1][1]
        running = "+ running: threads, malloc arenas, frame slot, live view + JPEG, outbox, web server"
        rows.append(Row("memory", running, self.running_mb - loaded, "MB", *share))
        rows.append(
            Row(
                "memory",
                f"device run, 640×480 in real time, RSS after {self.seconds:.0f} s ({self.frames} frames)",
                self.running_mb,
                "MB",
                loaded,
                "its parts loaded, nothing running",
            )
        )
        rows.append(
            Row(
                "memory", "the same with MALLOC_ARENA_MAX=2", self.arenas_mb, "MB", self.running_mb, "without"
            )
        )
        rows.append(
            Row(
                "memory",
                "its child processes' RSS (stderr's log forwarder; the web face in its own)",
                self.children_mb,
                "MB",
                self.running_mb,
                "the daemon's",
            )
        )
        for package in self.absent():
            rows.append(
                Row(
                    "memory",
                    f"modules of {package} in the running daemon ({self.runtime} bundle)",
                    self.modules.get(package, 0),
                    "modules",
                )
            )
        return rows

    def absent(self) -> tuple[str, ...]:
        """The packages a kiosk must not import: scikit-learn and skops are allowed for skops bundles."""
        return NOT_ON_A_KIOSK if self.runtime != "skops" else ("pandas", "trainer")

    def details(self) -> list[str]:
        public = {name: n for name, n in self.modules.items() if not name.startswith("_")}
        return [
            "breakdown (cumulative RSS, MB): " + ", ".join(f"{name} {mb:.0f}" for name, mb in self.steps),
            f"the running daemon's {sum(self.modules.values())} modules, per top-level package: "
            + ", ".join(f"{name} {n}" for name, n in public.items()),
        ]


def breakdown(config_path: Path, video: Path) -> dict:
    """Step 1 in a fresh interpreter (:mod:`benchmarks.memory_steps`)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory_steps", str(config_path), str(video)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the memory breakdown failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def running(
    model: PoseBundle, work: Path, video: Path, seconds: float, env: dict[str, str]
) -> tuple[float, int, float]:
    """Step 2 (3 with ``env``): the RSS of the daemon and of its children after ``seconds``, fetching
    the live picture each second; and the frames it processed."""
    work.mkdir(parents=True, exist_ok=True)
    with Mosquitto() as broker:
        config = daemon_config(model, work, [video], loop=True, pace="realtime", mqtt_port=broker.port)
        with DaemonProcess(config, work, env=env) as daemon:
            began = time.monotonic()
            while time.monotonic() - began < seconds:
                with urllib.request.urlopen(daemon.url("/frame.jpg"), timeout=30) as response:
                    response.read()
                time.sleep(min(1.0, max(seconds - (time.monotonic() - began), 0.0)))
            rss, children_rss = daemon.rss_mb(), daemon.children_rss_mb()
            frames = daemon.status()["counters"]["frames_processed"]
    return rss, frames, children_rss


def measure(
    model: PoseBundle, work: Path, *, seconds: float = 60.0, video_frames: int | None = None
) -> MemoryNumbers:
    """Steps 1-3 of the module's docstring, on the kiosk's 640×480 video (its first ``video_frames``)."""
    work.mkdir(parents=True, exist_ok=True)
    video = kiosk_video(work, video_frames)
    config = daemon_config(model, work / "breakdown", [video], loop=True, pace="realtime")
    steps = breakdown(write_config(config, work / "breakdown.toml"), video)
    running_mb, frames, children_mb = running(model, work / "default", video, seconds, {})
    arenas_mb, _, _ = running(model, work / "arenas", video, seconds, ARENAS)
    return MemoryNumbers(
        [(name, mb) for name, mb in steps["rss_mb"]],
        steps["modules"],
        steps["runtime"],
        seconds,
        running_mb,
        arenas_mb,
        frames,
        children_mb,
    )


def main(argv: list[str] | None = None) -> int:
    parser = command("memory", __doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the daemon runs (default 60)")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be more than 0")
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as tmp:
        print("training a per-frame pose model for the benchmark ...", flush=True)
        model = train_model(Path(tmp))
        numbers = measure(model, Path(tmp) / "memory", seconds=args.seconds)
    print(render_text(numbers.rows()))
    print("\n".join(numbers.details()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
