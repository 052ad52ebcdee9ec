"""Shared test fixtures: where the real sample data lives, and small pose builders."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device.config import Config
from device.daemon import Daemon, build
from device.keypoints import JOINT_INDEX, empty_points
from device.pose import offline_task_path
from trainer.recipes import PoseBundle, fitness_bundle, pose_bundle, step_bundle

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


@pytest.fixture(scope="session")
def pose_model(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> PoseBundle:
    """A per-frame 20-pose classifier from the BODY-25 table: keygen -> dataset -> train -> export."""
    work = tmp_path_factory.mktemp("pose-model")
    # scikit-learn (skops) on the device here; the fleet tests push a TFLite 2.0.0 over it
    table = data_dir / "keypoints" / "BodyPose_Dataset.csv"
    return pose_bundle(table, work, version="1.0.0", extra_export=("--runtime", "sklearn"))


@pytest.fixture(scope="session")
def squats(data_dir: Path) -> Path:
    """squats.mp4: three squats, 65 frames at 5 frames/s; the clip ends as she rises from the third."""
    return data_dir / "videos" / "squats.mp4"


@pytest.fixture(scope="session")
def fitness_model(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> PoseBundle:
    """The squat/push-up key-pose model of ML Kit's samples, with the squat and push-up activities."""
    work = tmp_path_factory.mktemp("fitness-model")
    return fitness_bundle(data_dir / "keypoints" / "fitness_pose_samples.csv", work, version="1.0.0")


@pytest.fixture(scope="session")
def example_keypoints(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, task_path: Path) -> Path:
    """``trainer extract`` of the seed's example video (30 frames/s, 382 frames): its folder."""
    from trainer.__main__ import main as trainer

    out = tmp_path_factory.mktemp("example-keypoints")
    video = data_dir / "videos" / "example_video.webm"
    assert trainer(["extract", str(video), "--out", str(out), "--pose-model", str(task_path)]) == 0
    return out


@pytest.fixture(scope="session")
def step_model(
    tmp_path_factory: pytest.TempPathFactory, data_dir: Path, example_keypoints: Path
) -> PoseBundle:
    """A window-based step classifier (10 frames at 30 frames/s, every 2) from the seed's example."""
    labels = REPO / "examples" / "example_video.labels.toml"
    work = tmp_path_factory.mktemp("step-model")
    return step_bundle(example_keypoints, data_dir / "annotations", labels, work)


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)
    return result


@pytest.fixture
def run_daemon() -> Iterator[Callable[[Config], Daemon]]:
    """Start daemons in-process (``device.daemon.build(config).start()``); all stopped at the end."""
    started: list[Daemon] = []

    def start(config: Config) -> Daemon:
        daemon = build(config)
        started.append(daemon)
        daemon.start()
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def network_address() -> str:
    """An address of this machine that is not loopback (the one its default route leaves from);
    the test is skipped on a machine without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # UDP: nothing is sent, only a route is chosen
        except OSError:
            pytest.skip("this machine has no network address besides loopback")
        address = probe.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("this machine has no network address besides loopback")
    return address
