"""The feature engine: hand-computed geometry, invariances, BODY-25 agreement, NaN, windows."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import pose
from hypothesis import given, settings
from hypothesis import strategies as st

from device.features import (
    ANGLE_NAMES,
    FeatureEngine,
    FeatureSpec,
    FeatureSpecError,
    WindowSpec,
    describe,
    window_features,
    window_names,
)
from device.keypoints import (
    BODY25_JOINTS,
    JOINT_INDEX,
    VISIBILITY,
    blazepose_to_body25,
    empty_points,
    read_body25_table,
)

ALL = FeatureSpec(presets=("seed",))


def features(points: np.ndarray, spec: FeatureSpec = ALL) -> dict[str, np.ndarray]:
    engine = FeatureEngine(spec)
    values = engine.compute(points)
    return {name: values[:, i] for i, name in enumerate(engine.names)}


UPRIGHT = dict(
    left_shoulder=(90, 0),
    right_shoulder=(110, 0),
    left_hip=(90, 100),
    right_hip=(110, 100),
    left_elbow=(90, 50),
    left_wrist=(140, 50),  # forearm at a right angle to the upper arm
    right_elbow=(110, 50),
    right_wrist=(60, 50),
    left_knee=(90, 150),
    left_ankle=(90, 200),  # straight leg
    left_foot_index=(120, 200),  # foot at a right angle to the shin
    right_knee=(110, 150),
    right_ankle=(110, 100),  # folded back onto the hip: collinear, 0 degrees
    nose=(100, -30),
)


def test_hand_computed_angles() -> None:
    f = features(pose(**UPRIGHT))
    assert f["angle.left_elbow"][0] == pytest.approx(90.0)
    assert f["angle.left_knee"][0] == pytest.approx(180.0)
    assert f["angle.left_ankle"][0] == pytest.approx(90.0)
    assert f["angle.right_knee"][0] == pytest.approx(0.0, abs=1e-9)
    assert f["angle.left_shoulder"][0] == pytest.approx(0.0, abs=1e-9)  # arm hangs along the trunk
    assert f["angle.right_elbow"][0] == pytest.approx(90.0)
    assert f["angle.trunk_lean"][0] == pytest.approx(0.0, abs=1e-9)


def test_trunk_lean_of_a_horizontal_trunk_is_90_degrees() -> None:
    f = features(
        pose(left_shoulder=(0, 90), right_shoulder=(0, 110), left_hip=(100, 90), right_hip=(100, 110))
    )
    assert f["angle.trunk_lean"][0] == pytest.approx(90.0)


def test_normalized_coordinates_and_distances_in_torso_lengths() -> None:
    f = features(pose(**UPRIGHT))
    # origin mid_hip (100, 100); torso = |neck (100, 0) - mid_hip| = 100 px
    assert f["joint.left_shoulder.x_norm"][0] == pytest.approx(-0.1)
    assert f["joint.left_shoulder.y_norm"][0] == pytest.approx(-1.0)
    assert f["joint.left_ankle.y_norm"][0] == pytest.approx(1.0)
    assert f["dist.left_wrist.right_wrist"][0] == pytest.approx(0.8)
    assert f["dist.left_ankle.right_ankle"][0] == pytest.approx(np.hypot(20, 100) / 100)


def test_seed_preset_against_the_plumb_line() -> None:
    f = features(pose(**UPRIGHT))
    # plumb line: the vertical x = 100 from neck to mid_hip
    assert f["seed.dist.left_wrist_to_plumb_line"][0] == pytest.approx(0.4)
    assert f["seed.dist.right_wrist_to_plumb_line"][0] == pytest.approx(0.4)
    assert f["seed.dist.nose_to_plumb_line"][0] == pytest.approx(0.0, abs=1e-12)
    assert f["seed.angle.left_elbow_left_wrist_to_plumb_line"][0] == pytest.approx(90.0)
    assert f["seed.angle.left_hip_left_knee_to_plumb_line"][0] == pytest.approx(0.0, abs=1e-9)
    assert f["seed.angle.right_knee_right_ankle_to_plumb_line"][0] == pytest.approx(180.0)
    # each forearm has its own vector (the seed used the right one for both)
    assert f["seed.angle.left_shoulder_left_elbow_to_left_elbow_left_wrist"][0] == pytest.approx(90.0)
    assert f["seed.angle.right_shoulder_right_elbow_to_right_elbow_right_wrist"][0] == pytest.approx(90.0)


def test_feature_names_follow_the_contract() -> None:
    names = FeatureEngine(FeatureSpec(z=True)).names
    assert names[:3] == ("joint.nose.x_norm", "joint.nose.y_norm", "joint.nose.z_norm")
    assert {f"angle.{a}" for a in ANGLE_NAMES} <= set(names)
    assert "dist.left_wrist.right_wrist" in names
    assert len(set(names)) == len(names)
    for name in FeatureEngine(ALL).names:
        assert describe(name)  # every column has a definition


# ----------------------------------------------------------------------------- invariances

finite = st.floats(min_value=-5000, max_value=5000, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    dx=finite,
    dy=finite,
    scale=st.floats(min_value=0.05, max_value=50),
)
def test_normalized_features_and_angles_do_not_depend_on_position_or_size(
    seed: int, dx: float, dy: float, scale: float
) -> None:
    rng = np.random.default_rng(seed)
    points = empty_points(3)
    points[:, :, :2] = rng.uniform(0, 1000, size=(3, 33, 2))
    points[:, :, 3] = 1.0
    moved = points.copy()
    moved[:, :, :2] = points[:, :, :2] * scale + (dx, dy)
    engine = FeatureEngine(ALL)
    np.testing.assert_allclose(engine.compute(moved), engine.compute(points), rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), turn=st.floats(min_value=-np.pi, max_value=np.pi))
def test_joint_angles_do_not_depend_on_rotation(seed: int, turn: float) -> None:
    rng = np.random.default_rng(seed)
    points = empty_points(2)
    points[:, :, :2] = rng.uniform(0, 1000, size=(2, 33, 2))
    points[:, :, 3] = 1.0
    c, s = np.cos(turn), np.sin(turn)
    turned = points.copy()
    turned[:, :, :2] = points[:, :, :2] @ np.array([[c, s], [-s, c]])
    spec = FeatureSpec(normalized=(), angles=tuple(a for a in ANGLE_NAMES if a != "trunk_lean"), distances=())
    engine = FeatureEngine(spec)
    np.testing.assert_allclose(engine.compute(turned), engine.compute(points), atol=1e-6)


# ----------------------------------------------------------------------------- BODY-25


def _as_body25_table(points: np.ndarray, path: Path, label: str) -> None:
    """Write BlazePose frames as a BODY-25 table: normalized, y up, (0, 0) for missing joints."""
    body25 = blazepose_to_body25(points)
    xy = body25[:, :, :2] / 1000.0
    xy[:, :, 1] *= -1  # y points up in these tables
    xy = np.nan_to_num(xy, nan=0.0)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "accuracy"] + [f"{a}{i}" for i in range(25) for a in ("x", "y")])
        for frame in xy:
            writer.writerow([label, 20.0, *frame.reshape(-1).tolist()])


def test_body25_and_blazepose_inputs_of_the_same_pose_give_the_same_features(
    squats_reference: np.ndarray, tmp_path: Path
) -> None:
    table = tmp_path / "squats_body25.csv"
    _as_body25_table(squats_reference, table, "Squat")
    imported = read_body25_table(table)
    assert list(imported.labels) == ["Squat"] * len(squats_reference)
    body25_joints = [j for j in BODY25_JOINTS if j in JOINT_INDEX]
    spec = FeatureSpec(normalized=tuple(body25_joints), presets=("seed",))
    engine = FeatureEngine(spec)
    from_blazepose = engine.compute(squats_reference)
    from_body25 = engine.compute(imported.points)
    assert not np.isnan(from_blazepose).any()
    np.testing.assert_allclose(from_body25, from_blazepose, rtol=1e-6, atol=1e-6)


def test_the_shared_body25_dataset_gives_features_in_range(data_dir: Path) -> None:
    table = read_body25_table(data_dir / "keypoints" / "BodyPose_Dataset.csv")
    assert len(table.labels) == 10681
    assert len(set(table.labels)) == 20
    standing = table.points[table.labels == "Stand"]
    nose_y = standing[:, JOINT_INDEX["nose"], 1]
    ankle_y = standing[:, JOINT_INDEX["left_ankle"], 1]
    both = ~np.isnan(nose_y) & ~np.isnan(ankle_y)
    assert (nose_y[both] < ankle_y[both]).mean() > 0.95  # imported with y pointing down
    f = features(table.points, FeatureSpec(normalized=(), presets=("seed",)))
    angles = np.concatenate([v for k, v in f.items() if ".angle" in k or k.startswith("angle.")])
    angles = angles[~np.isnan(angles)]
    assert angles.size > 0.8 * len(table.labels) * 30
    assert angles.min() >= 0 and angles.max() <= 180
    # standing people are upright
    lean = f["angle.trunk_lean"][table.labels == "Stand"]
    assert np.nanmedian(lean) < 15


# ----------------------------------------------------------------------------- missing joints


def test_missing_and_invisible_joints_give_nan_without_warnings() -> None:
    points = np.concatenate([pose(**UPRIGHT), empty_points(1)])
    points[0, JOINT_INDEX["left_wrist"], VISIBILITY] = 0.1  # below min_visibility 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = features(points)
    assert np.isnan(f["angle.left_elbow"][0])
    assert np.isnan(f["dist.left_wrist.right_wrist"][0])
    assert f["angle.left_knee"][0] == pytest.approx(180.0)
    assert all(np.isnan(v[1]) for v in f.values())  # no person: every feature NaN


def test_a_degenerate_torso_gives_nan_normalized_coordinates() -> None:
    same = pose(
        left_shoulder=(0, 0), right_shoulder=(10, 0), left_hip=(0, 0), right_hip=(10, 0), nose=(5, -5)
    )
    f = features(same)
    assert np.isnan(f["joint.nose.x_norm"][0])
    assert np.isnan(f["angle.trunk_lean"][0])


# ----------------------------------------------------------------------------- spec


def test_spec_round_trips_and_refuses_unknown_names() -> None:
    spec = FeatureSpec(normalized=("nose", "left_hip"), distances=(("left_wrist", "right_wrist"),), z=True)
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(FeatureSpecError, match="'left_wing'"):
        FeatureSpec(normalized=("left_wing",))
    with pytest.raises(FeatureSpecError, match="'colour'"):
        FeatureSpec.from_dict({**spec.to_dict(), "colour": "red"})
    with pytest.raises(FeatureSpecError, match="version"):
        FeatureSpec.from_dict({**spec.to_dict(), "version": 99})
    with pytest.raises(FeatureSpecError, match="'wings'"):
        FeatureSpec.from_groups(["angles", "wings"])


# ----------------------------------------------------------------------------- windows


def test_window_flattening_and_pooling() -> None:
    values = np.array([[1.0, -5.0], [2.0, -3.0], [4.0, np.nan], [8.0, -1.0]])
    window = WindowSpec(size=3, stride=1, flatten=True, pool=("mean", "std", "min", "max", "delta"))
    rows = window_features(values, window)
    names = window_names(["a", "b"], window)
    assert rows.shape == (2, len(names))
    first = dict(zip(names, rows[0], strict=True))
    assert (first["f0.a"], first["f1.a"], first["f2.a"]) == (1.0, 2.0, 4.0)
    assert first["f0.b"] == -5.0
    assert first["mean.a"] == pytest.approx(7 / 3)
    assert first["std.a"] == pytest.approx(np.std([1, 2, 4]))  # a standard deviation, not a variance
    assert first["max.b"] == -3.0  # max of negative values stays negative
    assert first["min.b"] == -5.0
    assert first["mean.b"] == pytest.approx(-4.0)  # NaN frames are ignored
    assert first["delta.a"] == 3.0
    assert np.isnan(first["delta.b"])  # the last frame has no value
    second = dict(zip(names, rows[1], strict=True))
    assert second["delta.b"] == pytest.approx(2.0)


def test_window_stride_and_short_input() -> None:
    values = np.arange(20.0).reshape(10, 2)
    assert window_features(values, WindowSpec(size=4, stride=3, pool=("mean",))).shape == (3, 2)
    assert window_features(values[:3], WindowSpec(size=4)).shape[0] == 0
    with pytest.raises(FeatureSpecError):
        WindowSpec(size=0)
    with pytest.raises(FeatureSpecError, match="'median'"):
        WindowSpec(size=3, pool=("median",))
