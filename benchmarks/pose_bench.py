"""Pose detection throughput: MediaPipe's PoseLandmarker (offline full model) on the sample videos.

Each video runs in video mode (tracking, as the kiosk and ``trainer extract`` run it) at its native
size and resized to 640×480, the size a kiosk camera would typically deliver. Only ``detect`` is
timed (decoding, colour conversion and resizing are not), and the first frame is left out because
it includes MediaPipe's lazy initialisation; a fresh estimator per run keeps the runs independent.
MediaPipe itself is the baseline of everything else, so these rows have none (the device
benchmark compares the daemon with a bare MediaPipe loop).

Run: ``python -m benchmarks pose``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2

from benchmarks import command
from benchmarks.rows import Row, render_text
from benchmarks.samples import VIDEOS
from device.pose import PoseEstimator, PoseOptions, offline_task_path
from device.sources import VideoFileSource

KIOSK_SIZE = (640, 480)  # width, height


@dataclass(frozen=True)
class PoseRun:
    video: str
    size: str
    frames: int  # timed frames
    seconds: float  # spent in ``detect``


@dataclass(frozen=True)
class PoseNumbers:
    runs: list[PoseRun]

    def rows(self) -> list[Row]:
        return [
            Row(
                "pose", f"detect, {r.video} at {r.size} ({r.frames} frames)", r.frames / r.seconds, "frames/s"
            )
            for r in self.runs
        ]


def run_video(video: Path, options: PoseOptions, size: tuple[int, int] | None) -> PoseRun:
    """One video at one size (its own when ``size`` is None) through a fresh estimator."""
    with VideoFileSource(video) as source, PoseEstimator(options, mode="video") as estimator:
        label = "{}x{}".format(*(size or (source.width, source.height)))
        timed, seconds = 0, 0.0
        for frame in source:
            image = cv2.resize(frame.image, size, interpolation=cv2.INTER_AREA) if size else frame.image
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            started = time.perf_counter()
            estimator.detect(rgb, frame.timestamp_ms)
            if frame.frame_number > 1:
                seconds += time.perf_counter() - started
                timed += 1
    return PoseRun(video.name, label, timed, seconds)


def measure() -> PoseNumbers:
    options = PoseOptions(model_path=offline_task_path())
    return PoseNumbers([run_video(video, options, size) for video in VIDEOS for size in (None, KIOSK_SIZE)])


def main(argv: list[str] | None = None) -> int:
    command("pose", __doc__).parse_args(argv)
    print(render_text(measure().rows()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
