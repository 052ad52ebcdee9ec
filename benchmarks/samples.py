"""The real sample data the benchmarks run on, and the one way they turn it into keypoints.

Every benchmark reads ``../shared/data`` in place (as the tests do); the keypoint benchmarks all
use the reference BlazePose landmarks of ``squats.mp4``, repeated to the size they need, so their
numbers describe the same real poses.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from device.keypoints import empty_points
from device.sources import VideoFileSource

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VIDEOS = tuple(DATA / "videos" / name for name in ("squats.mp4", "dance.mp4", "example_video.webm"))
BODY25_TABLE = DATA / "keypoints" / "BodyPose_Dataset.csv"


def reference_points(count: int) -> np.ndarray:
    """``count`` frames (count, 33, 5) of the squats reference landmarks, repeated; visibility 1."""
    ref = np.array(json.loads((DATA / "keypoints" / "squats.reference_blazepose.json").read_text()))
    points = empty_points(len(ref))
    points[:, :, :3] = ref
    points[:, :, 3:] = 1.0
    reps = -(-count // len(ref))
    return np.ascontiguousarray(np.tile(points, (reps, 1, 1))[:count])


def side_by_side(left: Path, right: Path, out: Path, height: int = 720) -> Path:
    """Two people in one frame: ``left`` (its own frames, 5 frames/s for ``squats.mp4``) beside
    ``right`` sampled at the same times (every 4th frame of the 20 frames/s ``dance.mp4``), both
    scaled to ``height``; written to ``out`` (MPEG-4) at 5 frames/s."""

    def frames(path: Path) -> list[np.ndarray]:
        with VideoFileSource(path) as source:
            return [cv2.resize(f.image, None, fx=height / f.image.shape[0], fy=height / f.image.shape[0])
                    for f in source]

    lefts, rights = frames(left), frames(right)
    writer = cv2.VideoWriter(
        str(out), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (lefts[0].shape[1] + rights[0].shape[1], height)
    )
    for n, image in enumerate(lefts):
        writer.write(np.hstack([image, rights[(4 * n) % len(rights)]]))
    writer.release()
    return out
