"""The keypoint model: frame files, the seed's folder layout, BODY-25 conversion, pose tables."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from device.keypoints import (
    BODY25_JOINTS,
    JOINT_INDEX,
    JOINTS,
    KeypointFileError,
    KeypointSequence,
    blazepose_to_body25,
    body25_to_blazepose,
    empty_points,
    read_blazepose_table,
    read_body25_table,
    read_keypoints,
    sequence_records,
    write_frames_jsonl,
)


def test_joints_are_mediapipe_blazepose_in_order() -> None:
    assert len(JOINTS) == 33
    assert JOINTS[0] == "nose" and JOINTS[11] == "left_shoulder" and JOINTS[32] == "right_foot_index"
    assert JOINT_INDEX["right_hip"] == 24


def _sequence(points: np.ndarray) -> KeypointSequence:
    n = len(points)
    return KeypointSequence(
        sequence_id="walk",
        frame_numbers=np.arange(1, n + 1),
        timestamps_ms=np.arange(n) * 33.3,
        sizes=np.tile([720, 1280], (n, 1)),
        points=points,
    )


def test_frame_file_round_trip_keeps_frames_without_a_person(
    squats_reference: np.ndarray, tmp_path: Path
) -> None:
    points = squats_reference[:5].copy()
    points[2] = np.nan  # nobody in frame 3
    path = tmp_path / "walk.frames.jsonl"
    assert write_frames_jsonl(sequence_records(_sequence(points)), path) == 5
    assert not (tmp_path / "walk.frames.jsonl.partial").exists()
    lines = path.read_text().splitlines()
    third = json.loads(lines[2])
    assert third["joint_positions"] == {} and third["frame_number"] == 3
    first = json.loads(lines[0])
    assert set(first) == {
        "sequence_id",
        "sequence_source",
        "frame_number",
        "timestamp_ms",
        "image_dimensions",
        "joint_positions",
    }
    nose = first["joint_positions"]["nose"]
    assert nose["x_normalized"] == pytest.approx(nose["x"] / 1280)
    assert nose["y_normalized"] == pytest.approx(nose["y"] / 720)

    back = read_keypoints(path)
    assert back.sequence_id == "walk"
    assert back.frame_numbers.tolist() == [1, 2, 3, 4, 5]
    assert back.has_person.tolist() == [True, True, False, True, True]
    np.testing.assert_allclose(back.points, points, equal_nan=True)
    with pytest.raises(ValueError):
        back.points[0, 0, 0] = 1.0  # arrays that cross stages are read-only


def test_seed_folder_layout_is_scaled_to_pixels(tmp_path: Path) -> None:
    folder = tmp_path / "example_video-1690000000"
    folder.mkdir()
    for n in (2, 1, 10):  # unordered on disk, numeric order on reading
        frame = {
            "sequence_id": 1690000000,
            "sequence_source": "mediapipe",
            "frame_number": n,
            "image_dimensions": {"height": 720, "width": 1280},
            "joint_positions": {}
            if n == 2
            else {"nose": {"x": 0.5, "y": 0.25, "z": -0.1, "x_normalized": 3.0, "y_normalized": 1.0}},
        }
        (folder / f"keypoints-{n:04d}.json").write_text(json.dumps(frame))
    sequence = read_keypoints(folder)
    assert sequence.frame_numbers.tolist() == [1, 2, 10]
    assert sequence.points[0, 0, :3].tolist() == [640.0, 180.0, -128.0]
    assert not sequence.has_person[1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"frame_number": 1, "image_dimensions": {"height": 1, "width": 1}}\n{oops\n',
            r"bad\.frames\.jsonl:2",
        ),
        ('{"frame_number": 1}\n', "image_dimensions"),
        (
            '{"frame_number": 1, "image_dimensions": {"height": 1, "width": 1},'
            ' "joint_positions": {"left_wing": {"x": 1, "y": 2}}}\n',
            "left_wing",
        ),
    ],
)
def test_malformed_frame_files_name_the_file_and_the_problem(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.frames.jsonl"
    path.write_text(content)
    with pytest.raises(KeypointFileError, match=message):
        read_keypoints(path)


def test_missing_inputs_are_reported_by_name(tmp_path: Path) -> None:
    with pytest.raises(KeypointFileError, match="nothing.frames.jsonl"):
        read_keypoints(tmp_path / "nothing.frames.jsonl")
    with pytest.raises(KeypointFileError, match="no keypoints-NNNN.json"):
        read_keypoints(tmp_path)


def test_blazepose_to_body25_uses_midpoints_for_neck_and_mid_hip(squats_reference: np.ndarray) -> None:
    body25 = blazepose_to_body25(squats_reference)
    assert body25.shape == (65, 25, 5)
    neck = body25[:, BODY25_JOINTS.index("neck")]
    shoulders = squats_reference[:, [JOINT_INDEX["left_shoulder"], JOINT_INDEX["right_shoulder"]]]
    np.testing.assert_allclose(neck, shoulders.mean(axis=1))
    big_toe = body25[:, BODY25_JOINTS.index("left_big_toe")]
    np.testing.assert_array_equal(big_toe, squats_reference[:, JOINT_INDEX["left_foot_index"]])
    assert np.isnan(body25[:, BODY25_JOINTS.index("right_small_toe")]).all()
    back = body25_to_blazepose(body25)
    assert np.isnan(back[:, JOINT_INDEX["left_pinky"]]).all()
    np.testing.assert_array_equal(
        back[:, JOINT_INDEX["right_knee"]], squats_reference[:, JOINT_INDEX["right_knee"]]
    )


def test_body25_table_import_flips_y_and_marks_missing_joints(tmp_path: Path) -> None:
    header = "label,accuracy," + ",".join(f"x{i},y{i}" for i in range(25))
    coords = [0.0] * 50
    coords[0:2] = [0.1, 0.5]  # nose, y up
    coords[2 * 11 : 2 * 11 + 2] = [0.2, -0.4]  # right ankle below
    path = tmp_path / "poses.csv"
    path.write_text(header + "\nStand,20.0," + ",".join(map(str, coords)) + "\n")
    table = read_body25_table(path)
    assert table.labels.tolist() == ["Stand"]
    nose, ankle = table.points[0, JOINT_INDEX["nose"]], table.points[0, JOINT_INDEX["right_ankle"]]
    assert nose[:2].tolist() == [0.1, -0.5] and ankle[:2].tolist() == [0.2, 0.4]
    assert np.isnan(table.points[0, JOINT_INDEX["left_knee"]]).all()  # (0, 0) = missing

    (tmp_path / "wrong.csv").write_text("label,x0,y0\nA,1,2\n")
    with pytest.raises(KeypointFileError, match=r"wrong\.csv"):
        read_body25_table(tmp_path / "wrong.csv")


def test_empty_points_is_all_nan() -> None:
    assert np.isnan(empty_points(4)).all() and empty_points(4).shape == (4, 33, 5)


def test_the_demo_copy_of_the_body25_table_matches_the_original(data_dir: Path) -> None:
    """demo/data carries the table gzipped and rounded to 4 decimals, so `make demo` runs anywhere."""
    original = read_body25_table(data_dir / "keypoints" / "BodyPose_Dataset.csv")
    demo = read_body25_table(
        Path(__file__).resolve().parents[1] / "demo" / "data" / "BodyPose_Dataset.csv.gz"
    )
    assert demo.labels.tolist() == original.labels.tolist()
    np.testing.assert_allclose(demo.points, original.points, atol=5.1e-5, equal_nan=True)


# --------------------------------------------------------------------------- BlazePose landmark tables

FITNESS_LABELS = {"pushups_up": 201, "pushups_down": 195, "squats_up": 191, "squats_down": 225}


def _landmark_row(name: str, label: str, values: list[str]) -> str:
    return ",".join([name, label, *values])


def test_a_blazepose_table_is_taken_as_it_is_with_visibility_and_presence_1(data_dir: Path) -> None:
    path = data_dir / "keypoints" / "fitness_pose_samples.csv"
    table = read_blazepose_table(path)
    assert table.points.shape == (812, 33, 5)
    assert {label: table.labels.tolist().count(label) for label in FITNESS_LABELS} == FITNESS_LABELS
    first = path.read_text().splitlines()[0].split(",")
    # x, y, z of each joint in MediaPipe's order, exactly as written: pixels, y down, z on x's scale
    np.testing.assert_array_equal(table.points[0, :, :3].ravel(), np.array(first[2:], dtype=float))
    assert (table.points[..., 3:] == 1.0).all()


def test_the_demo_copy_of_the_blazepose_table_is_the_original_gzipped(data_dir: Path) -> None:
    original = read_blazepose_table(data_dir / "keypoints" / "fitness_pose_samples.csv")
    demo = read_blazepose_table(
        Path(__file__).resolve().parents[1] / "demo" / "data" / "fitness_pose_samples.csv.gz"
    )
    assert demo.labels.tolist() == original.labels.tolist()
    np.testing.assert_array_equal(demo.points, original.points)


GOOD = ["1.5"] * 99


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            [_landmark_row("a.png", "up", GOOD), _landmark_row("b.png", "up", GOOD[:-3])],
            r"poses\.csv:2: expected 101 columns \(name, label, x0, y0, z0 … x32, y32, z32\), got 98",
        ),
        (
            [_landmark_row("a.png", "up", [*GOOD[:4], "abc", *GOOD[5:]])],
            r"poses\.csv:1: y1 is not a number \('abc'\)",
        ),
        ([_landmark_row("a.png", "up", [*GOOD[:98], ""])], r"poses\.csv:1: z32 is not a number"),
        ([_landmark_row("a.png", "up", ["inf", *GOOD[1:]])], r"poses\.csv:1: x0 is not a finite number"),
        (
            ["name,label," + ",".join(f"x{i},y{i},z{i}" for i in range(33))],
            r"poses\.csv:1: x0 is not a number",
        ),
        ([], r"poses\.csv: no poses; expected rows of 101 columns \(name, label, x0"),
        (["", "  "], r"poses\.csv:2: expected 101 columns .*, got 1$"),
    ],
    ids=[
        "wrong column count",
        "a word",
        "an empty cell",
        "infinity",
        "a header",
        "empty file",
        "blank lines skipped, spaces not",
    ],
)
def test_malformed_blazepose_tables_name_the_file_and_line(
    tmp_path: Path, lines: list[str], message: str
) -> None:
    path = tmp_path / "poses.csv"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(KeypointFileError, match=message):
        read_blazepose_table(path)


def test_unreadable_blazepose_tables_are_reported_by_name(tmp_path: Path) -> None:
    with pytest.raises(KeypointFileError, match=r"nothing\.csv: cannot read \(No such file"):
        read_blazepose_table(tmp_path / "nothing.csv")
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(_landmark_row("a.png", "up", GOOD).encode())[:-12])
    with pytest.raises(KeypointFileError, match=r"cut\.csv\.gz: cannot read"):
        read_blazepose_table(tmp_path / "cut.csv.gz")
    (tmp_path / "huge.csv").write_text('"' + "a" * 140_000 + '"\n')  # one field beyond csv's limit
    with pytest.raises(KeypointFileError, match=r"huge\.csv:1: not a readable CSV line"):
        read_blazepose_table(tmp_path / "huge.csv")
