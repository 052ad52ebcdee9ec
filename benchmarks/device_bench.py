"""The daemon's own costs, each next to a baseline measured in the same run.

1. Per-frame overhead of everything except pose detection — window update, features, inference,
   outbox write (SQLite, synchronous=NORMAL, the default, or FULL), hand-off to the publisher (connected to a
   real local mosquitto) — p50/p99 in ms, on real keypoints, read against what one frame of the
   bare MediaPipe loop costs anyway.
2. End-to-end frames/s of the daemon on the sample videos (``pace = "fast"``: every frame goes
   through) against a bare loop of OpenCV read + MediaPipe detect on the same frames.
3. Resident memory of the daemon (``python -m device run`` in its own process, publishing to a
   real mosquitto) while it loops ``dance.mp4`` in real time for ``--soak-seconds``, sampled
   every 10 s: start (once healthy), end and max.
4. A kiosk's budget: the daemon restricted to one core at 640×480 — frames/s, per-frame overhead
   and glass-to-MQTT latency against the bare loop on the same core (:mod:`benchmarks.one_core`),
   for ``--one-core-seconds`` per run.

Run: ``python -m benchmarks device [--soak-seconds N] [--one-core-seconds N]`` (defaults 600 and
30; 0 skips that part).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2

from benchmarks import command
from benchmarks.daemon_process import DaemonProcess, daemon_config, train_model
from benchmarks.rows import Row, render_text
from benchmarks.samples import VIDEOS, reference_points
from benchmarks.timing import p50_p99_ms
from device.classifier import Classifier
from device.config import parse_config
from device.daemon import build
from device.decisions import DecisionSettings
from device.model.bundle import Smoothing
from device.model.store import open_model
from device.outbox import Outbox
from device.pose import PoseEstimator, PoseOptions
from device.publisher import MqttPublisher
from device.sources import VideoFileSource
from device.status import StatusBoard
from tests.broker import Mosquitto
from trainer.recipes import PoseBundle

if TYPE_CHECKING:
    from benchmarks.one_core import OneCoreNumbers

POSE_GAP_S = 0.018
"""Idle time between frames standing in for pose detection: the publisher's thread sends and
acknowledges during it, as in the daemon. 0 is the worst case (every frame competes with it)."""
OVERHEAD_CASES = (("normal", POSE_GAP_S), ("normal", 0.0), ("full", POSE_GAP_S), ("full", 0.0))
TABLE_CASES = OVERHEAD_CASES[:2]  # the default outbox mode: typical and worst case
SOAK_VIDEO = VIDEOS[1]  # dance.mp4


def overhead(
    bundle_path: Path,
    public_key: Path,
    work: Path,
    broker_port: int,
    synchronous: str,
    pose_gap_s: float,
    frames: int = 1000,
) -> list[float]:
    """Seconds per frame for window -> features -> model -> outbox -> publisher, excluding pose."""
    model = open_model(bundle_path, [public_key])
    classifier = Classifier(model, settings=DecisionSettings(0.0, Smoothing("mean", 0.5, 0.6, 0.4), "skip"))
    config = parse_config(
        {"source": {"kind": "camera"}, "mqtt": {"port": broker_port, "stats_interval_s": 3600}}, env={}
    )
    status = StatusBoard("bench")
    path = work / f"outbox-{synchronous}-{pose_gap_s}.sqlite"
    with Outbox(path, max_rows=100_000, synchronous=synchronous) as outbox:
        publisher = MqttPublisher(config.mqtt, "bench", outbox, status)
        publisher.start()
        deadline = time.monotonic() + 10
        while not status.snapshot()["mqtt"]["connected"] and time.monotonic() < deadline:
            time.sleep(0.05)
        topic = publisher.topic("classification")
        costs = []
        for n, points in enumerate(reference_points(frames), start=1):
            began = time.perf_counter()
            for prediction in classifier.feed_keypoints(points, n * 33.3, n):
                payload = prediction.payload()
                seq = outbox.append(topic, payload)
                publisher.notify()
                publisher.set_state({"seq": seq, **payload, "person_present": True})
            costs.append(time.perf_counter() - began)
            time.sleep(pose_gap_s)
        publisher.stop()
    return costs


@dataclass(frozen=True)
class BareLoop:
    fps: float
    frames: int
    pose_s: list[float]  # MediaPipe's detect alone, per frame: "one pose time"


def bare_loop(videos: list[Path], options: PoseOptions | None = None) -> BareLoop:
    """OpenCV read + BGR->RGB + MediaPipe detect, nothing else: the physical limit."""
    pose_s, began = [], time.perf_counter()
    for video in videos:
        with VideoFileSource(video) as source, PoseEstimator(options or PoseOptions(), mode="video") as pose:
            for frame in source:
                rgb = cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB)
                detecting = time.perf_counter()
                pose.detect(rgb, frame.timestamp_ms)
                pose_s.append(time.perf_counter() - detecting)
    return BareLoop(len(pose_s) / (time.perf_counter() - began), len(pose_s), pose_s)


def bare_loop_fps(videos: list[Path], options: PoseOptions | None = None) -> tuple[float, int]:
    """Frames/s and frames of :func:`bare_loop`."""
    loop = bare_loop(videos, options)
    return loop.fps, loop.frames


def daemon_fps(model: PoseBundle, work: Path, videos: list[Path]) -> tuple[float, int]:
    """The whole daemon (in this process, MQTT off) through every frame of the videos once."""
    daemon = build(parse_config(daemon_config(model, work, videos, loop=False, pace="fast"), env={}))
    began = time.perf_counter()
    daemon.start()
    daemon.capture.ended.wait(600)
    deadline = time.monotonic() + 30
    expected = daemon.status.snapshot()["counters"]["frames_captured"]
    while daemon.status.snapshot()["counters"]["frames_processed"] < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    elapsed = time.perf_counter() - began
    processed = daemon.status.snapshot()["counters"]["frames_processed"]
    daemon.stop()
    return processed / elapsed, processed


@dataclass(frozen=True)
class Soak:
    seconds: float
    frames: int
    samples: list[tuple[float, float]]  # (seconds since healthy, RSS MB)


def soak(model: PoseBundle, work: Path, seconds: float) -> Soak:
    """The daemon as its own process, looping dance.mp4 in real time, its RSS sampled every 10 s."""
    work.mkdir(parents=True, exist_ok=True)
    with Mosquitto() as broker:
        config = daemon_config(model, work, [SOAK_VIDEO], loop=True, pace="realtime", mqtt_port=broker.port)
        with DaemonProcess(config, work) as daemon:
            samples = []
            began = time.monotonic()
            while (elapsed := time.monotonic() - began) < seconds:
                samples.append((elapsed, daemon.rss_mb()))
                time.sleep(min(10.0, max(seconds - elapsed, 0.1)))
            samples.append((time.monotonic() - began, daemon.rss_mb()))
            frames = daemon.status()["counters"]["frames_processed"]
    return Soak(seconds, frames, samples)


@dataclass(frozen=True)
class DeviceNumbers:
    overhead_ms: dict[tuple[str, float], tuple[float, float]]  # (outbox mode, pose gap s) -> p50, p99
    bare_fps: float
    daemon_fps: float
    videos: int
    frames: int  # per end-to-end run
    soak: Soak | None
    one_core: OneCoreNumbers | None

    def rows(self) -> list[Row]:
        frame_ms = 1000 / self.bare_fps
        per_frame = "one frame of the bare MediaPipe loop"
        rows = []
        for (mode, gap), (p50, p99) in self.overhead_ms.items():
            case = f"outbox {mode}, {gap * 1000:.0f} ms pose gap"
            rows.append(
                Row(
                    "device", f"per-frame overhead without pose, p50 ({case})", p50, "ms", frame_ms, per_frame
                )
            )
            rows.append(
                Row(
                    "device", f"per-frame overhead without pose, p99 ({case})", p99, "ms", frame_ms, per_frame
                )
            )
        rows.append(
            Row(
                "device",
                f"end to end, {self.videos} sample video(s), {self.frames} frames",
                self.daemon_fps,
                "frames/s",
                self.bare_fps,
                "bare OpenCV + MediaPipe loop",
            )
        )
        if self.one_core is not None:
            rows += self.one_core.rows()
        if self.soak is not None:
            values = [mb for _, mb in self.soak.samples]
            what = f"{self.soak.seconds:.0f} s soak, {self.soak.frames} frames"
            rows.append(Row("memory", f"daemon RSS at start ({what})", values[0], "MB"))
            rows.append(
                Row("memory", "daemon RSS at the end of the soak", values[-1], "MB", values[0], "at start")
            )
            rows.append(
                Row("memory", "daemon RSS, max during the soak", max(values), "MB", values[0], "at start")
            )
        return rows


def measure(
    model: PoseBundle,
    work: Path,
    *,
    cases: tuple[tuple[str, float], ...] = OVERHEAD_CASES,
    overhead_frames: int = 1000,
    videos: tuple[Path, ...] = VIDEOS,
    soak_seconds: float = 600.0,
    one_core_seconds: float = 30.0,
    one_core_video_frames: int | None = None,
) -> DeviceNumbers:
    """Parts 1-4 of the module's docstring; each overhead case gets a fresh broker and outbox."""
    from benchmarks import one_core  # it builds on this module's loops

    costs = {}
    for synchronous, gap in cases:
        with Mosquitto() as broker:
            seconds = overhead(
                model.bundle, model.public_key, work, broker.port, synchronous, gap, overhead_frames
            )
        costs[(synchronous, gap)] = p50_p99_ms(seconds)
    bare, frames = bare_loop_fps(list(videos))
    fps, _ = daemon_fps(model, work / "end-to-end", list(videos))
    soaked = soak(model, work / "soak", soak_seconds) if soak_seconds > 0 else None
    budget = None
    if one_core_seconds > 0:
        budget = one_core.measure(
            model,
            work / "one-core",
            seconds=one_core_seconds,
            overhead_frames=overhead_frames,
            video_frames=one_core_video_frames,
        )
    return DeviceNumbers(costs, bare, fps, len(videos), frames, soaked, budget)


def main(argv: list[str] | None = None) -> int:
    parser = command("device", __doc__)
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="0 skips the memory soak")
    parser.add_argument(
        "--one-core-seconds", type=float, default=30.0, help="each one-core run's window; 0 skips them"
    )
    args = parser.parse_args(argv)
    for flag, value in (("--soak-seconds", args.soak_seconds), ("--one-core-seconds", args.one_core_seconds)):
        if value < 0:
            parser.error(f"{flag} must be 0 or more")
    with tempfile.TemporaryDirectory(prefix="device-bench-") as tmp:
        print("training a per-frame pose model for the benchmark ...", flush=True)
        model = train_model(Path(tmp))
        numbers = measure(
            model, Path(tmp), soak_seconds=args.soak_seconds, one_core_seconds=args.one_core_seconds
        )
    print(render_text(numbers.rows()))
    if numbers.one_core is not None:
        print("\n".join(numbers.one_core.details()))
    if numbers.soak is not None:
        print("RSS samples (s:MB): " + ", ".join(f"{t:.0f}:{mb:.0f}" for t, mb in numbers.soak.samples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
