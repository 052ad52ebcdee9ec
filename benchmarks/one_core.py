"""A kiosk's budget: the daemon on one core at 640×480, next to the bare loop on the same core.

A Raspberry Pi-sized kiosk has one or two slow cores for everything: capture, pose, the decision
pipeline, SQLite, MQTT and the web page. Here the daemon (``python -m device run`` in its own
process) is restricted to one core from its first instruction (``sched_setaffinity`` in the child,
as ``taskset -c`` or systemd's ``CPUAffinity=`` would), as are its baselines; the broker and the
measuring subscriber run outside the restriction, as they would on another machine. The video is
``example_video.webm`` (1280×720, 30 frames/s) cropped to 4:3 and scaled to 640×480 with OpenCV
into a temporary folder: a camera's usual mode.

1. Frames/s: the daemon with ``pace = "fast"`` (every frame goes through, the reader is the pace)
   over a window of ``seconds``, from its own counters, against the bare loop (OpenCV read +
   BGR→RGB + MediaPipe detect) on the same frames and core.
2. Per-frame overhead without pose, p50/p99: window → features → model → outbox (SQLite, the
   default ``synchronous``) → publisher (connected to the broker), on the same core, with the
   bare loop's median pose time as the gap between frames (in which the publisher's thread
   syncs, sends and is acknowledged, as in the daemon).
3. Glass-to-MQTT latency, p50/p99: the daemon with ``pace = "realtime"`` (frames due at the
   video's own times: a camera stand-in), from the moment a frame was due to the moment a
   subscriber on loopback received the classification made from it. The daemon records each
   result's capture-to-result time (``latency_ms``, monotonic) and its wall time (``ts``); the
   capture's wall time is ``ts - latency_ms``, and the subscriber's clock is the same machine's.
   Read against one pose time on this core (the bare loop's median) plus 10 ms: what a kiosk that
   never queues would show.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cv2
import paho.mqtt.client as mqtt

from benchmarks.daemon_process import DaemonProcess, daemon_config
from benchmarks.device_bench import bare_loop, overhead
from benchmarks.rows import Row
from benchmarks.samples import VIDEOS
from benchmarks.timing import p50_p99_ms
from device.config import OutboxSection
from tests.broker import Mosquitto, Subscriber
from trainer.recipes import PoseBundle

KIOSK_SIZE = (640, 480)
KIOSK_SOURCE = VIDEOS[2]  # example_video.webm: 1280×720 at 30 frames/s, one person
NO_QUEUE_MARGIN_MS = 10.0  # the latency goal: one pose time plus this
T = TypeVar("T")


def kiosk_video(folder: Path, frames: int | None = None, size: tuple[int, int] = KIOSK_SIZE) -> Path:
    """:data:`KIOSK_SOURCE` (its first ``frames``, default all) centre-cropped to the aspect of ``size``
    and scaled to it, at its own frame rate: what a kiosk's camera delivers."""
    from device.sources import VideoFileSource

    out = folder / f"kiosk-{size[0]}x{size[1]}.mp4"
    with VideoFileSource(KIOSK_SOURCE) as video:
        writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), video.fps, size)
        for frame in itertools.islice(video, frames):
            height, width = frame.image.shape[:2]
            crop_w = min(width, round(height * size[0] / size[1]))
            crop_h = min(height, round(width * size[1] / size[0]))
            x, y = (width - crop_w) // 2, (height - crop_h) // 2
            part = frame.image[y : y + crop_h, x : x + crop_w]
            writer.write(cv2.resize(part, size, interpolation=cv2.INTER_AREA))
        writer.release()
    return out


def on_cores(cpus: set[int], fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a fresh process restricted to ``cpus`` before it imports anything."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        1, mp_context=context, initializer=os.sched_setaffinity, initargs=(0, cpus)
    ) as pool:
        return pool.submit(fn, *args).result()


class TimedSubscriber(Subscriber):
    """A :class:`~tests.broker.Subscriber` that also notes the wall time each message arrived."""

    def __init__(self, port: int, topics: str | list[str] = "#") -> None:
        super().__init__(port, topics)
        self.arrivals: list[tuple[float, bytes]] = []
        self._arrivals_lock = threading.Lock()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        arrived = time.time()
        with self._arrivals_lock:
            self.arrivals.append((arrived, bytes(message.payload)))
        super()._on_message(client, userdata, message)

    def taken(self) -> list[tuple[float, bytes]]:
        """The (arrival time, payload) pairs so far, and forget them."""
        with self._arrivals_lock:
            taken, self.arrivals = self.arrivals, []
        return taken


def counters(daemon: DaemonProcess) -> tuple[float, dict[str, int]]:
    """The daemon's counters and the monotonic time they were read."""
    return time.monotonic(), daemon.status()["counters"]


@dataclass(frozen=True)
class DaemonRun:
    fps: float  # frames processed per second over the window
    captured: int
    dropped: int
    pose_ms: tuple[float, float]  # the daemon's own pose stage, p50 and p99 (its last 600 frames)
    glass_to_mqtt_ms: list[float]  # per classification received (what a camera sees: realtime pace)
    result_latency_ms: list[float]  # capture -> result made, as the daemon reports it


