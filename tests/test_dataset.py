"""``trainer dataset`` end to end, through ``trainer.__main__.main`` and the Python API.

Keypoints are real landmarks without running MediaPipe: the squats reference (65 frames) laid
over the example video's 382 frames, so the seed's real annotation file (frames 7-237) applies,
and a 30-frame clip of it ("tiny") whose small CSV annotation makes every strategy's rows easy to
work out by hand:

    frame   1 ....... 10 11 .. 15 16 .. 20 21 ....... 30
    move    A  A  A  A  B  B  B  .  .  .  A  A  A  A  A
    phase   up (1-12)  down (13-18)        .  .  .  .  .
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from device.annotations import LabelMapping, Problem, ValidationError
from device.features import FeatureEngine, FeatureSpec
from device.keypoints import KeypointSequence, sequence_records, write_frames_jsonl
from trainer.__main__ import main
from trainer.dataset import DEFAULT_GROUPS, DatasetConfig, DatasetError, build_dataset
from trainer.frame_columns import columns_path, write_columns

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_MAPPING = REPO / "examples" / "example_video.labels.toml"
HEADER = "video,start_frame,end_frame,column,label\n"
TINY_ANNOTATIONS = (
    "tiny,1,10,move,A\ntiny,11,15,move,B\ntiny,21,30,move,A\ntiny,1,12,phase,up\ntiny,13,18,phase,down\n"
)
META_KEYS = {
    "format",
    "strategy",
    "feature_spec",
    "window",
    "fps",
    "label_columns",
    "feature_columns",
    "rows",
    "frames",
    "fingerprint",
    "sources",
    "created_at",
}
ALL_POOLS = ["mean", "std", "min", "max", "delta"]


def write_keypoints(folder: Path, stem: str, points: np.ndarray) -> Path:
    """A real ``.frames.jsonl`` file of ``points`` (frames numbered from 1, 30 fps, 720x1280) and,
    as ``trainer extract`` writes it, its columnar copy."""
    n = len(points)
    sequence = KeypointSequence(
        stem, np.arange(1, n + 1), np.arange(n) * 1000 / 30, np.tile([[1280, 720]], (n, 1)), points
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.frames.jsonl"
    write_frames_jsonl(sequence_records(sequence), path)
    write_columns(path)
    return path


@pytest.fixture(scope="session")
def example_frames(tmp_path_factory: pytest.TempPathFactory, squats_reference: np.ndarray) -> Path:
    """``example_video.frames.jsonl``: the squats landmarks repeated over 382 frames."""
    points = np.tile(squats_reference, (6, 1, 1))[:382]
    return write_keypoints(tmp_path_factory.mktemp("example"), "example_video", points)


@pytest.fixture(scope="session")
def tiny_frames(tmp_path_factory: pytest.TempPathFactory, squats_reference: np.ndarray) -> Path:
    """``tiny.frames.jsonl``: the first 30 squats frames."""
    return write_keypoints(tmp_path_factory.mktemp("tiny"), "tiny", squats_reference[:30])


@pytest.fixture
def tiny(tmp_path: Path, tiny_frames: Path) -> list[str]:
    """Input options for the tiny video: its keypoint folder and annotation CSV."""
    (tmp_path / "annotations.csv").write_text(HEADER + TINY_ANNOTATIONS)
    return ["--keypoints", str(tiny_frames.parent), "--annotations", str(tmp_path / "annotations.csv")]


@pytest.fixture
def example(tmp_path: Path, example_frames: Path, data_dir: Path) -> dict[str, Path]:
    """A project: keypoint and annotation folders holding the example video's files, and the mapping."""
    keypoints, annotations, out = tmp_path / "keypoints", tmp_path / "annotations", tmp_path / "out"
    for folder in (keypoints, annotations, out):
        folder.mkdir()
    (keypoints / example_frames.name).symlink_to(example_frames)
    (keypoints / columns_path(example_frames).name).symlink_to(columns_path(example_frames))
    (annotations / "example_video.json").symlink_to(data_dir / "annotations" / "example_video.json")
    return {"keypoints": keypoints, "annotations": annotations, "labels": EXAMPLE_MAPPING, "out": out}


