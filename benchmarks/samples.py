"""The real sample data the benchmarks run on, and the one way they turn it into keypoints.

Every benchmark reads ``../shared/data`` in place (as the tests do); the keypoint benchmarks all
use the reference BlazePose landmarks of ``squats.mp4``, repeated to the size they need, so their
numbers describe the same real poses.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from device.keypoints import empty_points

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