def run_daemon(
    model: PoseBundle, work: Path, video: Path, pace: str, seconds: float, cpus: set[int], warmup_s: float
) -> DaemonRun:
    """The daemon on ``cpus`` looping ``video`` at ``pace`` and publishing, over ``seconds``."""
    work.mkdir(parents=True, exist_ok=True)
    with Mosquitto() as broker, TimedSubscriber(broker.port, "+/+/classification") as subscriber:
        config = daemon_config(model, work, [video], loop=True, pace=pace, mqtt_port=broker.port)
        with DaemonProcess(config, work, cpus=cpus) as daemon:
            time.sleep(warmup_s)  # past the first frames (graph warm-up, MQTT connect, first page)
            began, before = counters(daemon)
            subscriber.taken()
            time.sleep(seconds)
            ended, after = counters(daemon)
            arrivals = subscriber.taken()
            pose = daemon.status()["stages"]["pose"]
    glass, reported = [], []
    for arrived, payload in arrivals:
        result = json.loads(payload)
        captured = result["ts"] - result["latency_ms"] / 1000.0
        glass.append((arrived - captured) * 1000.0)
        reported.append(result["latency_ms"])
    processed = after["frames_processed"] - before["frames_processed"]
    return DaemonRun(
        processed / (ended - began),
        after["frames_captured"] - before["frames_captured"],
        after["frames_dropped"] - before["frames_dropped"],
        (pose["p50_ms"], pose["p99_ms"]),
        glass,
        reported,
    )


@dataclass(frozen=True)
class OneCoreNumbers:
    cpu: int
    size: tuple[int, int]
    source_fps: float
    bare_fps: float
    bare_pose_ms: tuple[float, float]  # the bare loop's pose time on the core, p50 ("one pose time") and p99
    overhead_ms: tuple[float, float]
    capacity: DaemonRun  # pace fast
    camera: DaemonRun  # pace realtime

    def rows(self) -> list[Row]:
        what = f"one core, {self.size[0]}×{self.size[1]}"
        bare = "bare OpenCV + MediaPipe loop, same core"
        pose_time = "one pose time on the core (bare loop's median)"
        one_pose = self.bare_pose_ms[0]
        goal = one_pose + NO_QUEUE_MARGIN_MS
        glass = p50_p99_ms([ms / 1000 for ms in self.camera.glass_to_mqtt_ms])
        received = len(self.camera.glass_to_mqtt_ms)
        return [
            Row(
                "device",
                f"{what}: daemon, every frame (pace fast)",
                self.capacity.fps,
                "frames/s",
                self.bare_fps,
                bare,
            ),
            Row(
                "device",
                f"{what}: per-frame overhead without pose, p50",
                self.overhead_ms[0],
                "ms",
                one_pose,
                pose_time,
            ),
            Row(
                "device",
                f"{what}: per-frame overhead without pose, p99",
                self.overhead_ms[1],
                "ms",
                one_pose,
                pose_time,
            ),
            Row(
                "device",
                f"{what}: glass-to-MQTT latency p50 ({self.source_fps:.0f} frames/s, {received} results)",
                glass[0],
                "ms",
                goal,
                "one pose time + 10 ms",
            ),
            Row(
                "device", f"{what}: glass-to-MQTT latency p99", glass[1], "ms", goal, "one pose time + 10 ms"
            ),
        ]

    def details(self) -> list[str]:
        camera, capacity = self.camera, self.capacity
        reported = p50_p99_ms([ms / 1000 for ms in camera.result_latency_ms])
        return [
            f"one core (cpu {self.cpu}), {self.size[0]}x{self.size[1]}: bare loop {self.bare_fps:.1f} "
            f"frames/s, pose p50 {self.bare_pose_ms[0]:.1f} ms, p99 {self.bare_pose_ms[1]:.1f} ms",
            f"pace fast: {capacity.fps:.1f} frames/s; the daemon's pose stage p50 {capacity.pose_ms[0]} ms, "
            f"p99 {capacity.pose_ms[1]} ms",
            f"pace realtime ({self.source_fps:.0f} frames/s): {camera.fps:.1f} frames/s processed, "
            f"{camera.dropped} of {camera.captured} frames dropped (newest frame wins); pose stage p50 "
            f"{camera.pose_ms[0]} ms, p99 {camera.pose_ms[1]} ms; capture -> result made (the daemon's "
            f"latency_ms) p50 {reported[0]:.1f} ms, p99 {reported[1]:.1f} ms",
        ]


def measure(
    model: PoseBundle,
    work: Path,
    *,
    seconds: float = 30.0,
    overhead_frames: int = 1000,
    video_frames: int | None = None,
    cpu: int = 0,
    warmup_s: float = 5.0,
) -> OneCoreNumbers:
    """Parts 1-3 of the module's docstring, everything of the kiosk on core ``cpu``; the video is
    the kiosk's (:func:`kiosk_video`), its first ``video_frames`` when given."""
    from device.sources import VideoFileSource

    work.mkdir(parents=True, exist_ok=True)
    video = kiosk_video(work, video_frames)
    with VideoFileSource(video) as opened:
        source_fps = opened.fps
    cpus = {cpu}
    bare = on_cores(cpus, bare_loop, [video])
    bare_pose_ms = p50_p99_ms(bare.pose_s)
    with Mosquitto() as broker:
        costs = on_cores(
            cpus,
            overhead,
            model.bundle,
            model.public_key,
            work,
            broker.port,
            OutboxSection().synchronous,
            bare_pose_ms[0] / 1000,
            overhead_frames,
        )
    capacity = run_daemon(model, work / "fast", video, "fast", seconds, cpus, warmup_s)
    camera = run_daemon(model, work / "realtime", video, "realtime", seconds, cpus, warmup_s)
    return OneCoreNumbers(
        cpu, KIOSK_SIZE, source_fps, bare.fps, bare_pose_ms, p50_p99_ms(costs), capacity, camera
    )