def inputs(project: dict[str, Path]) -> list[str]:
    """The input options of a project made by the ``example`` fixture (as it is at call time)."""
    return [
        arg for name in ("keypoints", "annotations", "labels") for arg in (f"--{name}", str(project[name]))
    ]


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    status = main(["dataset", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


def build(capsys: pytest.CaptureFixture[str], out: Path, *args: object) -> pd.DataFrame:
    status, _, err = cli(capsys, *args, "--out", out)
    assert status == 0, err
    return pd.read_parquet(out) if out.suffix == ".parquet" else pd.read_csv(out)


def frame_ranges(frame: pd.DataFrame) -> list[tuple[int, int]]:
    return list(zip(frame["first_frame"].tolist(), frame["last_frame"].tolist(), strict=True))


def meta_of(out: Path) -> dict:
    return json.loads(out.with_suffix(".meta.json").read_text())


# --------------------------------------------------------------------------- strategies


def windows_ending_at(lasts: list[int], size: int) -> list[tuple[int, int]]:
    return [(last - size + 1, last) for last in lasts]


SPLIT = ["--strategy", "split_on_label", "--splitter-label", "move"]
WINDOW = ["--strategy", "window", "--window", "4", "--window-label", "move"]
SLIDING = ["--strategy", "sliding_window", "--window", "4", "--window-label", "move"]
FLATTEN = ["--strategy", "flatten_into_columns", "--window", "4", "--window-label", "move"]
EXAMPLES = ["--strategy", "flatten_on_example", "--window", "6", "--splitter-label", "move"]
WINDOW_ROWS = [(1, 4), (5, 8), (9, 12), (21, 24), (25, 28)]  # windows ending on frames 16 and 20 have no move

STRATEGY_CASES = {
    "none": ([], [(f, f) for f in [*range(1, 19), *range(21, 31)]]),
    "none, unlabeled too": (["--include-unlabeled"], [(f, f) for f in range(1, 31)]),
    "split_on_label": (SPLIT, [(1, 10), (11, 15), (21, 30)]),
    "split_on_label, unlabeled too": (
        [*SPLIT, "--include-unlabeled"],
        [(1, 10), (11, 15), (16, 20), (21, 30)],
    ),
    "split_on_label, last 4 frames": ([*SPLIT, "--window", "4"], [(7, 10), (12, 15), (27, 30)]),
    "window": (WINDOW, WINDOW_ROWS),
    "window, unlabeled too": ([*WINDOW, "--include-unlabeled"], windows_ending_at(list(range(4, 29, 4)), 4)),
    "sliding_window": (SLIDING, windows_ending_at([*range(4, 16), *range(21, 31)], 4)),
    "sliding_window, stride 3": (
        [*SLIDING, "--stride", "3"],
        windows_ending_at([4, 7, 10, 13, 22, 25, 28], 4),
    ),
    "flatten_into_columns": (FLATTEN, WINDOW_ROWS),
    "flatten_into_columns, stride 2": (
        [*FLATTEN, "--stride", "2"],
        windows_ending_at([4, 6, 8, 10, 12, 14, 22, 24, 26, 28, 30], 4),
    ),
    "flatten_on_example": (EXAMPLES, [(5, 10), (25, 30)]),
}


@pytest.mark.parametrize(("options", "expected"), STRATEGY_CASES.values(), ids=STRATEGY_CASES.keys())
def test_each_strategy_cuts_the_rows_worked_out_by_hand(
    tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], expected: list
) -> None:
    frame = build(capsys, tmp_path / "d.parquet", *tiny, *options)
    assert frame_ranges(frame) == expected
    assert (frame["video_id"] == "tiny").all()
    assert meta_of(tmp_path / "d.parquet")["rows"] == len(expected)


def test_rows_take_the_labels_of_their_run_or_last_frame(
    tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clips = build(capsys, tmp_path / "c.parquet", *tiny, *SPLIT)
    assert clips["move"].tolist() == ["A", "B", "A"]
    assert clips["phase"].fillna("").tolist() == ["up", "down", ""]  # at frames 10, 15, 30
    windows = build(capsys, tmp_path / "w.parquet", *tiny, *SLIDING, "--stride", "3")
    assert windows["move"].tolist() == ["A", "A", "A", "B", "A", "A", "A"]  # frame 13 is B


def test_a_runs_last_frame_stays_in_its_run(
    tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The seed moved each run's last frame into the next run; here run B is exactly frames 11-15."""
    frames = build(capsys, tmp_path / "f.parquet", *tiny, "--include-unlabeled").set_index("first_frame")
    clips = build(capsys, tmp_path / "c.parquet", *tiny, *SPLIT).set_index("first_frame")
    assert clips.loc[11, "last_frame"] == 15 and clips.loc[1, "last_frame"] == 10
    feature = "angle.left_knee"
    run_b = frames.loc[11:15, feature].to_numpy()
    assert clips.loc[11, f"delta.{feature}"] == pytest.approx(run_b[-1] - run_b[0])
    assert clips.loc[11, f"mean.{feature}"] == pytest.approx(run_b.mean())


def test_pooled_statistics_are_those_of_the_clips_frames(
    tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = build(capsys, tmp_path / "f.parquet", *tiny, "--include-unlabeled").set_index("first_frame")
    clips = build(capsys, tmp_path / "c.parquet", *tiny, *SPLIT).set_index("first_frame")
    for first, last in frame_ranges(clips.reset_index()):
        for feature in ("joint.nose.y_norm", "angle.left_knee", "dist.left_ankle.right_ankle"):
            x = frames.loc[first:last, feature].to_numpy()
            row = clips.loc[first]
            assert row[f"mean.{feature}"] == pytest.approx(x.mean())
            assert row[f"std.{feature}"] == pytest.approx(np.std(x))  # population standard deviation
            assert row[f"min.{feature}"] == pytest.approx(x.min())
            assert row[f"max.{feature}"] == pytest.approx(x.max())
            assert row[f"delta.{feature}"] == pytest.approx(x[-1] - x[0])
    knee = frames.loc[1:10, "angle.left_knee"].to_numpy()
    assert clips.loc[1, "std.angle.left_knee"] != pytest.approx(knee.var())  # a std, not a variance
    assert (clips["max.joint.nose.y_norm"] < 0).all()  # the nose is above the hips: max stays negative


def test_flattened_columns_hold_the_frames_oldest_first(
    tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = build(capsys, tmp_path / "f.parquet", *tiny, "--include-unlabeled").set_index("first_frame")
    examples = build(capsys, tmp_path / "e.parquet", *tiny, *EXAMPLES)
    engine = FeatureEngine(FeatureSpec.from_groups(DEFAULT_GROUPS))
    assert list(examples.columns[5:]) == [f"f{k}.{name}" for k in range(6) for name in engine.names]
    row = examples.iloc[0]  # frames 5..10
    for k in range(6):
        assert row[f"f{k}.angle.left_knee"] == frames.loc[5 + k, "angle.left_knee"]


@pytest.mark.parametrize(
    ("options", "window", "pooled"),
    [
        ([], None, None),
        (SPLIT, None, ALL_POOLS),
        (
            [*SPLIT, "--window", "4", "--pool", "max,mean"],
            {"size": 4, "stride": 1, "flatten": False},
            ["max", "mean"],
        ),
        (WINDOW, {"size": 4, "stride": 4, "flatten": False}, ALL_POOLS),
        ([*SLIDING, "--stride", "3"], {"size": 4, "stride": 3, "flatten": False}, ALL_POOLS),
        (SLIDING, {"size": 4, "stride": 1, "flatten": False}, ALL_POOLS),
        (FLATTEN, {"size": 4, "stride": 4, "flatten": True}, []),
        ([*FLATTEN, "--pool", "std"], {"size": 4, "stride": 4, "flatten": True}, ["std"]),
        (EXAMPLES, {"size": 6, "stride": 1, "flatten": True}, []),
    ],
)
def test_columns_and_window_in_the_meta(
    tiny: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    window: dict | None,
    pooled: list[str] | None,
) -> None:
    out = tmp_path / "d.csv"
    frame = build(capsys, out, *tiny, *options)
    meta = meta_of(out)
    names = FeatureEngine(FeatureSpec.from_groups(DEFAULT_GROUPS)).names
    # the tiny keypoint files' frames are 1/30 s apart: that rate times a window
    expected_window = None if window is None else {**window, "pool": pooled, "fps": 30.0}
    assert meta["window"] == expected_window and meta["fps"] == 30.0
    flat = [f"f{k}.{n}" for k in range(window["size"]) for n in names] if window and window["flatten"] else []
    expected = list(names) if pooled is None else flat + [f"{s}.{n}" for s in pooled for n in names]
    assert meta["feature_columns"] == expected
    assert list(frame.columns) == ["video_id", "first_frame", "last_frame", "move", "phase", *expected]


# --------------------------------------------------------------------------- outputs


def test_csv_output_and_its_meta(tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "frames.csv"
    status, stdout, err = cli(capsys, *tiny, "--include-unlabeled", "--out", out)
    assert status == 0 and err == ""
    frame = pd.read_csv(out)
    meta = meta_of(out)
    assert set(meta) == META_KEYS
    assert meta["format"] == 1 and meta["strategy"] == "none" and meta["window"] is None
    assert meta["feature_spec"] == FeatureSpec.from_groups(DEFAULT_GROUPS).to_dict()
    assert meta["label_columns"] == ["move", "phase"]
    assert meta["feature_columns"] == list(frame.columns[5:])
    assert (meta["rows"], meta["frames"], meta["sources"]) == (30, 30, ["tiny"])
    assert meta["fingerprint"] == "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest()
    assert datetime.fromisoformat(meta["created_at"]).utcoffset() is not None
    assert frame["move"].isna().sum() == 5 and frame["phase"].isna().sum() == 12  # empty cells
    assert sorted(os.listdir(tmp_path)) == ["annotations.csv", "frames.csv", "frames.meta.json"]
    assert "wrote 30 rows x 83 features" in stdout
    table = [re.split(r"\s{2,}", line) for line in stdout.splitlines()[1:]]
    assert table == [
        ["column", "label", "rows"],
        ["move", "A", "20"],
        ["move", "B", "5"],
        ["move", "(no label)", "5"],
        ["phase", "down", "6"],
        ["phase", "up", "12"],
        ["phase", "(no label)", "12"],
    ]


def test_csv_rounds_to_6_decimals_and_parquet_keeps_full_precision(
    tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exact = build(capsys, tmp_path / "d.parquet", *tiny)
    text = build(capsys, tmp_path / "d.csv", *tiny)
    two = build(capsys, tmp_path / "two.parquet", *tiny, "--decimals", "2")
    features = exact.columns[5:]
    assert exact[features].dtypes.eq(np.float64).all()
    assert not np.array_equal(exact[features], np.round(exact[features], 6))
    np.testing.assert_array_equal(text[features].to_numpy(), np.round(exact[features].to_numpy(), 6))
    np.testing.assert_array_equal(two[features].to_numpy(), np.round(exact[features].to_numpy(), 2))
    assert exact["move"].fillna("").tolist() == text["move"].fillna("").tolist()


@pytest.mark.parametrize(
    ("block_rows", "parallel_rows"),
    [(7, 1), (1 << 14, 1), (7, 1 << 10)],
    ids=["blocks-of-7-on-every-core", "a-block-per-core", "blocks-of-7-in-turn"],
)
def test_csv_formatted_in_blocks_is_the_csv_pyarrow_writes_in_one_pass(
    tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    block_rows: int, parallel_rows: int
) -> None:
    monkeypatch.setattr("trainer.dataset.CSV_BLOCK_ROWS", block_rows)
    monkeypatch.setattr("trainer.dataset.CSV_PARALLEL_ROWS", parallel_rows)
    build(capsys, tmp_path / "blocks.csv", *tiny, "--include-unlabeled")
    build(capsys, tmp_path / "same.parquet", *tiny, "--include-unlabeled", "--decimals", "6")
    one_pass = tmp_path / "one-pass.csv"
    options = pa_csv.WriteOptions(quoting_style="needed")
    pa_csv.write_csv(pq.read_table(tmp_path / "same.parquet"), one_pass, options)
    assert (tmp_path / "blocks.csv").read_bytes() == one_pass.read_bytes()


def test_feature_groups_and_z(tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.parquet"
    frame = build(capsys, out, *tiny, "--features", "normalized,seed", "--z")
    spec = FeatureSpec.from_groups(["normalized", "seed"], z=True)
    assert list(frame.columns[5:]) == list(FeatureEngine(spec).names)
    assert "joint.nose.z_norm" in frame.columns and meta_of(out)["feature_spec"] == spec.to_dict()


def test_the_seeds_folder_layout_reads_like_a_frame_file(
    tiny_frames: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder of keypoints-NNNN.json files with image-relative x, y (the seed's layout)."""
    folder = tmp_path / "keypoints" / "tiny"
    folder.mkdir(parents=True)
    for line in tiny_frames.read_text().splitlines():
        record = json.loads(line)
        for joint in record["joint_positions"].values():
            joint["x"], joint["y"], joint["z"] = (
                joint["x_normalized"],
                joint["y_normalized"],
                joint["z_normalized"],
            )
        (folder / f"keypoints-{record['frame_number']:04d}.json").write_text(json.dumps(record))
    (tmp_path / "a.csv").write_text(HEADER + TINY_ANNOTATIONS)
    options = ["--annotations", tmp_path / "a.csv", "--include-unlabeled"]
    seed = build(capsys, tmp_path / "seed.parquet", "--keypoints", folder.parent, *options)
    ours = build(capsys, tmp_path / "ours.parquet", "--keypoints", tiny_frames.parent, *options)
    pd.testing.assert_frame_equal(seed, ours, rtol=1e-9)


# --------------------------------------------------------------------------- the seed's example


def test_the_seed_example_through_the_python_api(example: dict[str, Path]) -> None:
    config = DatasetConfig(mapping=LabelMapping.load(EXAMPLE_MAPPING))
    result = build_dataset(example["keypoints"], example["annotations"], example["out"] / "d.parquet", config)
    assert result.meta["rows"] == 227  # frames 7-237 less the unlabeled 50, 97, 160, 193
    assert result.summary == {
        "step_type": {"Left Step": 122, "Right Step": 105},
        "weight_transfer_type": {"Successful Weight Transfer": 181, "Failure Weight Transfer": 46},
    }
    assert result.report.issues == () and result.skipped_runs == 0

    config = DatasetConfig("split_on_label", splitter_label="weight_transfer_type", mapping=config.mapping)
    result = build_dataset(example["keypoints"], example["annotations"], example["out"] / "c.parquet", config)
    clips = pd.read_parquet(example["out"] / "c.parquet")
    # the adjacent Successful ranges 98-127 and 128-159 are one run
    assert frame_ranges(clips) == [(7, 49), (51, 96), (98, 159), (161, 192), (194, 237)]
    assert result.summary["weight_transfer_type"] == {
        "Successful Weight Transfer": 4,
        "Failure Weight Transfer": 1,
    }


def test_flatten_on_example_counts_the_runs_it_skips(
    example: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = example["out"] / "e.parquet"
    options = ["--strategy", "flatten_on_example", "--window", "40", "--splitter-label", "step_type"]
    status, stdout, _ = cli(capsys, *inputs(example), *options, "--out", out)
    assert status == 0
    assert frame_ranges(pd.read_parquet(out)) == [(10, 49), (57, 96), (198, 237)]  # runs of 43, 46, 44 frames
    assert "skipped 3 runs shorter than the window" in stdout


def test_workers_give_the_same_table(tmp_path: Path, tiny_frames: Path) -> None:
    keypoints = tmp_path / "keypoints"
    keypoints.mkdir()
    rows = []
    for stem in ("a", "b", "c"):
        (keypoints / f"{stem}.frames.jsonl").symlink_to(tiny_frames)
        rows += [line.replace("tiny", stem, 1) for line in TINY_ANNOTATIONS.splitlines(keepends=True)]
    (tmp_path / "a.csv").write_text(HEADER + "".join(rows))
    config = DatasetConfig("sliding_window", window=4, window_label="move")
    tables = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.parquet"
        build_dataset(keypoints, tmp_path / "a.csv", out, config, workers=workers)
        tables.append(pd.read_parquet(out))
    pd.testing.assert_frame_equal(*tables)
    assert tables[0]["video_id"].unique().tolist() == ["a", "b", "c"]


# --------------------------------------------------------------------------- validation


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _empty_keypoints(p: dict[str, Path]) -> list[str]:
    (p["keypoints"] / "example_video.frames.jsonl").unlink()
    return inputs(p)


def _malformed_json(p: dict[str, Path]) -> list[str]:
    _write(p["annotations"] / "broken.json", '{"name": "example_video.webm", "annotations": [')
    return inputs(p)


def _unknown_video(p: dict[str, Path]) -> list[str]:
    _write(p["annotations"] / "ghost.json", json.dumps({"name": "ghost.webm", "annotations": []}))
    return inputs(p)


def _unmapped_label(p: dict[str, Path]) -> list[str]:
    labels = EXAMPLE_MAPPING.read_text().replace(', "Failure Weight Transfer"', "")
    assert labels != EXAMPLE_MAPPING.read_text()
    p["labels"] = _write(p["out"].parent / "labels.toml", labels)
    return inputs(p)


def _overlap(p: dict[str, Path]) -> list[str]:
    _write(p["annotations"] / "more.csv", HEADER + "example_video,30,40,step_type,Left Step\n")
    return inputs(p)


def _outside(p: dict[str, Path]) -> list[str]:
    _write(p["annotations"] / "more.csv", HEADER + "example_video,400,410,step_type,Left Step\n")
    return inputs(p)


def _bad_mapping(p: dict[str, Path]) -> list[str]:
    p["labels"] = _write(p["out"].parent / "labels.toml", "[columns\n")
    return inputs(p)


def _meta_is_a_folder(p: dict[str, Path]) -> list[str]:
    (p["out"] / "d.meta.json").mkdir()
    return inputs(p)


def _body25(data_dir: Path) -> list[str]:
    return ["--body25", str(data_dir / "keypoints" / "BodyPose_Dataset.csv")]


WINDOW_STEP = ["--strategy", "window", "--window", "4", "--window-label", "step_type"]
ERROR_CASES = {
    "empty keypoint folder": (_empty_keypoints, [], "--keypoints {keypoints}: no keypoint files"),
    "malformed JSON annotation": (_malformed_json, [], "{annotations}/broken.json: not valid JSON"),
    "annotation of a video without keypoints": (
        _unknown_video,
        [],
        "{annotations}/ghost.json: no keypoint file for video 'ghost.webm' (looked for 'ghost')",
    ),
    "label outside the mapping": (
        _unmapped_label,
        [],
        "example_video.json: label 'Failure Weight Transfer' is in no column of the label mapping (1 range)",
    ),
    "overlapping ranges in one column": (
        _overlap,
        [],
        "more.csv:2: 'Left Step' frames 30-40 overlaps 'Right Step'",
    ),
    "range outside the video": (_outside, [], "more.csv:2: 'Left Step' frames 400-410 lie outside video"),
    "bad mapping file": (_bad_mapping, [], "labels.toml: not valid TOML"),
    "window without --window": (
        inputs,
        ["--strategy", "window", "--window-label", "step_type"],
        "--strategy window needs --window and --window-label",
    ),
    "split without its column": (inputs, ["--strategy", "split_on_label"], "needs --splitter-label"),
    "option the strategy does not take": (
        inputs,
        [*WINDOW_STEP, "--stride", "2"],
        "--stride does not apply to --strategy window",
    ),
    "window option without a window strategy": (
        inputs,
        ["--window", "4"],
        "--window does not apply to --strategy none",
    ),
    "window label the mapping does not define": (
        inputs,
        ["--strategy", "window", "--window", "4", "--window-label", "pace"],
        "--window-label 'pace': not a label column (label columns: step_type, weight_transfer_type)",
    ),
    "unknown pooling statistic": (
        inputs,
        [*WINDOW_STEP, "--pool", "mean,median"],
        "--pool mean,median: name one",
    ),
    "window longer than every video": (
        inputs,
        ["--strategy", "sliding_window", "--window", "500", "--window-label", "step_type"],
        "no rows to write: --window 500 is longer than the longest video (example_video, 382 frames)",
    ),
    "zero window": (
        inputs,
        [*WINDOW_STEP[:2], "--window", "0", *WINDOW_STEP[4:]],
        "--window 0: expected at least 1",
    ),
    "unknown feature group": (
        inputs,
        ["--features", "angles,colors"],
        "--features angles,colors: name one or more",
    ),
    "negative decimals": (inputs, ["--decimals", "-1"], "--decimals -1: expected at least 0"),
    "keypoints without annotations": (
        lambda p: ["--keypoints", str(p["keypoints"])],
        [],
        "needs --annotations",
    ),
    "meta file name taken by a folder": (_meta_is_a_folder, [], "d.meta.json is a folder"),
}


@pytest.mark.parametrize(("setup", "options", "message"), ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    example: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    setup: Callable[[dict[str, Path]], list[str]],
    options: list[str],
    message: str,
) -> None:
    args = setup(example)
    before = sorted(os.listdir(example["out"]))
    status, stdout, err = cli(capsys, *args, *options, "--out", example["out"] / "d.csv")
    assert status == 2
    assert len(err.splitlines()) == 1 and err.startswith("trainer dataset: error: "), err
    assert message.format(**example) in err
    assert "Traceback" not in err and stdout == ""
    assert sorted(os.listdir(example["out"])) == before  # no table, no meta, no partial files


@pytest.mark.parametrize(
    ("out", "options", "message"),
    [
        ("d.txt", [], "--out {tmp}/d.txt: unknown extension '.txt'; use .csv or .parquet"),
        ("missing/d.csv", [], "--out {tmp}/missing/d.csv: folder {tmp}/missing does not exist"),
        ("d.csv", ["--strategy", "window", "--window", "4", "--window-label", "label"], "holds single poses"),
        ("d.csv", ["--z"], "--z: a BODY-25 table has no z coordinates"),
        (
            "d.csv",
            ["--label", "Squat=pose"],
            "--labels/--label: a BODY-25 table has its labels in column 'label'",
        ),
        ("d.csv", ["--annotations", "x"], "--annotations: a BODY-25 table carries its labels"),
    ],
)
def test_bad_output_and_body25_options(
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    out: str,
    options: list[str],
    message: str,
) -> None:
    status, _, err = cli(capsys, *_body25(data_dir), *options, "--out", tmp_path / out)
    assert status == 2 and len(err.splitlines()) == 1
    assert message.format(tmp=tmp_path) in err
    assert os.listdir(tmp_path) == []


def test_several_errors_are_all_reported(
    example: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _unknown_video(example)
    _overlap(example)
    status, _, err = cli(capsys, *inputs(example), "--out", example["out"] / "d.csv")
    lines = err.splitlines()
    assert status == 2 and len(lines) == 2
    assert "overlaps" in lines[0] and lines[1].endswith("(looked for 'ghost') (and 1 more error)")


def test_lenient_options_and_warnings(example: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _unknown_video(example)
    _write(example["annotations"] / "more.csv", HEADER + "example_video,370,400,step_type,Left Step\n")
    out = example["out"] / "d.csv"
    status, stdout, err = cli(capsys, *inputs(example), "--skip-unknown-videos", "--out", out)
    assert status == 0
    warnings = err.splitlines()
    assert len(warnings) == 2 and all(w.startswith("trainer dataset: warning: ") for w in warnings)
    assert warnings[0].endswith(
        "ghost.json: no keypoint file for video 'ghost.webm' (looked for 'ghost'); ignored"
    )
    assert warnings[1].endswith(
        "frames 370-400 lie outside video 'example_video' (frames 1-382); clipped to 370-382"
    )
    assert frame_ranges(pd.read_csv(out))[-1] == (382, 382)


def test_unannotated_keypoints_are_read_only_for_unlabeled_rows(
    example: dict[str, Path], tiny_frames: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (example["keypoints"] / tiny_frames.name).symlink_to(tiny_frames)
    out = example["out"] / "d.parquet"
    status, _, err = cli(capsys, *inputs(example), "--out", out)
    assert status == 0 and "tiny.frames.jsonl: not annotated; its frames are unlabeled" in err
    assert meta_of(out)["sources"] == ["example_video"]
    status, _, _ = cli(capsys, *inputs(example), "--include-unlabeled", "--out", out)
    frame = pd.read_parquet(out)
    assert meta_of(out)["sources"] == ["example_video", "tiny"] and meta_of(out)["frames"] == 382 + 30
    assert frame.loc[frame["video_id"] == "tiny", "step_type"].isna().all()


def test_validation_errors_carry_the_report(example: dict[str, Path]) -> None:
    _unknown_video(example)
    config = DatasetConfig(mapping=LabelMapping.load(EXAMPLE_MAPPING))
    with pytest.raises(ValidationError) as caught:
        build_dataset(example["keypoints"], example["annotations"], example["out"] / "d.csv", config)
    assert [i.problem for i in caught.value.report.errors] == [Problem.UNKNOWN_VIDEO]
    with pytest.raises(DatasetError, match="--strategy window needs --window and --window-label"):
        DatasetConfig("window")


# --------------------------------------------------------------------------- BODY-25


def test_a_body25_table_gives_one_row_per_pose(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "poses.parquet"
    status, stdout, err = cli(capsys, *_body25(data_dir), "--out", out)
    assert status == 0, err
    frame = pd.read_parquet(out)
    meta = meta_of(out)
    assert len(frame) == 10_681 and frame["label"].nunique() == 20
    assert (
        frame["video_id"].iloc[0] == "BodyPose_Dataset:1"
        and frame["video_id"].iloc[-1] == "BodyPose_Dataset:10681"
    )
    assert (frame["first_frame"] == np.arange(1, 10_682)).all() and (
        frame["first_frame"] == frame["last_frame"]
    ).all()
    features = frame.columns[4:]
    assert len(features) == 21 * 2 + 11 + 6  # the 21 joints BODY-25 has, 11 angles, 6 distances
    assert not frame[features].isna().all().any(), "no all-NaN feature column"
    assert "joint.left_pinky.x_norm" not in frame.columns and "joint.left_heel.x_norm" in frame.columns
    assert (meta["window"], meta["label_columns"], meta["sources"]) == (None, ["label"], ["BodyPose_Dataset"])
    assert meta["frames"] == meta["rows"] == 10_681
    assert sum(line.startswith("label ") for line in stdout.splitlines()) == 20


# --------------------------------------------------------------------------- BlazePose tables


def _blazepose(data_dir: Path) -> list[str]:
    return ["--blazepose", str(data_dir / "keypoints" / "fitness_pose_samples.csv")]


def test_a_blazepose_table_gives_one_row_per_pose_with_the_kiosks_features(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "poses.parquet"
    status, stdout, err = cli(capsys, *_blazepose(data_dir), "--out", out)
    assert status == 0, err
    frame, meta = pd.read_parquet(out), meta_of(out)
    assert len(frame) == 812
    assert frame["label"].value_counts().to_dict() == {
        "squats_down": 225,
        "pushups_up": 201,
        "pushups_down": 195,
        "squats_up": 191,
    }
    assert frame["video_id"].iloc[0] == "fitness_pose_samples:1"
    assert frame["video_id"].iloc[-1] == "fitness_pose_samples:812"
    assert (frame["first_frame"] == np.arange(1, 813)).all() and (
        frame["first_frame"] == frame["last_frame"]
    ).all()
    # the spec a kiosk computes by default, every joint included: the model runs on its keypoints
    spec = FeatureSpec.from_groups(DEFAULT_GROUPS)
    assert meta["feature_spec"] == spec.to_dict()
    assert meta["feature_columns"] == list(FeatureEngine(spec).names) == list(frame.columns[4:])
    assert "joint.left_pinky.x_norm" in frame.columns and not frame[frame.columns[4:]].isna().any().any()
    assert (meta["window"], meta["label_columns"], meta["sources"]) == (
        None,
        ["label"],
        ["fitness_pose_samples"],
    )
    assert meta["frames"] == meta["rows"] == 812
    assert sum(line.startswith("label ") for line in stdout.splitlines()) == 4

    demo = tmp_path / "demo.parquet"  # the gzipped copy in demo/data: the same rows, the same ids
    status, _, err = cli(
        capsys, "--blazepose", REPO / "demo" / "data" / "fitness_pose_samples.csv.gz", "--out", demo
    )
    assert status == 0, err
    pd.testing.assert_frame_equal(pd.read_parquet(demo), frame)


def test_a_blazepose_table_takes_feature_groups_and_z(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "angles.csv"
    frame = build(capsys, out, *_blazepose(data_dir), "--features", "angles", "--z")
    assert list(frame.columns[4:]) == list(FeatureEngine(FeatureSpec.from_groups(["angles"], z=True)).names)
    assert meta_of(out)["feature_spec"]["z"] is True


LANDMARKS = "a.png,squats_up," + ",".join(["1.5"] * 99) + "\n"


@pytest.mark.parametrize(
    ("table", "options", "message"),
    [
        (LANDMARKS + "b.png,squats_up,1.5,2.5\n", [], "{table}:2: expected 101 columns (name, label, x0"),
        (LANDMARKS.replace(",1.5\n", ",oops\n"), [], "{table}:1: z32 is not a number ('oops')"),
        ("", [], "{table}: no poses; expected rows of 101 columns"),
        (None, [], "{table}: cannot read (No such file or directory)"),
        (
            LANDMARKS,
            ["--strategy", "window", "--window", "4", "--window-label", "label"],
            "holds single poses",
        ),
        (
            LANDMARKS,
            ["--label", "Squat=pose"],
            "--labels/--label: a BlazePose table has its labels in column",
        ),
        (LANDMARKS, ["--annotations", "x"], "--annotations: a BlazePose table carries its labels"),
    ],
    ids=[
        "wrong column count",
        "not a number",
        "empty file",
        "missing file",
        "a window strategy",
        "a label mapping",
        "annotations",
    ],
)
def test_bad_blazepose_tables_and_options_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str | None, options: list[str], message: str
) -> None:
    path, out = tmp_path / "poses.csv", tmp_path / "out"
    out.mkdir()
    if table is not None:
        path.write_text(table)
    status, stdout, err = cli(capsys, "--blazepose", path, *options, "--out", out / "d.csv")
    assert status == 2 and stdout == ""
    assert len(err.splitlines()) == 1 and err.startswith("trainer dataset: error: "), err
    assert message.format(table=path) in err
    assert os.listdir(out) == []
