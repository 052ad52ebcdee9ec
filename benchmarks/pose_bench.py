"""Pose detection throughput: MediaPipe's PoseLandmarker (offline full model) on the sample videos.

Each video runs in video mode (tracking, as the kiosk and ``trainer extract`` run it) at its native
size and resized to 640×480, the size a kiosk camera would typically deliver. Only ``detect`` is
timed (decoding, colour conversion and resizing are not), and the first frame is left out because
it includes MediaPipe's lazy initialisation; a fresh estimator per run keeps the runs independent.

Run: ``python -m benchmarks.pose_bench`` (or ``make bench`` for every benchmark).
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2

from device.pose import PoseEstimator, PoseOptions, offline_task_path
from device.sources import VideoFileSource

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VIDEOS = ("squats.mp4", "dance.mp4", "example_video.webm")
KIOSK_SIZE = (640, 480)  # width, height


def measure(video: Path, options: PoseOptions, size: tuple[int, int] | None) -> tuple[str, int, float]:
    """(size label, timed frames, seconds spent in ``detect``) for one video at one size."""
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
    return label, timed, seconds


def main() -> None:
    options = PoseOptions(model_path=offline_task_path())
    print(f"{'video':<20} {'size':>9} {'frames':>7} {'frames/s':>9} {'ms/frame':>9}")
    for name in VIDEOS:
        for size in (None, KIOSK_SIZE):
            label, frames, seconds = measure(DATA / "videos" / name, options, size)
            per_frame_ms = 1000 * seconds / frames
            print(f"{name:<20} {label:>9} {frames:>7} {frames / seconds:>9.1f} {per_frame_ms:>9.1f}")


if __name__ == "__main__":
    main()
