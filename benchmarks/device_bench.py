"""The daemon's own costs, each next to a baseline measured in the same run.

1. Per-frame overhead of everything except pose detection — window update, features, inference,
   outbox write (SQLite, synchronous=FULL), hand-off to the publisher (connected to a real local
   mosquitto) — p50/p99 in ms, on real keypoints, for a per-frame model and a 30-frame window.
2. End-to-end frames/s of the daemon on the sample videos (``pace = "fast"``: every frame goes
   through) against a bare loop of OpenCV read + MediaPipe detect on the same frames.
3. Resident memory while the daemon loops a video for ``--soak-seconds`` (default 600), sampled
   every 10 s: start, end, max.

Run: ``python -m benchmarks.device_bench [--soak-seconds N]`` (``make bench`` runs parts 1 and 2
and a 60 s soak).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from device.classifier import Classifier, LoadedModel, Smoother
from device.config import parse_config
from device.daemon import build
from device.keypoints import empty_points
from device.model.bundle import load_public_key, open_bundle
from device.model.runtimes import load_runtime
from device.outbox import Outbox
from device.pose import PoseEstimator
from device.publisher import MqttPublisher
from device.sources import VideoFileSource
from device.status import StatusBoard
from device.window import RollingWindow
from trainer.recipes import PoseBundle, pose_bundle

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VIDEOS = [DATA / "videos" / name for name in ("squats.mp4", "dance.mp4", "example_video.webm")]


def reference_points(frames: int) -> np.ndarray:
    ref = np.array(json.loads((DATA / "keypoints" / "squats.reference_blazepose.json").read_text()))
    points = empty_points(len(ref))
    points[:, :, :3] = ref
    points[:, :, 3:] = 1.0
    return np.tile(points, (-(-frames // len(ref)), 1, 1))[:frames]


def percentiles(seconds: list[float]) -> str:
    p50, p99 = np.percentile(np.array(seconds) * 1000, [50, 99])
    return f"p50 {p50:6.3f} ms   p99 {p99:6.3f} ms"


def overhead(
    bundle_path: Path,
    public_key: Path,
    work: Path,
    broker_port: int,
    synchronous: str,
    pose_gap_s: float,
    frames: int = 1000,
) -> list[float]:
    """Seconds per frame for window -> features -> model -> outbox -> publisher, excluding pose.

    ``pose_gap_s`` is idle time between frames standing in for pose detection (about 18 ms here):
    in the daemon the publisher's thread sends and acknowledges during it. With 0 every frame
    competes with the publisher for the interpreter, the worst case.
    """
    bundle = open_bundle(bundle_path, [load_public_key(public_key)])
    loaded = LoadedModel(bundle, load_runtime(bundle))
    classifier = Classifier(loaded, Smoother("majority", 5))
    window = RollingWindow(loaded.window_size, loaded.stride)
    config = parse_config(
        {"source": {"kind": "camera"}, "mqtt": {"port": broker_port, "stats_interval_s": 3600}}, env={}
    )
    status = StatusBoard("bench")
    with Outbox(work / f"outbox-{synchronous}.sqlite", max_rows=100_000, synchronous=synchronous) as outbox:
        publisher = MqttPublisher(config.mqtt, "bench", outbox, status)
        publisher.start()
        deadline = time.monotonic() + 10
        while not status.snapshot()["mqtt"]["connected"] and time.monotonic() < deadline:
            time.sleep(0.05)
        topic = publisher.topic("classification")
        costs = []
        for n, points in enumerate(reference_points(frames), start=1):
            began = time.perf_counter()
            ready = window.push(n, n * 33.3, time.monotonic(), points)
            if ready is not None:
                prediction = classifier.classify(ready)
                payload = prediction.payload()
                seq = outbox.append(topic, payload)
                publisher.notify()
                publisher.set_state({"seq": seq, **payload, "person_present": True})
            costs.append(time.perf_counter() - began)
            time.sleep(pose_gap_s)
        publisher.stop()
    return costs


def bare_loop_fps(videos: list[Path]) -> tuple[float, int]:
    """OpenCV read + BGR->RGB + MediaPipe detect, nothing else: the physical limit."""
    frames, began = 0, time.perf_counter()
    for video in videos:
        with VideoFileSource(video) as source, PoseEstimator(mode="video") as pose:
            for frame in source:
                pose.detect(cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB), frame.timestamp_ms)
                frames += 1
    return frames / (time.perf_counter() - began), frames


def daemon_config(model: PoseBundle, work: Path, videos: list[Path], *, loop: bool, pace: str) -> dict:
    return {
        "device": {"id": "bench", "state_dir": str(work / "state")},
        "source": {"kind": "file", "paths": [str(v) for v in videos], "loop": loop, "pace": pace},
        "model": {"bundle": str(model.bundle), "trusted_keys": [str(model.public_key)]},
        "mqtt": {"enabled": False},
        "http": {"port": 0},
    }


def daemon_fps(model: PoseBundle, work: Path, videos: list[Path]) -> tuple[float, int]:
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


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak(model: PoseBundle, work: Path, seconds: float) -> list[tuple[float, float]]:
    config = daemon_config(model, work, [VIDEOS[1]], loop=True, pace="realtime")
    daemon = build(parse_config(config, env={}))
    daemon.start()
    samples = []
    began = time.monotonic()
    while (elapsed := time.monotonic() - began) < seconds:
        samples.append((elapsed, rss_mb()))
        time.sleep(min(10.0, max(seconds - elapsed, 0.1)))
    samples.append((time.monotonic() - began, rss_mb()))
    frames = daemon.status.snapshot()["counters"]["frames_processed"]
    daemon.stop()
    print(f"  soak: {frames} frames in {seconds:.0f} s")
    return samples


def main(soak_seconds: float = 60.0) -> None:
    from tests.broker import Mosquitto  # the real broker the tests use, on a free loopback port

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("training a per-frame pose model for the benchmark ...", flush=True)
        model = pose_bundle(DATA / "keypoints" / "BodyPose_Dataset.csv", work / "model")

        print("\n1. per-frame overhead without pose (window, features, model, outbox, publish)")
        for synchronous in ("full", "normal"):
            for gap in (0.0, 0.018):
                with Mosquitto() as broker:
                    costs = overhead(model.bundle, model.public_key, work, broker.port, synchronous, gap)
                print(
                    f"   outbox {synchronous:<6} pose gap {gap * 1000:2.0f} ms  {percentiles(costs)}"
                    "   (target p99 < 2 ms)"
                )

        print("\n2. end-to-end frames/s on the sample videos")
        bare, frames = bare_loop_fps(VIDEOS)
        fps, processed = daemon_fps(model, work, VIDEOS)
        print(f"   bare loop (OpenCV read + MediaPipe detect): {bare:6.1f} frames/s ({frames} frames)")
        print(f"   daemon (capture thread, pose, window, model): {fps:6.1f} frames/s ({processed} frames)")
        print(f"   ratio {fps / bare:.2f}x   (target >= 0.95x)")

        if soak_seconds > 0:
            print(f"\n3. resident memory while looping dance.mp4 for {soak_seconds:.0f} s")
            samples = soak(model, work, soak_seconds)
            values = [mb for _, mb in samples]
            print(f"   RSS start {values[0]:.0f} MB, end {values[-1]:.0f} MB, max {max(values):.0f} MB")
            print("   " + ", ".join(f"{t:.0f}s:{mb:.0f}" for t, mb in samples))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="0 skips the memory soak")
    main(parser.parse_args().soak_seconds)
