"""``python -m trainer keygen | export | verify`` and the MLP -> TFLite converter, end to end.

Run directories are written here per docs/trainer-contracts.md from real pipelines fitted on
features of the real BODY-25 pose table; every command runs through ``trainer.__main__.main``.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import zipfile
from collections.abc import Callable
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from test_bundle import SPEC, real_examples

from device.__main__ import main as device
from device.model.bundle import key_id, load_private_key, load_public_key, open_bundle
from device.model.runtimes import TFLiteRuntime, load_runtime, load_skops
from trainer.__main__ import main
from trainer.estimators import MODELS, build_pipeline, deployable
from trainer.tflite import TFLiteConversionError, convert_pipeline

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

Examples = tuple[np.ndarray, np.ndarray, tuple[str, ...]]
MULTI = ("Plank", "Squat", "Stand", "T")
BINARY = ("Squat", "Stand")
TRAIN_ROWS = 240


def pipeline_with(classifier: Any, imputer: SimpleImputer | None = None) -> Pipeline:
    """The shape ``train`` saves: impute -> scale -> classify."""
    imputer = imputer or SimpleImputer(strategy="median", keep_empty_features=True)
    return Pipeline([("impute", imputer), ("scale", StandardScaler()), ("classify", classifier)])


def mlp(activation: str) -> MLPClassifier:
    return MLPClassifier(hidden_layer_sizes=(32, 16), activation=activation, max_iter=300, random_state=0)


DENSE_CLASSIFIERS: dict[str, Callable[[], Any]] = {
    **{f"mlp-{a}": (lambda a=a: mlp(a)) for a in ("relu", "tanh", "logistic", "identity")},
    "logistic_regression": lambda: LogisticRegression(max_iter=1000),
}


def write_run(
    directory: Path, pipeline: Any, examples: Examples, window: dict[str, Any] | None = None
) -> Path:
    """A run directory as ``train`` writes it: model.skops, run.json, test_rows.npz, metrics.json."""
    X, y, columns = examples
    directory.mkdir(parents=True)
    (directory / "model.skops").write_bytes(skops.io.dumps(pipeline))
    run = {
        "format": 1,
        "target": "pose",
        "model": type(pipeline[-1]).__name__,
        "labels": [str(c) for c in pipeline.classes_],
        "columns": list(columns),
        "feature_spec": SPEC.to_dict(),
        "window": window,
        "dataset": {"path": "/data/poses.csv", "fingerprint": "sha256:" + "ab" * 32, "rows": len(X)},
        "split": {"kind": "stratified", "test_size": 0.25, "group_by": None, "cv": 0},
        "balance": None,
        "seed": 0,
        "params": {},
        "fit_seconds": 0.1,
        "created_at": "2026-11-24T22:00:00+00:00",
        "versions": {"python": "3.11.7", "numpy": np.__version__, "sklearn": "1.9.1", "skops": "0.16.0"},
    }
    (directory / "run.json").write_text(json.dumps(run))
    np.savez(directory / "test_rows.npz", X=X[TRAIN_ROWS:], y=y[TRAIN_ROWS:])
    (directory / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))
    return directory


def fit(pipeline: Any, examples: Examples) -> Any:
    X, y, _ = examples
    return pipeline.fit(X[:TRAIN_ROWS], y[:TRAIN_ROWS])


@pytest.fixture(scope="module")
def multi(data_dir: Path) -> Examples:
    return real_examples(data_dir, MULTI, per_class=80)


@pytest.fixture(scope="module")
def binary(data_dir: Path) -> Examples:
    return real_examples(data_dir, BINARY, per_class=160, seed=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, multi: Examples, binary: Examples) -> dict[str, Path]:
    """Run directories of an MLP (multi-class and binary) and a random forest."""
    root = tmp_path_factory.mktemp("runs")
    made = {
        "mlp": (pipeline_with(mlp("relu")), multi),
        "mlp_binary": (pipeline_with(mlp("tanh")), binary),
        "forest": (pipeline_with(RandomForestClassifier(n_estimators=20, random_state=0)), multi),
        "logistic_regression": (pipeline_with(LogisticRegression(max_iter=1000)), binary),
    }
    return {name: write_run(root / name, fit(p, ex), ex) for name, (p, ex) in made.items()}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("keys")
    assert main(["keygen", "--out", str(folder)]) == 0
    return folder / "signing.key", folder / "signing.pub"


def one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The single stderr line of a failed command, without its ``trainer <command>: error:`` prefix."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"trainer {command}: error: ")
    return lines[0].removeprefix(f"trainer {command}: error: ")


# --------------------------------------------------------------------------- TFLite conversion


@pytest.mark.parametrize("classifier", sorted(DENSE_CLASSIFIERS))
@pytest.mark.parametrize("kind", ["multi", "binary"])
def test_tflite_matches_predict_proba_on_every_test_row(
    kind: str, classifier: str, request: pytest.FixtureRequest
) -> None:
    X, y, columns = examples = request.getfixturevalue(kind)
    pipeline = fit(pipeline_with(DENSE_CLASSIFIERS[classifier]()), examples)
    converted = convert_pipeline(pipeline)
    assert converted.content[4:8] == b"TFL3"
    runtime = TFLiteRuntime(converted.content, pipeline.classes_, columns, converted.fill)
    rows = X[TRAIN_ROWS:]
    assert np.isnan(rows).any()  # the fill values are exercised
    expected = pipeline.predict_proba(rows)
    actual = runtime.predict_proba(rows)
    assert actual.shape == expected.shape == (len(rows), len(set(y)))
    assert np.abs(actual - expected).max() <= 1e-5
    np.testing.assert_allclose(runtime.predict_proba(rows[:1]), expected[:1], atol=1e-5)  # batch resized


@pytest.mark.filterwarnings("ignore:Skipping features without any observed values")
def test_columns_the_imputer_dropped_get_zero_weight(multi: Examples) -> None:
    X, _, columns = multi
    X = X.copy()
    X[:, 4] = np.nan  # empty in training: SimpleImputer() drops it, the TFLite input keeps it
    pipeline = fit(pipeline_with(mlp("relu"), SimpleImputer()), (X, multi[1], columns))
    converted = convert_pipeline(pipeline)
    runtime = TFLiteRuntime(converted.content, pipeline.classes_, columns, converted.fill)
    rows = X[TRAIN_ROWS:]
    assert np.abs(runtime.predict_proba(rows) - pipeline.predict_proba(rows)).max() <= 1e-5


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        (
            pipeline_with(RandomForestClassifier(n_estimators=2)),
            "got SimpleImputer -> StandardScaler -> Random",
        ),
        (
            Pipeline([("impute", SimpleImputer()), ("classify", mlp("relu"))]),
            "got SimpleImputer -> MLPClassifier",
        ),
        (pipeline_with(mlp("relu"), SimpleImputer(add_indicator=True)), "add_indicator=True"),
    ],
)
def test_the_converter_refuses_what_it_cannot_express(
    pipeline: Pipeline, message: str, multi: Examples
) -> None:
    with pytest.raises(TFLiteConversionError, match=re.escape(message)):
        convert_pipeline(fit(pipeline, multi))


# --------------------------------------------------------------------------- keygen


def test_keygen_writes_a_private_pem_only_its_owner_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "keys"
    assert main(["keygen", "--out", str(folder)]) == 0
    private, public = folder / "signing.key", folder / "signing.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")  # SubjectPublicKeyInfo
    identifier = key_id(load_public_key(public))
    assert key_id(load_private_key(private)) == identifier
    assert f"key_id {identifier}" in capsys.readouterr().out

    before = private.read_bytes()
    assert main(["keygen", "--out", str(folder)]) == 2
    assert "signing.key exists; give --force" in one_error_line(capsys, "keygen")
    assert private.read_bytes() == before
    assert main(["keygen", "--out", str(folder), "--force"]) == 0
    assert private.read_bytes() != before
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert sorted(p.name for p in folder.iterdir()) == ["signing.key", "signing.pub"]


# --------------------------------------------------------------------------- export -> verify


def verify_json(capsys: pytest.CaptureFixture[str], bundle: Path, public_key: Path) -> dict[str, Any]:
    """The whole manifest ``verify --json`` printed: JSON and nothing else."""
    capsys.readouterr()
    assert main(["verify", str(bundle), "--pub", str(public_key), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("run", "extra", "runtime", "model_file"),
    [
        ("mlp", [], "tflite", "model.tflite"),
        ("mlp_binary", [], "tflite", "model.tflite"),
        ("forest", [], "sklearn", "model.skops"),
        ("logistic_regression", [], "tflite", "model.tflite"),
        ("logistic_regression", ["--runtime", "sklearn"], "sklearn", "model.skops"),
        ("mlp", ["--runtime", "sklearn"], "sklearn", "model.skops"),
    ],
)
def test_export_writes_a_bundle_that_verifies_and_predicts_like_the_pipeline(
    run: str,
    extra: list[str],
    runtime: str,
    model_file: str,
    runs: dict[str, Path],
    keys: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "model.zip"
    assert main(["export", str(runs[run]), "--out", str(out), "--key", str(keys[0]), *extra]) == 0
    assert "verified" in capsys.readouterr().out
    shown = verify_json(capsys, out, keys[1])
    assert shown["runtime"] == runtime and shown["model_file"] == model_file
    assert len(shown["samples"]["rows"]) == 20

    bundle = open_bundle(out, [load_public_key(keys[1])])
    assert shown == json.loads(bundle.manifest_bytes)  # the manifest as signed
    manifest = bundle.manifest
    info = json.loads((runs[run] / "run.json").read_text())
    assert zipfile.ZipFile(out).namelist() == ["manifest.json", model_file, "manifest.sig"]
    assert manifest.model_id == manifest.target == "pose"
    assert re.fullmatch(r"\d{4}\.\d\d\.\d\d\.\d{6}", manifest.version)
    assert list(manifest.labels) == info["labels"] and list(manifest.columns) == info["columns"]
    assert manifest.feature_spec == SPEC and manifest.window is None
    assert manifest.dataset_fingerprint == info["dataset"]["fingerprint"]
    assert set(manifest.metrics) == {"macro_f1", "accuracy", "balanced_accuracy"}
    assert ("ai_edge_litert" in manifest.library_versions) == (runtime == "tflite")
    assert (manifest.preprocessing is not None) == (runtime == "tflite")
    assert b"null" in bundle.manifest_bytes  # NaN features in the sample rows

    with np.load(runs[run] / "test_rows.npz") as held_out:
        rows = held_out["X"]
    pipeline = load_skops((runs[run] / "model.skops").read_bytes())
    device = load_runtime(bundle)
    assert np.abs(device.predict_proba(rows) - pipeline.predict_proba(rows)).max() <= 1e-5


@pytest.mark.parametrize(
    ("smoothing", "expected"),
    [
        ("none", ("none", 0.0, 0.6, 0.4)),
        ("mean:1.5", ("mean", 1.5, 0.6, 0.4)),
        ("hysteresis", ("hysteresis", 0.0, 0.6, 0.4)),
        ("hysteresis:0.7:0.3", ("hysteresis", 0.0, 0.7, 0.3)),
    ],
)
def test_export_options_reach_the_manifest(
    smoothing: str,
    expected: tuple[str, float, float, float],
    runs: dict[str, Path],
    keys: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, names = tmp_path / "model.zip", tmp_path / "names.toml"
    names.write_text('[label_names]\nSquat = "Squat (down)"\n"T" = "T pose"\n', encoding="utf-8")
    argv = ["export", str(runs["forest"]), "--out", str(out), "--key", str(keys[0]), "--model-id", "pose-v2"]
    argv += ["--version", "1.2.3", "--threshold", "0.6", "--smoothing", smoothing, "--no-person", "reset"]
    assert main([*argv, "--label-names", str(names)]) == 0
    assert "decision threshold 0.6: given with --threshold" in capsys.readouterr().out
    manifest = open_bundle(out, [load_public_key(keys[1])]).manifest
    assert (manifest.model_id, manifest.version) == ("pose-v2", "1.2.3")
    assert manifest.decision.threshold == 0.6 and manifest.decision.no_person == "reset"
    chosen = manifest.decision.smoothing
    assert (chosen.kind, chosen.span_s, chosen.enter, chosen.exit) == expected
    assert dict(manifest.label_names) == {"Squat": "Squat (down)", "T": "T pose"}


def _right_held_out_threshold(run: Path) -> float:
    """The default threshold computed here from test_rows.npz and model.skops, independently of export."""
    pipeline = load_skops((run / "model.skops").read_bytes())
    with np.load(run / "test_rows.npz") as held_out:
        rows, truth = held_out["X"], held_out["y"]
    probabilities = pipeline.predict_proba(rows)
    right = pipeline.classes_[probabilities.argmax(axis=1)] == truth
    percentile = np.percentile(probabilities.max(axis=1)[right], 1)
    return float(Decimal(str(percentile)).quantize(Decimal("0.01"), rounding=ROUND_FLOOR))


@pytest.mark.parametrize(("run", "extra"), [("forest", []), ("mlp", ["--runtime", "sklearn"])])
def test_the_default_threshold_keeps_99_percent_of_the_right_held_out_decisions(
    run: str,
    extra: list[str],
    runs: dict[str, Path],
    keys: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "model.zip"
    assert main(["export", str(runs[run]), "--out", str(out), "--key", str(keys[0]), *extra]) == 0
    expected = _right_held_out_threshold(runs[run])
    assert 0 < expected < 1
    assert open_bundle(out, [load_public_key(keys[1])]).manifest.decision.threshold == expected
    printed = capsys.readouterr().out
    assert f"decision threshold {expected:g}: the default from the held-out rows" in printed
    assert "--threshold X overrides it" in printed


def test_the_default_threshold_is_zero_when_no_held_out_row_is_right(
    runs: dict[str, Path], keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy_run(runs, tmp_path)
    pipeline = load_skops((run / "model.skops").read_bytes())
    with np.load(run / "test_rows.npz") as held_out:
        rows = held_out["X"]
    wrong = pipeline.classes_[(pipeline.predict_proba(rows).argmax(axis=1) + 1) % len(pipeline.classes_)]
    np.savez(run / "test_rows.npz", X=rows, y=wrong.astype(str))
    out = tmp_path / "model.zip"
    assert main(["export", str(run), "--out", str(out), "--key", str(keys[0])]) == 0
    assert open_bundle(out, [load_public_key(keys[1])]).manifest.decision.threshold == 0.0
    assert f"none of the {len(rows)} held-out rows was classified correctly" in capsys.readouterr().out


WINDOWED = {"size": 30, "stride": 5, "flatten": False, "pool": ["mean"]}


@pytest.mark.parametrize(
    ("window", "extra", "fps"),
    [
        ({**WINDOWED, "fps": 30.0}, [], 30.0),  # the dataset's rate
        ({**WINDOWED, "fps": 30.0}, ["--fps", "15"], 15.0),  # --fps overrides it
        ({**WINDOWED, "fps": None}, ["--fps", "12.5"], 12.5),  # keypoints without timestamps
    ],
)
def test_the_window_rate_is_the_datasets_unless_fps_is_given(
    window: dict[str, Any],
    extra: list[str],
    fps: float,
    multi: Examples,
    keys: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    X, y, names = multi
    pooled = (X, y, tuple(f"mean.{n}" for n in names))
    run = write_run(
        tmp_path / "run", fit(pipeline_with(LogisticRegression(max_iter=500)), pooled), pooled, window
    )
    out = tmp_path / "model.zip"
    assert main(["export", str(run), "--out", str(out), "--key", str(keys[0]), *extra]) == 0
    shown = open_bundle(out, [load_public_key(keys[1])]).manifest.window
    assert shown is not None and shown.to_dict() == {**WINDOWED, "fps": fps}


def test_a_run_without_window_needs_export_window_for_window_features(
    multi: Examples, keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    X, y, names = multi
    pooled = (X, y, tuple(f"mean.{n}" for n in names))  # as split_on_label clips pool their frames
    run = write_run(tmp_path / "clips", fit(pipeline_with(LogisticRegression(max_iter=500)), pooled), pooled)
    out = tmp_path / "clips.zip"
    export = ["export", str(run), "--out", str(out), "--key", str(keys[0])]
    for extra, message in [
        ([], "give --window W --stride S"),
        (["--window", "30", "--stride", "5"], "no timestamps to take a frame rate from; give --fps F"),
        (
            ["--window", "30", "--stride", "0", "--fps", "30"],
            "--window/--stride/--fps: window size and stride",
        ),
        (["--window", "30", "--stride", "5", "--fps", "5000"], "--window/--stride/--fps: window fps must be"),
    ]:
        assert main([*export, *extra]) == 2
        assert message in one_error_line(capsys, "export")
    assert main([*export, "--window", "30", "--stride", "5", "--fps", "30"]) == 0
    window = open_bundle(out, [load_public_key(keys[1])]).manifest.window
    assert window is not None and window.to_dict() == {**WINDOWED, "fps": 30.0}


def _copy_run(runs: dict[str, Path], tmp_path: Path, name: str = "forest") -> Path:
    return Path(shutil.copytree(runs[name], tmp_path / "run"))


def _edit_run_json(**changes: Any) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        info = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**info, **changes}))

    return edit


def _remove(name: str) -> Callable[[Path], None]:
    return lambda run: (run / name).unlink()


def _write(name: str, payload: bytes) -> Callable[[Path], None]:
    return lambda run: (run / name).write_bytes(payload)


SMOOTHING_FORMS = "expected none, mean:SECONDS or hysteresis[:ENTER:EXIT]"
NAMES = ["--label-names", "{run}/names.toml"]


def _pickled_test_rows(run: Path) -> None:
    np.savez(run / "test_rows.npz", X=np.zeros((2, 3)), y=np.array([{"a": 1}, None], dtype=object))


def _untrusted_model(run: Path) -> None:
    X = np.random.default_rng(0).random((40, 3))
    pipeline = Pipeline([("sin", FunctionTransformer(np.sin)), ("classify", LogisticRegression())])
    (run / "model.skops").write_bytes(skops.io.dumps(pipeline.fit(X, ["a", "b"] * 20)))


@pytest.mark.parametrize(
    ("edit", "extra", "message"),
    [
        (lambda run: shutil.rmtree(run), [], "run: not a run directory"),
        (_remove("run.json"), [], "run.json: cannot read"),
        (_write("run.json", b"{not json"), [], "run.json: not valid JSON"),
        (_edit_run_json(format=2), [], "run.json: unsupported format 2"),
        (_edit_run_json(labels=None), [], "run.json: 'labels' has the wrong type"),
        (_edit_run_json(feature_spec={"angles": ["wrist"]}), [], "run.json: bad feature_spec"),
        (_edit_run_json(feature_spec=None), [], "run.json: feature_spec is null"),
        (
            _edit_run_json(labels=["Stand", "Squat", "Plank", "T"]),
            [],
            "model.skops and run.json disagree: the model's classes",
        ),
        (_edit_run_json(columns=["angle.left_knee"]), [], "run.json disagree: the model reads 76 features"),
        (_remove("model.skops"), [], "model.skops: cannot read"),
        (_write("model.skops", b"not a zip"), [], "model.skops is not a skops file"),
        (_untrusted_model, [], "contains types outside the allowlist: numpy.core._multiarray_umath.sin"),
        (_remove("test_rows.npz"), [], "test_rows.npz: cannot read"),
        (_pickled_test_rows, [], "test_rows.npz: expected arrays X (float) and y (labels)"),
        (_write("test_rows.npz", b"garbage"), [], "test_rows.npz: "),
        (None, ["--threshold", "2"], "--threshold must be within 0..1, got 2.0"),
        (None, ["--smoothing", "majority:5"], f"--smoothing 'majority:5': {SMOOTHING_FORMS}"),
        (None, ["--smoothing", "mean"], f"--smoothing 'mean': {SMOOTHING_FORMS}"),
        (None, ["--smoothing", "mean:soon"], f"--smoothing 'mean:soon': {SMOOTHING_FORMS}"),
        (None, ["--smoothing", "none:1"], f"--smoothing 'none:1': {SMOOTHING_FORMS}"),
        (None, ["--smoothing", "hysteresis:3"], f"--smoothing 'hysteresis:3': {SMOOTHING_FORMS}"),
        (None, ["--smoothing", "mean:0"], "--smoothing 'mean:0': SECONDS must be within 0..60"),
        (None, ["--smoothing", "mean:61"], "--smoothing 'mean:61': SECONDS must be within 0..60"),
        (
            None,
            ["--smoothing", "hysteresis:0.4:0.6"],
            "--smoothing 'hysteresis:0.4:0.6': need 0 <= EXIT <= ENTER <= 1",
        ),
        (None, ["--label-names", "{run}/absent.toml"], "absent.toml: cannot read"),
        (_write("names.toml", b"[label_names\n"), NAMES, "names.toml: not valid TOML"),
        (
            _write("names.toml", b'[label_names]\nwalk = "Walking"\n'),
            NAMES,
            "names.toml: label_names.walk: not one of the model's labels (Plank, Squat, Stand, T)",
        ),
        (
            _write("names.toml", b"[label_names]\nSquat = 3\n"),
            NAMES,
            "names.toml: label_names.Squat: expected a non-empty display name, got int",
        ),
        (
            _write("names.toml", b'[label_names]\nSquat = " "\n'),
            NAMES,
            "names.toml: label_names.Squat: expected a non-empty display name, got an empty string",
        ),
        (_write("names.toml", b'Squat = "Squat"\n'), NAMES, "names.toml: Squat: unknown key"),
        (
            _write("names.toml", b'label_names = "Squat"\n'),
            NAMES,
            "names.toml: label_names: expected a [label_names] table",
        ),
        (None, ["--version", "v1"], "--version: 'v1' is not a dotted-integer version"),
        (
            None,
            ["--model-id", "a/b"],
            "the device would refuse this bundle (manifest: model_id: 'a/b' does not",
        ),
        (None, ["--stride", "5"], "--stride needs --window W"),
        (None, ["--window", "30"], "--window: the model reads per-frame features"),
        (None, ["--runtime", "tflite"], "cannot convert to TFLite (expected SimpleImputer -> StandardScaler"),
    ],
)
def test_bad_export_inputs_exit_2_with_one_line_and_write_nothing(
    edit: Callable[[Path], None] | None,
    extra: list[str],
    message: str,
    runs: dict[str, Path],
    keys: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = _copy_run(runs, tmp_path)
    if edit is not None:
        edit(run)
    out = tmp_path / "out" / "model.zip"
    out.parent.mkdir()
    extra = [arg.replace("{run}", str(run)) for arg in extra]
    assert main(["export", str(run), "--out", str(out), "--key", str(keys[0]), *extra]) == 2
    assert message in one_error_line(capsys, "export")
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("key", "out", "message"),
    [
        ("absent.key", "model.zip", "absent.key: cannot read"),
        ("signing.pub", "model.zip", "not an unencrypted PEM private key"),
        ("signing.key", ".", "is a folder; give a .zip file name"),
        ("signing.key", "missing/model.zip", "does not exist"),
    ],
)
def test_bad_keys_and_outputs_are_named(
    key: str,
    out: str,
    message: str,
    runs: dict[str, Path],
    keys: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["export", str(runs["forest"]), "--out", str(tmp_path / out), "--key", str(keys[0].parent / key)]
    assert main(argv) == 2
    assert message in one_error_line(capsys, "export")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def tflite_bundle(
    runs: dict[str, Path], keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "model.zip"
    assert main(["export", str(runs["mlp"]), "--out", str(out), "--key", str(keys[0])]) == 0
    return out


def _flip_model_byte(bundle: Path, target: Path) -> None:
    with zipfile.ZipFile(bundle) as source, zipfile.ZipFile(target, "w") as copy:
        for name in source.namelist():
            payload = bytearray(source.read(name))
            if name == "model.tflite":
                payload[-1] ^= 0x01
            copy.writestr(name, bytes(payload))


@pytest.mark.parametrize(
    ("make", "pub", "message"),
    [
        (_flip_model_byte, None, "hash: model.tflite sha256 mismatch"),
        (
            lambda bundle, target: shutil.copy(bundle, target),
            "other",
            "signature: manifest.sig does not verify",
        ),
        (lambda bundle, target: target.write_bytes(b"PK no zip"), None, "zip: not a readable zip file"),
        (lambda bundle, target: None, None, "zip: "),
        (lambda bundle, target: shutil.copy(bundle, target), "absent", "absent.pub: cannot read"),
    ],
)
def test_verify_names_the_failing_check(
    make: Callable[[Path, Path], None],
    pub: str | None,
    message: str,
    tflite_bundle: Path,
    keys: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = tmp_path / "model.zip"
    make(tflite_bundle, target)
    public = keys[1]
    if pub == "other":
        assert main(["keygen", "--out", str(tmp_path / "other")]) == 0
        public = tmp_path / "other" / "signing.pub"
    elif pub == "absent":
        public = tmp_path / "absent.pub"
    capsys.readouterr()
    assert main(["verify", str(target), "--pub", str(public)]) == 2
    assert message in one_error_line(capsys, "verify")


def test_verify_says_what_the_bundle_is_in_a_few_lines(
    runs: dict[str, Path], keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.zip"
    argv = ["export", str(runs["forest"]), "--out", str(out), "--key", str(keys[0]), "--model-id", "poses"]
    assert main([*argv, "--version", "4.1", "--threshold", "0.6", "--smoothing", "mean:0.5"]) == 0
    capsys.readouterr()
    assert main(["verify", str(out), "--pub", str(keys[1])]) == 0
    lines = capsys.readouterr().out.splitlines()
    signer = key_id(load_public_key(keys[1]))
    assert lines[0].startswith("model       poses 4.1 (sklearn, ")
    assert lines[1:6] == [
        f"labels      4: {', '.join(MULTI)}",
        "window      none: each frame is classified on its own",
        "decision    threshold 0.6, smoothing: mean over 0.5 s, no person: skip",
        "activities  none",
        f"signed by   key {signer}; the 20 sample rows reproduced within 0",
    ]
    assert lines[6:] == ["OK"]


def test_a_signature_refusal_names_the_bundles_key_and_the_trusted_ones(
    tflite_bundle: Path, keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    other = tmp_path / "signing.pub"
    assert main(["verify", str(tflite_bundle), "--pub", str(other)]) == 2
    signed, trusted = key_id(load_private_key(keys[0])), key_id(load_public_key(other))
    assert one_error_line(capsys, "verify") == (
        f"{tflite_bundle}: signature: manifest.sig does not verify with any trusted key "
        f"(the bundle names key {signed}; trusted: {trusted} ({other}))"
    )


def test_verify_accepts_any_of_several_trusted_keys(
    tflite_bundle: Path, keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", "--out", str(tmp_path)]) == 0
    assert (
        main(["verify", str(tflite_bundle), "--pub", str(tmp_path / "signing.pub"), "--pub", str(keys[1])])
        == 0
    )
    assert capsys.readouterr().out.strip().endswith("OK")


def test_a_hand_picked_version_after_a_default_one_is_refused_with_the_way_out(
    runs: dict[str, Path], keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "device.toml"
    config.write_text(
        f'[device]\nstate_dir = "state"\n[source]\nkind = "camera"\n[model]\ntrusted_keys = ["{keys[1]}"]\n'
    )
    export = ["export", str(runs["forest"]), "--key", str(keys[0]), "--model-id", "poses", "--out"]
    assert main([*export, str(tmp_path / "default.zip")]) == 0
    assert main([*export, str(tmp_path / "three.zip"), "--version", "3.0.0"]) == 0
    assert device(["models", "install", str(tmp_path / "default.zip"), "--config", str(config)]) == 0
    active = open_bundle(tmp_path / "default.zip", [load_public_key(keys[1])]).manifest.version
    assert re.fullmatch(r"\d{4}\.\d\d\.\d\d\.\d{6}", active)  # the time of export
    capsys.readouterr()

    assert device(["models", "install", str(tmp_path / "three.zip"), "--config", str(config)]) == 2
    assert capsys.readouterr().err.strip() == (  # force would not help: 3.0.0 never ran on this kiosk
        f"device models: error: rollback: poses 3.0.0 is below this kiosk's version floor {active}, which "
        f"force does not lower: export the model again with a version above {active} and install that"
    )


@pytest.mark.parametrize("command", ["keygen", "export", "verify"])
def test_every_command_has_help_with_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([command, "--help"])
    assert stopped.value.code == 0
    assert f"Examples:\n  python -m trainer {command} " in capsys.readouterr().out


SMALL = {
    "random_forest": {"classify__n_estimators": 10},
    "gradient_boosting": {"classify__n_estimators": 10},
    "hist_gradient_boosting": {"classify__max_iter": 10},
    "mlp": {"classify__hidden_layer_sizes": (16,), "classify__max_iter": 100},
}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_the_allowlist_admits_every_model_train_can_fit(model: str, multi: Examples) -> None:
    pipeline = deployable(fit(build_pipeline(model, 0, "upsample").set_params(**SMALL.get(model, {})), multi))
    loaded = load_skops(skops.io.dumps(pipeline))
    rows = multi[0][TRAIN_ROWS:]
    np.testing.assert_array_equal(loaded.predict_proba(rows), pipeline.predict_proba(rows))
