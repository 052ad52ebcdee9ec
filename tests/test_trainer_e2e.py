"""The trainer end to end on the seed's example: video -> keypoints -> every dataset strategy ->
model -> signed bundle -> verified, through the same entry point a user types."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

from device.model.bundle import load_public_key, open_bundle
from trainer.__main__ import main as trainer

LABELS = REPO / "examples" / "example_video.labels.toml"

STRATEGIES: dict[str, list[str]] = {
    "none": [],
    "split_on_label": ["--splitter-label", "step_type"],
    "window": ["--window", "10", "--window-label", "step_type"],
    "sliding_window": [
        "--window",
        "10",
        "--stride",
        "2",
        "--window-label",
        "step_type",
        "--pool",
        "mean,std",
    ],
    "flatten_into_columns": ["--window", "5", "--stride", "2", "--window-label", "step_type"],
    "flatten_on_example": ["--window", "5", "--splitter-label", "step_type"],
}


@pytest.fixture(scope="module")
def keypoints(example_keypoints: Path) -> Path:
    """``trainer extract`` of the example video, run once per session (conftest)."""
    return example_keypoints


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory, keypoints: Path, data_dir: Path) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("datasets")
    made = {}
    for strategy, options in STRATEGIES.items():
        table = out / f"{strategy}.parquet"
        command = ["dataset", "--keypoints", str(keypoints), "--annotations", str(data_dir / "annotations")]
        command += ["--labels", str(LABELS), "--strategy", strategy, *options, "--out", str(table)]
        assert trainer(command) == 0, strategy
        made[strategy] = table
    return made


def test_extraction_keeps_every_frame(keypoints: Path) -> None:
    lines = (keypoints / "example_video.frames.jsonl").read_text().splitlines()
    assert len(lines) == 382
    assert sum(bool(json.loads(line)["joint_positions"]) for line in lines) > 300


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_gives_labeled_rows_with_their_frame_range(
    datasets: dict[str, Path], strategy: str
) -> None:
    table = pd.read_parquet(datasets[strategy])
    meta = json.loads(datasets[strategy].with_suffix(".meta.json").read_text())
    assert len(table) > 0 and meta["rows"] == len(table) and meta["strategy"] == strategy
    assert list(table.columns[:3]) == ["video_id", "first_frame", "last_frame"]
    assert (table["video_id"] == "example_video").all()
    assert (table["first_frame"] <= table["last_frame"]).all()
    # annotations cover frames 7-237: every labeled row ends inside them
    labeled = table[table["step_type"].notna()]
    assert len(labeled) > 0 and labeled["last_frame"].between(7, 237).all()
    assert set(labeled["step_type"]) <= {"Left Step", "Right Step"}
    assert meta["feature_columns"] == [
        c
        for c in table.columns
        if c not in {"video_id", "first_frame", "last_frame", "step_type", "weight_transfer_type"}
    ]


@pytest.mark.parametrize(
    ("strategy", "model", "runtime"),
    [("sliding_window", "logistic_regression", "tflite"), ("none", "random_forest", "sklearn")],
)
def test_train_export_verify(
    datasets: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    strategy: str,
    model: str,
    runtime: str,
) -> None:
    run = tmp_path / "run"
    # one video: too few to hold out whole ones, so auto holds out its end (and says what that means)
    command = ["train", "--dataset", str(datasets[strategy]), "--target", "step_type", "--model", model]
    assert trainer([*command, "--cv", "2", "--out", str(run)]) == 0
    assert json.loads((run / "run.json").read_text())["split"]["kind"] == "time"
    metrics = json.loads((run / "metrics.json").read_text())
    # no accuracy bound: scored on steps after the ones it learned from, one video's model is weak
    assert metrics["sizes"]["test_rows"] > 0 and "not new ones" in metrics["split_warning"]
    report = (run / "report.html").read_text()
    assert "class=warning" in report and report.count("<svg") == 1  # the video's timeline

    keys, bundle = tmp_path / "keys", tmp_path / "model.zip"
    assert trainer(["keygen", "--out", str(keys)]) == 0
    assert trainer(["export", str(run), "--out", str(bundle), "--key", str(keys / "signing.key")]) == 0
    capsys.readouterr()
    assert trainer(["verify", str(bundle), "--pub", str(keys / "signing.pub")]) == 0
    assert capsys.readouterr().out.rstrip().endswith("OK")

    verified = open_bundle(bundle, [load_public_key(keys / "signing.pub")])
    manifest = verified.manifest
    assert manifest.runtime == runtime
    assert set(manifest.labels) == {"Left Step", "Right Step"}
    assert (manifest.window is None) == (strategy == "none")
    if manifest.window is not None:
        assert (manifest.window.size, manifest.window.stride) == (10, 2)
