"""``trainer train`` end to end: dataset files written per docs/trainer-contracts.md, the real CLI.

Two datasets: the real BODY-25 pose table (20 classes, one row per pose) turned into features by
the device's feature engine, for the accuracy acceptance and the run-directory contract; and a
small synthetic windowed table of 12 "videos" whose rows share a per-video offset, for the
grouped split, label handling, balancing, search and every bad-input path.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import Pipeline

from device.cli import UsageError
from device.features import FeatureEngine, FeatureSpec, WindowSpec, window_names
from device.keypoints import BODY25_JOINTS, JOINT_INDEX, read_body25_table
from device.model.bundle import load_public_key, open_bundle
from device.model.runtimes import check_skops_types
from trainer.__main__ import main
from trainer.estimators import BALANCERS, MODELS, TRUSTED_TYPES, build_pipeline, deployable
from trainer.evaluate import held_out_metrics
from trainer.examples import prepare
from trainer.splits import make_split
from trainer.table import read_table
from trainer.train import write_run_dir
from trainer.train_options import BALANCE_CHOICES, DEFAULT_MODEL, MODEL_SUMMARIES

REPO = Path(__file__).resolve().parents[1]
RUN_FILES = {"model.skops", "run.json", "test_rows.npz", "metrics.json", "report.html"}
RUN_KEYS = {
    "format",
    "target",
    "model",
    "labels",
    "columns",
    "feature_spec",
    "window",
    "fps",
    "dataset",
    "split",
    "balance",
    "seed",
    "params",
    "fit_seconds",
    "created_at",
    "versions",
}
EXTRA_RUN_KEYS = {"search", "preparation"}  # reproducibility details beyond the contract's list
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def run_cli(entry: Callable[[Sequence[str]], int], *argv: object) -> Result:
    """A command's real entry point (``trainer``'s or ``provisioning``'s main), in-process, with
    what it prints; test_mlflow.py uses it too."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = entry([str(arg) for arg in argv])
    return Result(code, out.getvalue(), err.getvalue())


def train(*argv: object) -> Result:
    """Run ``python -m trainer train ARGV`` in-process and capture what it prints."""
    return run_cli(main, "train", *argv)


