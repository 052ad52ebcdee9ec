"""Shared test fixtures: where the real sample data lives, and small pose builders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from device.keypoints import JOINT_INDEX, empty_points
from device.pose import offline_task_path
from trainer.recipes import PoseBundle, pose_bundle

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared sample data (videos, annotations, keypoints); tests read it in place."""
    if not (DATA / "README.md").exists():
        pytest.fail(f"sample data not found at {DATA}: the repository expects ../shared/data beside it")
    return DATA


@pytest.fixture(scope="session")
def squats_reference(data_dir: Path) -> np.ndarray:
    """Reference BlazePose landmarks of squats.mp4 as (65, 33, 5) keypoints, visibility 1."""
    ref = np.array(json.loads((data_dir / "keypoints" / "squats.reference_blazepose.json").read_text()))
    points = empty_points(len(ref))
    points[:, :, :3] = ref
    points[:, :, 3] = 1.0
    points[:, :, 4] = 1.0
    return points


@pytest.fixture(scope="session")
def task_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline pose model, built once per test session into a private cache."""
    return offline_task_path(tmp_path_factory.mktemp("pose-cache"))


def pose(**joints: tuple[float, float]) -> np.ndarray:
    """One frame (1, 33, 5) with the named joints at (x, y) pixels, visibility 1, the rest NaN."""
    points = empty_points(1)
    for name, (x, y) in joints.items():
        points[0, JOINT_INDEX[name]] = (x, y, 0.0, 1.0, 1.0)
    return points


SignedModel = PoseBundle  # a real bundle trained by the trainer's commands, and the keys around it


@pytest.fixture(scope="session")
def pose_model(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> PoseBundle:
    """A per-frame 20-pose classifier from the BODY-25 table: keygen -> dataset -> train -> export."""
    work = tmp_path_factory.mktemp("pose-model")
    return pose_bundle(data_dir / "keypoints" / "BodyPose_Dataset.csv", work, version="1.0.0")
