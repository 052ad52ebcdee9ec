"""The status API under concurrent clients while the pipeline runs, and what that costs the pipeline.

The real daemon (``python -m device run`` in its own process: real MediaPipe, the BODY-25 pose
model trained as the device benchmark trains it, publishing to a real mosquitto on loopback)
loops ``dance.mp4`` as fast as it can (``pace = "fast"``: the pipeline's capacity, not the
video's frame rate). Then, in order:

1. one client for a few seconds: the request rate and latency of an unloaded ``/api/status``;
2. no load for ``--quiet-seconds``: the pipeline's frames/s from the daemon's own counters, and
   the classifications an MQTT subscriber receives;
3. ``--clients`` concurrent keep-alive clients on ``/api/status`` for ``--seconds`` (``wrk`` from
   127.0.0.1, or a Python fallback, named in the output): requests/s, latency p50/p99, errors
   (responses other than 200, connection errors), and the same pipeline numbers meanwhile;
4. no load again: does the pipeline recover, did the memory of the daemon (and of its web
   process, :mod:`device.web_process`) grow?
5. ``--viewers`` MJPEG viewers of the live view (``/stream.mjpg``) for ``--seconds``: the parts
   each receives per second (at most 10) and the pipeline meanwhile;
6. no load again: with step 4, the baseline of step 5.

The load tool runs on the same two cores as the daemon, so part of any slowdown is the tool's
own CPU; a kiosk's clients are elsewhere on the network.

Run: ``python -m benchmarks load [--clients 50] [--viewers 4] [--seconds 30] [--quiet-seconds 15]
[--tool auto]``.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from benchmarks import command
from benchmarks.daemon_process import DEVICE_ID, DaemonProcess, daemon_config, rss_mb, train_model
from benchmarks.http_load import LoadResult, WatchResult, load, watch
from benchmarks.rows import Row, render_text
from benchmarks.samples import VIDEOS
from tests.broker import Mosquitto, Subscriber
from trainer.recipes import PoseBundle

VIDEO = VIDEOS[1]  # dance.mp4: one person throughout, 600x600
TOPIC = f"movement/{DEVICE_ID}/classification"
T = TypeVar("T")


@dataclass(frozen=True)
class Period:
    """The pipeline over one stretch of time, from the daemon's counters and the broker's side."""

    seconds: float
    frames: int  # through pose (``frames_processed``)
    published: int  # classifications the subscriber received

    @property
    def fps(self) -> float:
        return self.frames / self.seconds

    @property
    def published_per_s(self) -> float:
        return self.published / self.seconds


@dataclass(frozen=True)
class LoadNumbers:
    single: LoadResult  # one client: the unloaded baseline
    load: LoadResult
    before: Period
    during: Period
    after: Period
    rss_before_mb: float
    rss_after_mb: float
    web_rss_before_mb: float  # the web process (device/web_process.py), beside the daemon's own
    web_rss_after_mb: float
    watched: WatchResult
    viewing: Period
    last: Period  # no load after the viewers

    @property
    def tool(self) -> str:
        return "wrk" if self.load.tool == "wrk" else "Python fallback"

    def rows(self) -> list[Row]:
        load, single = self.load, self.single
        what = f"GET /api/status, {load.clients} clients ({self.tool}, {load.seconds:.0f} s)"
        one = "1 client, same run"
        quiet_fps = (self.before.fps + self.after.fps) / 2
        quiet_published = (self.before.published_per_s + self.after.published_per_s) / 2
        no_load = "no load, before and after"
        errors = (
            f"{load.bad_status} non-200 + {load.connection_errors} connection errors, of {load.requests:,}"
        )
        return [
            Row("load", f"{what}: throughput", load.requests_per_s, "requests/s", single.requests_per_s, one),
            Row("load", f"{what}: latency p50", load.p50_ms, "ms", single.p50_ms, one),
            Row("load", f"{what}: latency p99", load.p99_ms, "ms", single.p99_ms, one),
            Row("load", f"{what}: failed requests", load.errors, "", None, errors),
            Row("load", "pipeline frames/s during the load", self.during.fps, "frames/s", quiet_fps, no_load),
            Row(
                "load",
                "pipeline frames/s after the load",
                self.after.fps,
                "frames/s",
                self.before.fps,
                "before it",
            ),
            Row(
                "load",
                "classifications received over MQTT during the load",
                self.during.published_per_s,
                "/s",
                quiet_published,
                no_load,
            ),
            Row(
                "load", "daemon RSS after the load", self.rss_after_mb, "MB", self.rss_before_mb, "before it"
            ),
            Row(
                "load",
                "web process RSS after the load",
                self.web_rss_after_mb,
                "MB",
                self.web_rss_before_mb,
                "before it",
            ),
            *self.viewer_rows(),
        ]

    def viewer_rows(self) -> list[Row]:
        watched = self.watched
        what = f"{watched.viewers} MJPEG viewers of /stream.mjpg ({watched.seconds:.0f} s)"
        no_load = "no load, before and after"
        refused = f"{watched.refused} of {watched.viewers} viewers refused or cut off"
        return [
            Row(
                "load",
                f"{what}: parts per viewer",
                watched.parts_per_s,
                "/s",
                10.0,
                f"the stream's cap; {refused}",
            ),
            Row(
                "load",
                f"pipeline frames/s with {what}",
                self.viewing.fps,
                "frames/s",
                (self.after.fps + self.last.fps) / 2,
                no_load,
            ),
            Row(
                "load",
                f"classifications received over MQTT with {what}",
                self.viewing.published_per_s,
                "/s",
                (self.after.published_per_s + self.last.published_per_s) / 2,
                no_load,
            ),
        ]


def web_rss_mb(daemon_pid: int) -> float:
    """Resident memory of the daemon's web process (its child running ``device.web_process``)."""
    children = Path(f"/proc/{daemon_pid}/task/{daemon_pid}/children").read_text().split()
    for child in children:
        with contextlib.suppress(OSError):
            if b"device.web_process" in Path(f"/proc/{child}/cmdline").read_bytes():
                return rss_mb(child)
    return float("nan")


