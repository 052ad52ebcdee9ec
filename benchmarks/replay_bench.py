"""Replay throughput against the bare MediaPipe loop, and what resampling a window costs.

``replay``: every frame of the sample videos through :class:`device.classifier.Classifier` (pose,
time window, features, the demo's pose model, smoothing) against OpenCV decoding + MediaPipe
alone on the same frames, in the same run (target: at least 0.95×). Each side runs twice,
alternating, and its faster run counts, so a burst of load elsewhere hits both alike.

``resample``: a window model of 30 samples at 30 frames/s (1 s) is fed the squats reference
landmarks at 30 and at 10 frames/s; the cost of sampling the held frames at the model's rate, per
window, is shown next to the cost of the window's features (per-frame features plus pooling),
the work it precedes.

Run: ``python -m benchmarks replay``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import command
from benchmarks.daemon_process import train_model
from benchmarks.device_bench import bare_loop_fps
from benchmarks.rows import Row, render_text
from benchmarks.samples import VIDEOS, reference_points
from benchmarks.timing import p50_p99_ms
from device.classifier import Classifier
from device.features import FeatureEngine, FeatureSpec, WindowSpec, window_features
from device.sources import VideoFileSource
from device.window import TimeWindow
from trainer.recipes import PoseBundle

RESAMPLE_WINDOW = WindowSpec(size=30, stride=1, fps=30.0)


@dataclass(frozen=True)
class ReplayNumbers:
    frames: int
    replay_fps: float
    bare_fps: float
    resample_ms: dict[float, float]  # kiosk frame rate -> p50 ms per window
    features_ms: float  # p50 ms of one window's features

    def rows(self) -> list[Row]:
        rows = [
            Row(
                "replay",
                f"replay with pose, {self.frames} frames of {len(VIDEOS)} videos",
                self.replay_fps,
                "frames/s",
                self.bare_fps,
                "bare OpenCV + MediaPipe loop",
            )
        ]
        rows += [
            Row(
                "replay",
                f"resample to a 30-sample window from {rate:g} frames/s (p50)",
                ms,
                "ms",
                self.features_ms,
                "that window's features (p50)",
            )
            for rate, ms in self.resample_ms.items()
        ]
        return rows


def replay_fps(model: PoseBundle, videos: Sequence[Path]) -> tuple[float, int]:
    """Frames per second through the Classifier, every frame of ``videos``."""
    frames, began = 0, time.perf_counter()
    with Classifier.open(model.bundle, [model.public_key]) as classifier:
        for video in videos:
            with VideoFileSource(video) as source:
                for frame in source:
                    classifier.process(frame)  # a new file starts a new clip
                    frames += 1
    return frames / (time.perf_counter() - began), frames


def resample_costs(
    rates: Sequence[float] = (30.0, 10.0), windows: int = 2000
) -> tuple[dict[float, float], float]:
    """p50 ms per emitted window of sampling, per kiosk rate; and p50 ms of the features of one."""
    points = reference_points(windows * 3 + 60)
    costs: dict[float, float] = {}
    for rate in rates:
        window = TimeWindow(RESAMPLE_WINDOW)
        spent = []
        for n, frame in enumerate(points, start=1):
            began = time.perf_counter()
            emitted = window.push(n, n * 1000.0 / rate, 0.0, frame)
            if emitted is not None:
                spent.append(time.perf_counter() - began)
        costs[rate] = p50_p99_ms(spent)[0]
    engine = FeatureEngine(FeatureSpec())
    sample = points[:30]
    spent = []
    for _ in range(windows):
        began = time.perf_counter()
        window_features(engine.compute(sample), RESAMPLE_WINDOW)
        spent.append(time.perf_counter() - began)
    return costs, p50_p99_ms(spent)[0]


def measure(model: PoseBundle, videos: Sequence[Path] = VIDEOS, windows: int = 2000) -> ReplayNumbers:
    bare, replayed, frames = 0.0, 0.0, 0
    for _ in range(2):
        bare = max(bare, bare_loop_fps(list(videos))[0])
        fps, frames = replay_fps(model, videos)
        replayed = max(replayed, fps)
    resample, features = resample_costs(windows=windows)
    return ReplayNumbers(frames, replayed, bare, resample, features)


def main(argv: list[str] | None = None) -> int:
    parser = command("replay", __doc__)
    parser.add_argument("--windows", type=int, default=2000, help="windows timed for the resampling cost")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        numbers = measure(train_model(Path(tmp)), windows=args.windows)
    print(render_text(numbers.rows()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