def load_run(run_dir: Path) -> tuple[dict, dict, dict[str, np.ndarray]]:
    run = json.loads((run_dir / "run.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with np.load(run_dir / "test_rows.npz", allow_pickle=False) as npz:
        rows = {name: npz[name] for name in npz.files}
    return run, metrics, rows


def load_model(run_dir: Path) -> Pipeline:
    """Load the artifact as the device does: skops with an explicit list of trusted types."""
    path = run_dir / "model.skops"
    assert set(skops.io.get_untrusted_types(file=path)) <= set(TRUSTED_TYPES)
    return skops.io.load(path, trusted=list(TRUSTED_TYPES))


def write_dataset(
    path: Path,
    frame: pd.DataFrame,
    label_columns: list[str],
    feature_columns: list[str],
    feature_spec: FeatureSpec,
    window: WindowSpec | None,
    strategy: str,
) -> Path:
    """A dataset file and its meta exactly as the contract describes (meta written after the table)."""
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)  # NaN and None become empty cells
    meta = {
        "format": 1,
        "strategy": strategy,
        "feature_spec": feature_spec.to_dict(),
        "window": window.to_dict() if window else None,
        "fps": window.fps if window else None,
        "label_columns": label_columns,
        "feature_columns": feature_columns,
        "rows": len(frame),
        "frames": int((frame["last_frame"] - frame["first_frame"] + 1).sum()),
        "fingerprint": "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest(),
        "sources": sorted(set(frame["video_id"].str.split(":").str[0])),
        "created_at": "2026-11-24T22:00:00+00:00",
    }
    path.with_suffix(".meta.json").write_text(json.dumps(meta))
    return path


# --------------------------------------------------------------------------- BODY-25: acceptance


@pytest.fixture(scope="module")
def body25(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """The BODY-25 pose table as a per-frame dataset: normalized joints, angles, distances, seed preset."""
    table = read_body25_table(data_dir / "keypoints" / "BodyPose_Dataset.csv")
    spec = FeatureSpec(normalized=tuple(j for j in BODY25_JOINTS if j in JOINT_INDEX), presets=("seed",))
    engine = FeatureEngine(spec)
    rows = np.arange(1, len(table.labels) + 1)
    frame = pd.DataFrame(
        {
            "video_id": [f"BodyPose_Dataset:{r}" for r in rows],
            "first_frame": rows,
            "last_frame": rows,
            "label": table.labels.astype(str),
        }
    )
    frame = pd.concat([frame, pd.DataFrame(engine.compute(table.points), columns=list(engine.names))], axis=1)
    path = tmp_path_factory.mktemp("body25") / "body25.parquet"
    return write_dataset(path, frame, ["label"], list(engine.names), spec, None, "none")


@pytest.fixture(scope="module")
def body25_run(body25: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    out = tmp_path_factory.mktemp("runs") / "body25"
    return out, train("--dataset", body25, "--target", "label", "--out", out, "--split", "stratified")


def test_default_model_reaches_the_acceptance_macro_f1_on_body25(body25_run) -> None:
    out, result = body25_run
    assert result.code == 0, result.err
    run, metrics, _ = load_run(out)
    assert run["model"] == DEFAULT_MODEL and len(run["labels"]) == 20
    assert metrics["macro_f1"] >= 0.95, metrics["macro_f1"]
    assert metrics["cv"]["folds"] == 5 and metrics["cv"]["macro_f1"]["mean"] >= 0.95
    for line in ("accuracy", "balanced accuracy", "macro F1", "ROC-AUC", "MCC", "CV macro F1"):
        assert re.search(rf"^\s+{line}\s+\d\.\d{{4}}", result.out, re.MULTILINE), line
    assert "±" in result.out


def test_run_dir_follows_the_contract(body25_run, body25: Path) -> None:
    out, _ = body25_run
    meta = json.loads(body25.with_suffix(".meta.json").read_text())
    assert {p.name for p in out.iterdir()} == RUN_FILES
    run, metrics, rows = load_run(out)
    assert set(run) == RUN_KEYS | EXTRA_RUN_KEYS
    assert run["columns"] == meta["feature_columns"] and run["feature_spec"] == meta["feature_spec"]
    assert run["window"] is None and run["target"] == "label" and run["format"] == 1
    assert run["dataset"]["fingerprint"] == meta["fingerprint"] and run["dataset"]["rows"] == 10681
    assert set(run["versions"]) == {"python", "numpy", "sklearn", "skops"}
    assert run["split"]["kind"] == "stratified" and run["fit_seconds"] > 0

    assert rows["X"].dtype == np.float64 and rows["X"].shape == (metrics["sizes"]["test_rows"], 114)
    assert rows["y"].dtype.kind == "U"
    assert metrics["sizes"]["train_rows"] + metrics["sizes"]["test_rows"] == 10681

    model = load_model(out)
    assert type(model) is Pipeline and [name for name, _ in model.steps] == ["impute", "scale", "classify"]
    assert list(model.classes_) == run["labels"]
    predicted = model.predict(rows["X"])  # the saved artifact reproduces the reported numbers
    assert accuracy_score(rows["y"], predicted) == pytest.approx(metrics["accuracy"])
    assert f1_score(rows["y"], predicted, average="macro") == pytest.approx(metrics["macro_f1"])

    confusion = metrics["confusion_matrix"]
    assert confusion["labels"] == run["labels"] and np.sum(confusion["matrix"]) == len(rows["y"])
    assert sum(c["support"] for c in metrics["per_class"].values()) == len(rows["y"])
    assert 0.9 < metrics["roc_auc"] <= 1 and metrics["roc_auc_note"] is None
    assert -1 <= metrics["mcc"] <= 1 and metrics["balanced_accuracy"] > 0.9
    assert len(metrics["importance"]["top"]) == 20


def test_report_is_self_contained_with_its_pictures(body25_run) -> None:
    out, _ = body25_run
    html = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 3  # confusion matrix, per-class scores, feature importance
    assert all(base64.b64decode(image).startswith(PNG) for image in images)
    assert "http://" not in html and "https://" not in html
    for heading in ("Run settings", "Held-out metrics", "Confusion matrix", "Feature importance"):
        assert heading in html
    assert "Yoga_Warrior2_left" in html
    # single poses: every video_id holds one row, so no video shares the split and none has a timeline
    assert "class=warning" not in html and "<svg" not in html


def test_report_shows_parameters_as_a_table_and_says_what_each_metric_measures(body25_run) -> None:
    out, _ = body25_run
    html = (out / "report.html").read_text()
    run, _, _ = load_run(out)
    settings = html[html.index("<h2>Run settings") : html.index("<h2>Confusion matrix")]
    assert "{" not in settings, "no raw JSON"
    assert "<h2>Model parameters</h2>" in settings and "<td>max_iter</td><td>5000</td>" in settings
    assert all(f"<td>{escape(name)}</td>" in settings for name in run["params"])
    rows = re.findall(r"<tr><td>([^<]+)</td><td>[^<]+</td><td>([^<]*)</td></tr>", settings)
    metrics = ["accuracy", "balanced accuracy", "macro F1", "ROC-AUC", "MCC", "CV macro F1"]
    assert [name for name, _ in rows][: len(metrics)] == metrics
    assert all(meaning.endswith(".") for _, meaning in rows), rows  # one plain sentence for each


def test_the_help_offers_exactly_what_training_knows() -> None:
    assert set(MODEL_SUMMARIES) == set(MODELS) and DEFAULT_MODEL in MODELS
    assert set(BALANCE_CHOICES) == set(BALANCERS)


def test_auto_split_takes_single_poses_for_what_they_are(body25: Path) -> None:
    examples = prepare(read_table(body25), "label", {}, None)
    split = make_split(examples, "auto", 0.2, 0, seed=0)
    assert split.kind == "stratified" and "single examples" in split.reason


# --------------------------------------------------------------------------- a multi-video dataset

VIDEOS, ROWS_PER_VIDEO = 12, 30
WINDOW = WindowSpec(size=10, stride=5, pool=("mean", "std"), fps=30.0)
SPEC = FeatureSpec(
    normalized=(),
    angles=("left_knee", "right_knee", "left_hip", "right_hip"),
    distances=(("left_ankle", "right_ankle"),),
)
COLUMNS = list(window_names(FeatureEngine(SPEC).names, WINDOW))
LABELS = ["movement", "side", "effort", "constant"]


def synthetic_frame(seed: int = 0) -> pd.DataFrame:
    """Windows of 12 videos: each video holds all three movements and a video-specific offset.

    ``side`` is blank in every 7th row, ``effort`` is imbalanced (``high`` is rare), ``constant``
    has one value, and 4% of feature cells are NaN.
    """
    rng = np.random.default_rng(seed)
    centers = {name: rng.normal(0, 2.0, len(COLUMNS)) for name in ("squat", "step", "lunge")}
    records, features = [], []
    for video in range(VIDEOS):
        offset = rng.normal(0, 0.7, len(COLUMNS))
        order = rng.permutation(list(centers))
        for k in range(ROWS_PER_VIDEO):
            movement = order[k * 3 // ROWS_PER_VIDEO]
            side = rng.choice(["left", "right"])
            row = centers[movement] + offset + rng.normal(0, 0.6, len(COLUMNS))
            row[1] += 1.5 if side == "left" else -1.5
            effort = "high" if row[2] > np.quantile(centers["squat"], 0.9) or k % 9 == 0 else "low"
            first = 1 + 5 * k
            records.append(
                {
                    "video_id": f"clip{video:02d}",
                    "first_frame": first,
                    "last_frame": first + WINDOW.size - 1,
                    "movement": movement,
                    "side": None if k % 7 == 3 else side,
                    "effort": effort,
                    "constant": "same" if k % 7 != 3 else None,
                }
            )
            features.append(row)
    values = np.array(features)
    values[rng.random(values.shape) < 0.04] = np.nan
    return pd.concat([pd.DataFrame(records), pd.DataFrame(values, columns=COLUMNS)], axis=1)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synthetic") / "steps.csv"
    return write_dataset(path, synthetic_frame(), LABELS, COLUMNS, SPEC, WINDOW, "sliding_window")


@pytest.fixture(scope="module")
def synthetic_table(synthetic: Path) -> pd.DataFrame:
    return pd.read_csv(synthetic)


def test_grouped_split_keeps_every_video_on_one_side(
    synthetic: Path, synthetic_table, tmp_path: Path
) -> None:
    result = train("--dataset", synthetic, "--target", "movement", "--out", tmp_path / "run")
    assert result.code == 0, result.err
    run, metrics, rows = load_run(tmp_path / "run")
    assert run["split"] == {
        "kind": "group",
        "requested": "auto",
        "reason": "auto: 12 videos, enough to hold out whole ones (--test-size 0.2 needs 5)",
        "test_size": 0.2,
        "group_by": "video_id",
        "gap_rows": 0,
        "cv": 5,
        "cv_method": "5 folds of whole videos (StratifiedGroupKFold by video_id)",
    }
    assert "split group (auto: 12 videos" in result.err
    assert metrics["split_warning"] is None
    html = (tmp_path / "run" / "report.html").read_text()
    assert "class=warning" not in html
    assert html.count("<svg") == len(set(rows["video_id"].tolist()))  # a timeline per held-out video
    rows_per_video = Counter(synthetic_table["video_id"])
    held_out = Counter(rows["video_id"].tolist())
    assert held_out and all(held_out[v] == rows_per_video[v] for v in held_out)  # whole videos only
    sizes = metrics["sizes"]
    assert sizes["shared_videos"] == 0 and sizes["train_videos"] + sizes["test_videos"] == VIDEOS
    assert run["window"] == WINDOW.to_dict() and run["feature_spec"] == SPEC.to_dict()


def test_grouped_cross_validation_folds_never_share_a_video(synthetic: Path) -> None:
    examples = prepare(read_table(synthetic), "movement", {}, None)
    split = make_split(examples, "group", 0.2, 4, seed=3)
    groups = examples.groups[split.train]
    assert not set(examples.groups[split.train]) & set(examples.groups[split.test])
    assert len(split.folds) == 4
    for fit, validate in split.folds:
        assert not set(groups[fit]) & set(groups[validate])
    assert sorted(np.concatenate([v for _, v in split.folds]).tolist()) == list(range(len(split.train)))


def test_stratified_cross_validation_folds_keep_the_class_mix(synthetic: Path) -> None:
    examples = prepare(read_table(synthetic), "movement", {}, None)
    split = make_split(examples, "stratified", 0.2, 3, seed=5)
    y = examples.y[split.train]
    for _, validate in split.folds:  # fold indices point into the training part, in its order
        for label, count in Counter(y.tolist()).items():
            assert abs(Counter(y[validate].tolist())[label] - count / 3) <= 1


def test_stratified_split_of_videos_warns_that_scores_are_optimistic(synthetic: Path, tmp_path: Path) -> None:
    result = train(
        "--dataset", synthetic, "--target", "movement", "--out", tmp_path / "run", "--split", "stratified"
    )
    assert result.code == 0, result.err
    _, metrics, _ = load_run(tmp_path / "run")
    assert metrics["sizes"]["shared_videos"] > 0
    warning = metrics["split_warning"]
    assert "12 videos have rows in both parts" in warning and "optimistic" in warning
    assert f"train: warning: {warning}" in result.err
    html = (tmp_path / "run" / "report.html").read_text()
    assert f"<p class=warning role=alert><strong>Warning:</strong> {escape(warning)}</p>" in html
    assert html.index("class=warning") < html.index("<h2>")  # above everything else


def test_binary_target_drops_unlabelled_rows_and_imputes_missing_features(
    synthetic: Path, synthetic_table, tmp_path: Path
) -> None:
    result = train("--dataset", synthetic, "--target", "side", "--out", tmp_path / "run", "--cv", "3")
    assert result.code == 0, result.err
    run, metrics, rows = load_run(tmp_path / "run")
    blank = int(synthetic_table["side"].isna().sum())
    assert run["labels"] == ["left", "right"]
    assert metrics["sizes"]["rows_without_target"] == blank > 0
    # every labelled row is used even though 4% of the feature cells are NaN
    assert metrics["sizes"]["train_rows"] + metrics["sizes"]["test_rows"] == len(synthetic_table) - blank
    assert np.isnan(rows["X"]).any() and len(rows["y"]) == metrics["sizes"]["test_rows"]
    assert metrics["roc_auc"] is not None and metrics["macro_f1"] > 0.8
    assert load_model(tmp_path / "run").predict(rows["X"]).shape == rows["y"].shape


def test_value_map_merges_target_values(synthetic: Path, tmp_path: Path) -> None:
    value_map = "step=moving, lunge=moving"
    result = train(
        "--dataset", synthetic, "--target", "movement", "--out", tmp_path / "run", "--value-map", value_map
    )
    assert result.code == 0, result.err
    run, _, rows = load_run(tmp_path / "run")
    assert run["labels"] == ["moving", "squat"] and set(rows["y"]) == {"moving", "squat"}
    assert run["preparation"]["value_map"] == {"step": "moving", "lunge": "moving"}


@pytest.mark.parametrize("balance", ["upsample", "downsample", "smote"])
def test_balancing_resamples_the_training_rows_only(
    balance: str, synthetic: Path, synthetic_table, tmp_path: Path
) -> None:
    common = ["--dataset", synthetic, "--target", "effort", "--model", "knn", "--cv", "3"]
    assert train(*common, "--out", tmp_path / "plain").code == 0
    result = train(*common, "--out", tmp_path / "run", "--balance", balance)
    assert result.code == 0, result.err
    run, metrics, rows = load_run(tmp_path / "run")
    _, _, plain_rows = load_run(tmp_path / "plain")
    np.testing.assert_array_equal(rows["X"], plain_rows["X"])  # the test split is untouched
    np.testing.assert_array_equal(rows["y"], plain_rows["y"])
    model = load_model(tmp_path / "run")
    assert [name for name, _ in model.steps] == ["impute", "scale", "classify"]  # sampler stripped
    train_counts = Counter(synthetic_table["effort"]) - Counter(rows["y"].tolist())
    assert sum(train_counts.values()) == metrics["sizes"]["train_rows"]
    fitted_rows = model.named_steps["classify"].n_samples_fit_  # knn remembers what it was fitted on
    resampled_class = max(train_counts.values()) if balance != "downsample" else min(train_counts.values())
    assert fitted_rows == 2 * resampled_class != metrics["sizes"]["train_rows"]
    assert run["balance"] == balance


def test_random_search_runs_on_grouped_folds_and_records_the_best(synthetic: Path, tmp_path: Path) -> None:
    result = train(
        *("--dataset", synthetic, "--target", "movement", "--out", tmp_path / "run"),
        *("--search", "random", "--iterations", "3", "--cv", "3", "--seed", "7"),
    )
    assert result.code == 0, result.err
    run, metrics, _ = load_run(tmp_path / "run")
    assert run["search"] == {"kind": "random", "iterations": 3} and run["seed"] == 7
    assert run["split"]["kind"] == "group" and run["split"]["cv"] == 3
    assert metrics["cv"]["folds"] == 3 and metrics["cv"]["source"].startswith("random search")
    assert run["params"]["C"] != 1.0  # a sampled value, not the default
    assert "searching 3" in result.err


@pytest.mark.parametrize("target", ["movement", "side"])
@pytest.mark.parametrize("model", list(MODELS))
def test_every_model_saves_a_pipeline_the_device_can_load(
    model: str, target: str, synthetic: Path, synthetic_table, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = train("--dataset", synthetic, "--target", target, "--out", out, "--model", model, "--cv", "0")
    assert result.code == 0, result.err
    run, metrics, rows = load_run(out)
    check_skops_types((out / "model.skops").read_bytes())  # the device's own allowlist
    pipeline = load_model(out)
    assert type(pipeline) is Pipeline
    assert list(pipeline.classes_) == sorted(synthetic_table[target].dropna().unique())
    np.testing.assert_allclose(pipeline.predict_proba(rows["X"]).sum(axis=1), 1.0)
    assert metrics["cv"] is None and metrics["macro_f1"] > 0.6  # learned something; loading is the point
    assert metrics["importance"]["top"] or metrics["importance"]["note"]
    json.dumps(run["params"])  # plain JSON


def test_roc_auc_is_null_with_the_reason_when_a_class_is_absent_from_the_test_rows(synthetic: Path) -> None:
    examples = prepare(read_table(synthetic), "movement", {}, None)
    model = deployable(build_pipeline("logistic_regression", seed=0).fit(examples.X, examples.y))
    present = examples.y != "lunge"
    metrics = held_out_metrics(model, examples.X[present], examples.y[present])
    assert metrics["roc_auc"] is None and "lunge" in metrics["roc_auc_note"]
    assert (
        metrics["per_class"]["lunge"]["support"] == 0 and metrics["confusion_matrix"]["labels"][0] == "lunge"
    )


def test_dataset_without_meta_trains_but_export_is_told_why_it_cannot(
    synthetic: Path, tmp_path: Path
) -> None:
    bare = tmp_path / "bare.csv"
    bare.write_bytes(synthetic.read_bytes())
    result = train("--dataset", bare, "--target", "movement", "--out", tmp_path / "run", "--cv", "0")
    assert result.code == 0, result.err
    assert "export" in result.err and "refuse" in result.err
    run, _, _ = load_run(tmp_path / "run")
    assert run["feature_spec"] is None and run["window"] is None
    assert run["columns"] == COLUMNS  # the numeric columns other than video_id and the frame range


def test_overwrite_replaces_the_run_dir_without_leftovers(synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs" / "latest"
    args = ("--dataset", synthetic, "--target", "side", "--out", out, "--cv", "0")
    assert train(*args).code == 0
    first = json.loads((out / "run.json").read_text())
    assert train(*args, "--model", "knn", "--overwrite").code == 0
    assert json.loads((out / "run.json").read_text())["model"] == "knn" != first["model"]
    assert [p.name for p in out.parent.iterdir()] == ["latest"]


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(UsageError, match="--out"):
        write_run_dir(out, {"run.json": b"{}", "missing/metrics.json": b"{}"})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- time-blocked split


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two videos of the synthetic windows (10 frames every 5): too few for a grouped split."""
    frame = synthetic_frame()
    frame = frame[frame["video_id"].isin(["clip00", "clip01"])].reset_index(drop=True)
    path = tmp_path_factory.mktemp("two") / "two.csv"
    return write_dataset(path, frame, LABELS, COLUMNS, SPEC, WINDOW, "sliding_window")


def test_auto_split_holds_out_the_end_of_each_video_with_a_gap(two_videos: Path, tmp_path: Path) -> None:
    result = train("--dataset", two_videos, "--target", "movement", "--out", tmp_path / "run", "--cv", "3")
    assert result.code == 0, result.err
    run, metrics, rows = load_run(tmp_path / "run")
    table = pd.read_csv(two_videos)
    split = run["split"]
    assert (split["kind"], split["requested"], split["group_by"]) == ("time", "auto", None)
    assert (
        split["reason"].startswith("auto: 2 videos, fewer than the 5 needed")
        and "split time (auto:" in result.err
    )
    held_out = 0
    for video, frames in table.groupby("video_id"):
        tested = rows["first_frame"][rows["video_id"] == video]
        last_rows = frames.sort_values("first_frame")["first_frame"].to_numpy()[-round(len(frames) * 0.2) :]
        np.testing.assert_array_equal(np.sort(tested), last_rows)  # the last 20% of its rows, in order
        held_out += len(tested)
    # the gap: rows not held out whose frames reach into the held-out ones' (window length 10, stride 5)
    starts = {v: rows["first_frame"][rows["video_id"] == v].min() for v in set(rows["video_id"].tolist())}
    before = table[table["first_frame"] < table["video_id"].map(starts)]
    gap = int((before["last_frame"] >= before["video_id"].map(starts)).sum())
    assert split["gap_rows"] == gap == 2  # one window per video
    assert metrics["sizes"]["train_rows"] == len(table) - held_out - gap
    assert metrics["sizes"]["test_rows"] == held_out
    warning = metrics["split_warning"]
    assert "the last 20% of each video's rows (2 videos, 2 rows" in warning and "not new ones" in warning
    assert f"train: warning: {warning}" in result.err
    assert escape(warning) in (tmp_path / "run" / "report.html").read_text()


def test_time_folds_chain_forward_within_each_video_and_never_touch_their_frames(two_videos: Path) -> None:
    examples = prepare(read_table(two_videos), "movement", {}, None)
    split = make_split(examples, "time", 0.2, 4, seed=0)
    assert split.folds and split.cv_method.startswith(f"{len(split.folds)} forward-chaining folds")
    videos, frames, y = (a[split.train] for a in (examples.groups, examples.frames, examples.y))
    for fit, validate in split.folds:
        assert set(y[fit]) == set(y)  # a fold without a class would score another classifier
        for video in set(videos[validate].tolist()):
            scored = validate[videos[validate] == video]
            learned = fit[videos[fit] == video]
            # everything learned ends before the first frame scored: the past predicts the future
            assert frames[learned, 1].max() < frames[scored, 0].min()


def test_time_split_without_enough_rows_for_folds_says_there_is_no_cv(tmp_path: Path) -> None:
    rows = 20
    frame = pd.DataFrame(
        {
            "video_id": ["walk"] * rows,
            "first_frame": range(1, rows + 1),
            "last_frame": range(1, rows + 1),
            "movement": ["stand"] * 12 + ["squat"] * 8,
        }
    )
    values = (
        np.random.default_rng(0).normal(size=(rows, len(COLUMNS)))
        + (frame["movement"] == "squat").to_numpy()[:, None]
    )
    frame = pd.concat([frame, pd.DataFrame(values, columns=COLUMNS)], axis=1)
    dataset = write_dataset(tmp_path / "one.csv", frame, ["movement"], COLUMNS, SPEC, WINDOW, "none")
    result = train("--dataset", dataset, "--target", "movement", "--out", tmp_path / "run")
    assert result.code == 0, result.err
    run, metrics, _ = load_run(tmp_path / "run")
    assert run["split"]["kind"] == "time" and run["split"]["cv"] == 0 and metrics["cv"] is None
    assert run["split"]["cv_method"].startswith("none: too few rows for forward-chaining folds")
    assert "cross-validation: none: too few rows" in result.err
    searched = train(
        "--dataset", dataset, "--target", "movement", "--out", tmp_path / "s", "--search", "random"
    )
    assert (
        searched.code == 2 and "--search needs cross-validation folds; --split time has none" in searched.err
    )


TITLE = re.compile(r"<title>(true|predicted): (.+?), frames (\d+)–(\d+)</title>")


def test_report_draws_each_held_out_video_along_its_frames(two_videos: Path, tmp_path: Path) -> None:
    assert train("--dataset", two_videos, "--target", "movement", "--out", tmp_path / "run").code == 0
    run, _, rows = load_run(tmp_path / "run")
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Held-out videos over time" in html and "http" not in html
    assert all(f"</span>{label} " in html for label in run["labels"])  # the legend
    predicted = load_model(tmp_path / "run").predict(rows["X"])
    svgs = re.findall(r"<svg .*?</svg>", html)
    videos = sorted(set(rows["video_id"].tolist()))
    assert len(svgs) == len(videos)
    for video, svg in zip(videos, svgs, strict=True):
        strips: dict[str, list[tuple[str, int, int]]] = {"true": [], "predicted": []}
        for strip, label, first, last in TITLE.findall(svg):
            strips[strip].append((label, int(first), int(last)))
        mine = rows["video_id"] == video
        # the first window paints one stride too, not frames whose labels are not its last one's
        assert min(a for _, a, _ in strips["true"]) == rows["last_frame"][mine].min() - WINDOW.stride + 1
        for truth, guess, frame in zip(
            rows["y"][mine], predicted[mine], rows["last_frame"][mine], strict=True
        ):
            # a window's label belongs to its last frame; that frame shows it in each strip
            assert [label for label, a, b in strips["true"] if a <= frame <= b] == [truth]
            assert [label for label, a, b in strips["predicted"] if a <= frame <= b] == [guess]


def test_train_key_makes_the_bundle_export_makes(two_videos: Path, tmp_path: Path) -> None:
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    key, names = tmp_path / "keys" / "signing.key", tmp_path / "names.toml"
    names.write_text('[label_names]\nsquat = "Squat"\nlunge = "Lunge (left)"\n', encoding="utf-8")
    run = tmp_path / "run"
    common = ["--key", key, "--version", "1.0.0", "--label-names", names]
    trained = train("--dataset", two_videos, "--target", "movement", "--out", run, *common)
    assert trained.code == 0, trained.err
    exported = run_cli(main, "export", run, "--out", tmp_path / "export.zip", *common)
    assert exported.code == 0, exported.err
    public = [load_public_key(tmp_path / "keys" / "signing.pub")]
    by_train = open_bundle(run / "bundle.zip", public).manifest
    by_export = open_bundle(tmp_path / "export.zip", public).manifest
    assert by_train.decision == by_export.decision and by_train.decision.threshold > 0
    assert (
        dict(by_train.label_names)
        == dict(by_export.label_names)
        == {"squat": "Squat", "lunge": "Lunge (left)"}
    )
    threshold = [line for line in exported.out.splitlines() if line.startswith("decision threshold")]
    assert threshold and threshold[0] in trained.out


# --------------------------------------------------------------------------- bad input


@dataclass(frozen=True)
class Files:
    tmp: Path
    synthetic: Path
    tiny: Path
    body25: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, synthetic: Path, body25: Path) -> Files:
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "notes.txt").write_text("label,x\na,1\n")
    (tmp / "broken.parquet").write_bytes(b"PAR1 this is not a parquet file")
    stale = tmp / "stale.csv"
    stale.write_bytes(
        synthetic.read_bytes() + b"clip99,1,10,squat,left,low,same" + b",0" * len(COLUMNS) + b"\n"
    )
    (tmp / "stale.meta.json").write_bytes(synthetic.with_suffix(".meta.json").read_bytes())
    tiny_frame = pd.DataFrame(
        {
            "video_id": ["a", "a", "b", "b", "c", "c"],
            "first_frame": range(1, 7),
            "last_frame": range(1, 7),
            "movement": ["squat", "step"] * 3,
            COLUMNS[0]: np.arange(6.0),
        }
    )
    tiny = write_dataset(tmp / "tiny.csv", tiny_frame, ["movement"], COLUMNS[:1], SPEC, WINDOW, "window")
    return Files(tmp, synthetic, tiny, body25)


BAD_INPUT: dict[str, tuple[Callable[[Files], list[object]], str]] = {
    "missing file": (
        lambda f: ["--dataset", f.tmp / "absent.csv", "--target", "movement"],
        "absent.csv: no such",
    ),
    "unknown extension": (lambda f: ["--dataset", f.tmp / "notes.txt", "--target", "label"], "'.txt'"),
    "unreadable file": (lambda f: ["--dataset", f.tmp / "broken.parquet", "--target", "x"], "cannot read"),
    "stale meta": (lambda f: ["--dataset", f.tmp / "stale.csv", "--target", "movement"], "fingerprint"),
    "unknown target": (
        lambda f: ["--dataset", f.synthetic, "--target", "nope"],
        "label columns: movement, side, effort, constant",
    ),
    "single class": (lambda f: ["--dataset", f.synthetic, "--target", "constant"], "at least two classes"),
    "unknown --drop": (
        lambda f: ["--dataset", f.synthetic, "--target", "side", "--drop", "mean.nope"],
        "matches 'mean.nope'",
    ),
    "bad --value-map": (
        lambda f: ["--dataset", f.synthetic, "--target", "movement", "--value-map", "squat"],
        "--value-map: 'squat' is not",
    ),
    "--value-map of an absent value": (
        lambda f: ["--dataset", f.synthetic, "--target", "movement", "--value-map", "sqaut=x"],
        "no value 'sqaut' in movement (values: lunge, squat, step)",
    ),
    "too few videos": (
        lambda f: ["--dataset", f.tiny, "--target", "movement", "--split", "group"],
        "only 3 video(s) in the dataset, --test-size 0.2 needs 5; use --split time",
    ),
    "too few rows per video for time": (
        lambda f: ["--dataset", f.tiny, "--target", "movement"],
        "--split time: no video has enough rows to hold out 0.2 of them",
    ),
    "time without videos": (
        lambda f: ["--dataset", f.body25, "--target", "label", "--split", "time"],
        "--split time: every video_id holds one row",
    ),
    "--label-names without --key": (
        lambda f: ["--dataset", f.synthetic, "--target", "movement", "--label-names", f.tmp / "names.toml"],
        "--label-names needs --key",
    ),
    "too few rows": (
        lambda f: [
            "--dataset",
            f.tiny,
            "--target",
            "movement",
            "--split",
            "stratified",
            "--test-size",
            "0.1",
        ],
        "--test-size 0.1: too few rows",
    ),
    "--cv beyond the videos": (
        lambda f: ["--dataset", f.synthetic, "--target", "movement", "--cv", "20"],
        "--cv 20",
    ),
    "bad --test-size": (
        lambda f: ["--dataset", f.synthetic, "--target", "movement", "--test-size", "0.9"],
        "--test-size",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case: str, files: Files) -> None:
    argv, expected = BAD_INPUT[case]
    out = files.tmp / "runs" / "never"
    result = train(*argv(files), "--out", out)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainer train: error: "), result.err
    assert expected in lines[0]
    assert "Traceback" not in result.err and not out.parent.exists()


def test_an_existing_run_dir_is_kept_without_overwrite(files: Files, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    result = train("--dataset", files.synthetic, "--target", "movement", "--out", tmp_path / "run")
    assert result.code == 2 and "--overwrite" in result.err and len(result.err.strip().splitlines()) == 1
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["keep.txt"]


def test_the_real_entry_point_reports_bad_input_without_a_traceback(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "trainer", "train", "--dataset", str(tmp_path / "absent.parquet")]
    command += ["--target", "label", "--out", str(tmp_path / "run")]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        f"trainer train: error: --dataset {tmp_path / 'absent.parquet'}: no such file"
    ]
    assert not (tmp_path / "run").exists()


def test_help_explains_the_grouped_split_and_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "Examples:" in text and "How rows are held out (--split, default auto)" in text
    assert all(f"  {kind} " in text for kind in ("group", "time", "stratified"))
    assert all(name in text for name in MODELS)
