"""``python -m trainer features`` through its public entry point."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from device.features import GROUPS, FeatureEngine, FeatureSpec
from device.keypoints import KeypointSequence, sequence_records, write_frames_jsonl
from trainer.__main__ import main


@pytest.fixture
def frames_file(squats_reference: np.ndarray, tmp_path: Path) -> Path:
    points = squats_reference[:6].copy()
    points[3] = np.nan  # nobody in frame 4
    sequence = KeypointSequence(
        "squats", np.arange(1, 7), np.arange(6) * 200.0, np.tile([1280, 720], (6, 1)), points
    )
    path = tmp_path / "squats.frames.jsonl"
    write_frames_jsonl(sequence_records(sequence), path)
    return path


def test_list_prints_every_feature_with_a_definition(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["features", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    every = FeatureEngine(FeatureSpec.from_groups(GROUPS)).names
    assert [line.split()[0] for line in lines] == list(every)
    assert all(len(line.split(None, 1)) == 2 for line in lines)


def test_features_csv_has_a_row_per_frame(frames_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "squats.csv"
    assert main(["features", str(frames_file), "--out", str(out), "--groups", "angles,seed"]) == 0
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    engine = FeatureEngine(FeatureSpec.from_groups(["angles", "seed"]))
    assert list(rows[0]) == ["frame_number", *engine.names]
    assert [r["frame_number"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert rows[3]["angle.left_knee"] == ""  # no person: empty cells
    assert 0 <= float(rows[0]["angle.left_knee"]) <= 180
    assert not list(tmp_path.glob("*.partial"))


def test_spec_file_selects_the_columns(frames_file: Path, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(FeatureSpec(normalized=("nose",), angles=(), distances=()).to_dict()))
    out = tmp_path / "nose.csv"
    assert main(["features", str(frames_file), "--out", str(out), "--spec", str(spec)]) == 0
    assert out.read_text().splitlines()[0] == "frame_number,joint.nose.x_norm,joint.nose.y_norm"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--groups", "angles,wings"], "'wings'"),
        (["--spec", "missing.json"], "missing.json"),
        (["--decimals", "-1"], "--decimals"),
    ],
)
def test_bad_options_end_with_one_line_and_status_2(
    frames_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "out.csv"
    assert main(["features", str(frames_file), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_a_missing_keypoint_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["features", str(tmp_path / "nope.frames.jsonl"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "nope.frames.jsonl" in capsys.readouterr().err
