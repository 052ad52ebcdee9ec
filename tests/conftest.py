"""Shared test fixtures: where the real sample data lives, and small pose builders."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from device.keypoints import JOINT_INDEX, empty_points
from device.pose import offline_task_path

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


@dataclass(frozen=True)
class SignedModel:
    """A real bundle trained by the trainer's commands, and the keys around it."""

    bundle: Path
    public_key: Path
    signing_key: Path
    run_dir: Path


@pytest.fixture(scope="session")
def pose_model(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> SignedModel:
    """A per-frame 20-pose classifier from the BODY-25 table: keygen -> dataset -> train -> export."""
    from trainer.__main__ import main as trainer

    work = tmp_path_factory.mktemp("pose-model")
    table = data_dir / "keypoints" / "BodyPose_Dataset.csv"
    steps = [
        ["keygen", "--out", str(work / "keys")],
        [
            "dataset",
            "--body25",
            str(table),
            "--features",
            "angles,seed,distances",
            "--out",
            str(work / "p.parquet"),
        ],
        [
            "train",
            "--dataset",
            str(work / "p.parquet"),
            "--target",
            "label",
            "--split",
            "stratified",
            "--cv",
            "0",
            "--out",
            str(work / "run"),
        ],
        [
            "export",
            str(work / "run"),
            "--out",
            str(work / "model.zip"),
            "--key",
            str(work / "keys" / "signing.key"),
            "--model-id",
            "poses",
            "--version",
            "1.0.0",
        ],
    ]
    for step in steps:
        assert trainer(step) == 0, f"trainer {step[0]} failed"
    return SignedModel(
        work / "model.zip", work / "keys" / "signing.pub", work / "keys" / "signing.key", work / "run"
    )
