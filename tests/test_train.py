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
from device.model.runtimes import check_skops_types
from trainer.__main__ import main
from trainer.estimators import DEFAULT_MODEL, MODELS, TRUSTED_TYPES, build_pipeline, deployable
from trainer.evaluate import held_out_metrics
from trainer.train import make_split, prepare, read_table, write_run_dir

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


# --------------------------------------------------------------------------- a multi-video dataset

VIDEOS, ROWS_PER_VIDEO = 12, 30
WINDOW = WindowSpec(size=10, stride=5, pool=("mean", "std"))
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
    assert run["split"] == {"kind": "group", "test_size": 0.2, "group_by": "video_id", "cv": 5}
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
    assert "optimistic" in result.err


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


# --------------------------------------------------------------------------- bad input


@dataclass(frozen=True)
class Files:
    tmp: Path
    synthetic: Path
    tiny: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, synthetic: Path) -> Files:
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
    return Files(tmp, synthetic, tiny)


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
    "too few videos": (lambda f: ["--dataset", f.tiny, "--target", "movement"], "use --split stratified"),
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
    assert "Examples:" in text and "Why the default split is grouped by video" in text
    assert all(name in text for name in MODELS)
