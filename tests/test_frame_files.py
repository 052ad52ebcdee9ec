"""The workstation's fast frame-file reader returns exactly what the reference reader does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from device.keypoints import (
    KeypointFileError,
    KeypointSequence,
    read_keypoints,
    sequence_records,
    write_frames_jsonl,
)
from trainer.frame_files import read_frames


@pytest.fixture
def frames_file(squats_reference: np.ndarray, tmp_path: Path) -> Path:
    points = squats_reference.copy()
    points[10:13] = np.nan  # nobody in view for three frames
    points[20, 5] = np.nan  # one joint missing
    points[30, :, 4] = np.nan  # no presence scores
    n = len(points)
    sequence = KeypointSequence(
        "squats", np.arange(1, n + 1), np.arange(n) * 200.0, np.tile([1280, 720], (n, 1)), points
    )
    path = tmp_path / "squats.frames.jsonl"
    write_frames_jsonl(sequence_records(sequence), path)
    return path


def test_same_sequence_as_the_reference_reader(frames_file: Path) -> None:
    fast, reference = read_frames(frames_file), read_keypoints(frames_file)
    assert fast.sequence_id == reference.sequence_id == "squats"
    for field in ("frame_numbers", "timestamps_ms", "sizes"):
        np.testing.assert_array_equal(getattr(fast, field), getattr(reference, field))
    np.testing.assert_array_equal(fast.points, reference.points)  # NaN in the same places
    assert fast.has_person.tolist() == reference.has_person.tolist()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda record: record["joint_positions"].update(left_wing={"x": 1, "y": 2}),
            "unknown joint 'left_wing'",
        ),
        (lambda record: record.pop("image_dimensions"), "image_dimensions"),
    ],
)
def test_problems_are_reported_as_the_reference_reader_reports_them(
    frames_file: Path, edit, message: str
) -> None:
    lines = frames_file.read_text().splitlines()
    record = json.loads(lines[4])
    edit(record)
    lines[4] = json.dumps(record)
    frames_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(KeypointFileError, match=message):
        read_frames(frames_file)


def test_extra_fields_and_seed_folders_still_read(frames_file: Path, tmp_path: Path) -> None:
    lines = [json.loads(line) for line in frames_file.read_text().splitlines()]
    for record in lines:
        record["camera"] = "hall"  # a field another tool added
    frames_file.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    np.testing.assert_array_equal(read_frames(frames_file).points, read_keypoints(frames_file).points)
    with pytest.raises(KeypointFileError, match="no keypoints-NNNN.json"):
        read_frames(tmp_path)


@pytest.mark.parametrize(
    "layout",
    [
        lambda lines: lines[:5] + [""] + lines[5:],  # a blank line
        lambda lines: lines[:5] + ["  " + lines[5]] + lines[6:],  # an indented line
        lambda lines: [line + "\r" for line in lines],  # Windows line ends
    ],
    ids=["blank-line", "indented-line", "crlf"],
)
def test_lines_not_starting_with_a_brace_take_the_exact_check_and_read_the_same(
    frames_file: Path, layout
) -> None:
    frames_file.write_text("\n".join(layout(frames_file.read_text().splitlines())) + "\n")
    np.testing.assert_array_equal(read_frames(frames_file).points, read_keypoints(frames_file).points)


def test_a_line_that_is_not_an_object_is_named_even_after_the_quick_check(frames_file: Path) -> None:
    lines = frames_file.read_text().splitlines()
    frames_file.write_text("\n".join([*lines[:7], "null", *lines[7:]]) + "\n")
    with pytest.raises(KeypointFileError, match="frame 8: expected a JSON object"):
        read_frames(frames_file)