def period(daemon: DaemonProcess, subscriber: Subscriber, action: Callable[[], T]) -> tuple[Period, T]:
    """Run ``action`` and count what the pipeline did meanwhile."""
    frames = daemon.status()["counters"]["frames_processed"]
    published = len(subscriber.messages(TOPIC))
    began = time.monotonic()
    result = action()
    elapsed = time.monotonic() - began
    frames = daemon.status()["counters"]["frames_processed"] - frames
    return Period(elapsed, frames, len(subscriber.messages(TOPIC)) - published), result


def measure(
    model: PoseBundle,
    work: Path,
    *,
    clients: int = 50,
    viewers: int = 4,
    seconds: float = 30.0,
    quiet_seconds: float = 15.0,
    single_seconds: float = 5.0,
    tool: str = "auto",
) -> LoadNumbers:
    """Steps 1-6 of the module's docstring against one daemon."""
    work.mkdir(parents=True, exist_ok=True)
    with Mosquitto() as broker, Subscriber(broker.port, TOPIC) as subscriber:
        config = daemon_config(model, work, [VIDEO], loop=True, pace="fast", mqtt_port=broker.port)
        with DaemonProcess(config, work) as daemon:
            url = daemon.url("/api/status")
            single = load(url, 1, single_seconds, tool)  # also warms the pipeline up
            before, _ = period(daemon, subscriber, lambda: time.sleep(quiet_seconds))
            rss_before, web_rss_before = daemon.rss_mb(), web_rss_mb(daemon.pid)
            during, result = period(daemon, subscriber, lambda: load(url, clients, seconds, tool))
            after, _ = period(daemon, subscriber, lambda: time.sleep(quiet_seconds))
            rss_after, web_rss_after = daemon.rss_mb(), web_rss_mb(daemon.pid)
            stream = daemon.url("/stream.mjpg")
            viewing, watched = period(daemon, subscriber, lambda: watch(stream, viewers, seconds))
            last, _ = period(daemon, subscriber, lambda: time.sleep(quiet_seconds))
    return LoadNumbers(
        single, result, before, during, after, rss_before, rss_after, web_rss_before, web_rss_after,
        watched, viewing, last,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = command("load", __doc__)
    parser.add_argument("--clients", type=int, default=50, help="concurrent connections (default 50)")
    parser.add_argument("--viewers", type=int, default=4, help="MJPEG viewers (default 4, the limit)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the load (default 30)")
    parser.add_argument(
        "--quiet-seconds", type=float, default=15.0, help="each period without load (default 15)"
    )
    parser.add_argument(
        "--tool", choices=("auto", "wrk", "python"), default="auto", help="auto: wrk when installed"
    )
    args = parser.parse_args(argv)
    if args.clients < 1 or args.viewers < 1 or args.seconds <= 0 or args.quiet_seconds <= 0:
        parser.error(
            "--clients must be 1 or more, as must --viewers; --seconds and --quiet-seconds more than 0"
        )
    if args.tool == "wrk" and not shutil.which("wrk"):
        parser.error("--tool wrk: wrk is not installed (apt-get install wrk; make bench installs it)")
    with tempfile.TemporaryDirectory(prefix="load-bench-") as tmp:
        print("training a per-frame pose model for the benchmark ...", flush=True)
        model = train_model(Path(tmp))
        numbers = measure(
            model, Path(tmp) / "daemon", clients=args.clients, viewers=args.viewers, seconds=args.seconds,
            quiet_seconds=args.quiet_seconds, tool=args.tool,
        )  # fmt: skip
    if numbers.tool != "wrk":
        print("note: the Python fallback client ran, not wrk: it offers less load than wrk would")
    print(render_text(numbers.rows()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
