"""MLflow tracking and registry end to end: train, find it with MLflow's own client, push by alias.

The store is MLflow's embedded SQLite store in a temporary folder (the default a user gets: the
current directory's mlflow.db); one test runs a real ``mlflow server`` on a loopback port. The
model is the BODY-25 pose classifier (conftest's ``pose_model`` dataset and key), trained again
with ``--mlflow``. Pushes go to two real kiosks (test_fleet.running_fleet) through
``python -m provisioning``'s entry point.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto, Subscriber, free_port
from conftest import REPO, PoseBundle
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from test_fleet import KIOSKS, TOKEN_ENV, Fleet, running_fleet, table
from test_train import Result, run_cli

from device.model.bundle import load_public_key, open_bundle
from device.model.desired import read_desired
from provisioning.__main__ import main as provisioning
from trainer.__main__ import main as trainer
from trainer.tracking import tracking_uri

SERVER_START_S = 60  # measured: 13-18 s on a loaded 2-core machine

# SQLAlchemy's notice about a loader strategy MLflow's store uses; nothing this project can change
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


def dataset_of(model: PoseBundle) -> Path:
    """The BODY-25 pose dataset the fixture's model was trained on (its run.json says where)."""
    return Path(json.loads((model.run_dir / "run.json").read_text())["dataset"]["path"])


def train_argv(model: PoseBundle, out: Path, *extra: object) -> list[object]:
    dataset = dataset_of(model)
    return ["train", "--dataset", dataset, "--target", "label", "--split", "stratified", "--out", out, *extra]


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@dataclass(frozen=True)
class Tracked:
    """A run trained with --mlflow --key into the default store of ``folder``."""

    folder: Path
    uri: str
    run_dir: Path
    trained: Result

    @property
    def client(self) -> MlflowClient:
        return client_for(self.uri)

    @property
    def run_id(self) -> str:
        return json.loads((self.run_dir / "mlflow.json").read_text())["run_id"]


@pytest.fixture(scope="module")
def tracked(pose_model: PoseBundle, tmp_path_factory: pytest.TempPathFactory) -> Tracked:
    """train --mlflow from a project folder, without --tracking-uri or $MLFLOW_TRACKING_URI."""
    folder = tmp_path_factory.mktemp("project")
    patch = pytest.MonkeyPatch()
    patch.chdir(folder)
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        argv = train_argv(
            pose_model, Path("runs/poses"), "--cv", 2, "--mlflow", "--key", pose_model.signing_key
        )
        trained = run_cli(trainer, *argv, "--model-id", "poses", "--version", "2.0.0")
    finally:
        patch.undo()
    assert trained.code == 0, trained.err
    return Tracked(folder, f"sqlite:///{folder.resolve() / 'mlflow.db'}", folder / "runs" / "poses", trained)


@pytest.fixture(scope="module")
def kiosks(
    pose_model: PoseBundle, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    with running_fleet(pose_model, data_dir, tmp_path_factory.mktemp("kiosks")) as fleet:
        yield fleet


@pytest.fixture
def token_env(kiosks: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, kiosks.tokens["kiosk-a"])


# --------------------------------------------------------------------------- the run


def test_the_default_store_is_mlflow_db_in_the_current_folder(tracked: Tracked) -> None:
    assert (tracked.folder / "mlflow.db").is_file()
    record = json.loads((tracked.run_dir / "mlflow.json").read_text())
    assert record["tracking_uri"] == tracked.uri
    run = tracked.client.get_run(record["run_id"])
    # artifacts beside the database, not wherever a later command happens to run
    assert run.info.artifact_uri.startswith((tracked.folder.resolve() / "mlruns").as_uri())
    assert (tracked.folder / "mlruns").is_dir()
    assert f"MLflow run {record['run_id']} in experiment 'poses'" in tracked.trained.out
    assert "registered poses version 1 (bundle 2.0.0) as models:/poses@candidate" in tracked.trained.out
    # MLflow kept quiet: stderr holds only train's own progress lines
    assert all(line.startswith("train: ") for line in tracked.trained.err.splitlines()), tracked.trained.err


def test_tracking_uri_is_the_option_then_the_environment_then_the_current_folder(tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    assert tracking_uri("sqlite:///x.db", env, tmp_path) == "sqlite:///x.db"
    assert tracking_uri(None, env, tmp_path) == "http://127.0.0.1:5000"
    assert tracking_uri(None, {}, tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_the_run_holds_params_fingerprint_metrics_and_artifacts(tracked: Tracked, tmp_path: Path) -> None:
    client = tracked.client
    experiment = client.get_experiment_by_name("poses")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [tracked.run_id]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "poses"

    record = json.loads((tracked.run_dir / "run.json").read_text())
    metrics = json.loads((tracked.run_dir / "metrics.json").read_text())
    fingerprint = record["dataset"]["fingerprint"]
    params = run.data.params
    assert params["model"] == "logistic_regression" and params["split"] == "stratified"
    assert params["seed"] == "0" and params["cv_folds"] == "2" and params["window"] == "per-frame"
    assert params["dataset.fingerprint"] == fingerprint and params["features"] == str(len(record["columns"]))
    assert params["feature_spec.angles"] == str(len(record["feature_spec"]["angles"]))
    assert params["feature_spec.presets"] == "seed"
    assert params["classifier.C"] == str(record["params"]["C"])
    assert run.data.tags["dataset.fingerprint"] == fingerprint
    assert run.data.tags["trainer.run_dir"] == str(tracked.run_dir.resolve())
    [table_input] = run.inputs.dataset_inputs
    assert table_input.dataset.digest == fingerprint.removeprefix("sha256:")[:32]
    assert table_input.dataset.name == Path(record["dataset"]["path"]).name
    assert {(tag.key, tag.value) for tag in table_input.tags} == {("mlflow.data.context", "training")}

    logged = run.data.metrics
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "mcc"):
        assert logged[name] == pytest.approx(metrics[name]), name
    for label, scores in metrics["per_class"].items():
        for score, value in scores.items():
            assert logged[f"per_class.{label}.{score}"] == pytest.approx(value), (label, score)
    assert logged["sizes.test_rows"] == metrics["sizes"]["test_rows"]
    assert logged["cv.macro_f1.mean"] == pytest.approx(metrics["cv"]["macro_f1"]["mean"])
    history = client.get_metric_history(tracked.run_id, "cv.macro_f1.folds")
    assert [(m.step, m.value) for m in history] == [
        (step, pytest.approx(value)) for step, value in enumerate(metrics["cv"]["macro_f1"]["folds"])
    ]

    assert {a.path for a in client.list_artifacts(tracked.run_id)} == {
        "report.html",
        "metrics.json",
        "run.json",
        "bundles",
    }
    copy = download_artifacts(
        run_id=tracked.run_id, artifact_path="report.html", dst_path=str(tmp_path), tracking_uri=tracked.uri
    )
    assert Path(copy).read_bytes() == (tracked.run_dir / "report.html").read_bytes()


def test_the_registered_version_is_the_signed_bundle(
    tracked: Tracked, pose_model: PoseBundle, tmp_path: Path
) -> None:
    client = tracked.client
    version = client.get_model_version_by_alias("poses", "candidate")
    assert version.run_id == tracked.run_id and str(version.version) == "1"
    bundle_file = tracked.run_dir / "bundle.zip"
    assert version.tags == {
        "bundle.file": "bundle.zip",
        "bundle.sha256": hashlib.sha256(bundle_file.read_bytes()).hexdigest(),
        "bundle.model_id": "poses",
        "bundle.version": "2.0.0",
        "bundle.model_sha256": open_bundle(
            bundle_file, [load_public_key(pose_model.public_key)]
        ).manifest.sha256,
    }
    folder = download_artifacts(artifact_uri=version.source, dst_path=str(tmp_path), tracking_uri=tracked.uri)
    downloaded = Path(folder) / "bundle.zip"
    bundle = open_bundle(downloaded, [load_public_key(pose_model.public_key)])
    record = json.loads((tracked.run_dir / "run.json").read_text())
    assert (bundle.manifest.model_id, bundle.manifest.version) == ("poses", "2.0.0")
    assert bundle.manifest.dataset_fingerprint == record["dataset"]["fingerprint"]
    assert downloaded.read_bytes() == bundle_file.read_bytes()


# --------------------------------------------------------------------------- push by alias


def test_push_by_alias_updates_every_kiosk_then_promotes(
    tracked: Tracked, kiosks: Fleet, token_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = kiosks.write("fleet.toml")
    argv = ["push", "models:/poses@candidate", "--fleet", fleet, "--tracking-uri", tracked.uri]
    status = provisioning([str(a) for a in [*argv, "--promote", "production", "--timeout", "60"]])
    captured = capsys.readouterr()
    rows = table(captured.out)
    assert status == 0, captured
    assert {rows[name][0] for name in KIOSKS} == {"ok"}, captured.out
    assert {kiosks.version(name) for name in KIOSKS} == {"2.0.0"}
    assert "version 1 of poses: poses 2.0.0, sha256 as registered" in captured.err
    assert "Downloading" not in captured.err  # no progress bar from MLflow
    assert "moved models:/poses@production to version 1" in captured.err
    assert tracked.client.get_model_version_by_alias("poses", "production").version == 1


def test_release_by_alias_publishes_the_registered_bundle_as_the_groups_desired_model(
    tracked: Tracked, pose_model: PoseBundle, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = "movement/fleet/lobby/model/desired"
    argv = ["release", "models:/poses@candidate", "--group", "lobby", "--key", str(pose_model.signing_key)]
    with Mosquitto() as broker:
        status = provisioning([*argv, "--tracking-uri", tracked.uri, "--broker", f"127.0.0.1:{broker.port}"])
        captured = capsys.readouterr()
        assert status == 0, captured
        with Subscriber(broker.port, topic) as subscriber:  # retained: a kiosk connecting later gets it
            (message,) = subscriber.wait_for(topic)
    desired = read_desired(message.payload, "lobby", [load_public_key(pose_model.public_key)])
    registered = (tracked.run_dir / "bundle.zip").read_bytes()
    assert (desired.model_id, desired.version, desired.release) == ("poses", "2.0.0", 1)
    assert desired.sha256 == hashlib.sha256(registered).hexdigest() and desired.bundle == registered


def test_a_failed_push_leaves_the_alias_where_it_was(
    tracked: Tracked,
    kiosks: Fleet,
    token_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked.uri)  # the store from the environment
    fleet = kiosks.write("dead.toml", dead=True)
    status = provisioning(["push", "models:/poses@candidate", "--fleet", str(fleet), "--promote", "rollout"])
    captured = capsys.readouterr()
    assert status == 1, captured
    assert table(captured.out)["kiosk-dead"][0] == "unreachable", captured.out
    assert "models:/poses@rollout not moved: not every device runs poses 2.0.0" in captured.err
    assert "rollout" not in tracked.client.get_registered_model("poses").aliases


def test_export_registers_a_new_version_in_the_same_run(
    tracked: Tracked, pose_model: PoseBundle, tmp_path: Path
) -> None:
    out = tmp_path / "poses-3.zip"
    argv = ["export", tracked.run_dir, "--out", out, "--key", pose_model.signing_key, "--version", "3.0.0"]
    result = run_cli(trainer, *argv, "--smoothing", "mean:0.3", "--mlflow", "--alias", "next")
    assert result.code == 0, result.err
    version = tracked.client.get_model_version_by_alias("poses", "next")
    assert version.run_id == tracked.run_id and version.tags["bundle.version"] == "3.0.0"
    assert version.tags["bundle.sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert tracked.client.get_model_version_by_alias("poses", "candidate").version == 1  # untouched

    again = run_cli(trainer, *argv[:2], "--out", tmp_path / "again.zip", *argv[4:], "--mlflow")
    assert again.code == 2 and "already holds a bundle 3.0.0" in again.err, again.err
    assert not (tmp_path / "again.zip").exists()


def test_without_a_key_the_run_is_logged_and_export_registers_it_later(
    tracked: Tracked, pose_model: PoseBundle, tmp_path: Path
) -> None:
    argv = train_argv(pose_model, tmp_path / "run", "--cv", 0, "--mlflow", "--tracking-uri", tracked.uri)
    trained = run_cli(trainer, *argv, "--experiment", "unsigned")
    assert trained.code == 0, trained.err
    assert "no bundle registered: give --key" in trained.out
    assert not (tmp_path / "run" / "bundle.zip").exists()
    record = json.loads((tmp_path / "run" / "mlflow.json").read_text())
    assert (record["model_id"], record["registered_model"]) == (None, None)
    client = tracked.client
    run_info = client.get_run(record["run_id"]).info
    assert run_info.status == "FINISHED" and run_info.experiment_id == record["experiment_id"]
    assert {a.path for a in client.list_artifacts(record["run_id"])} == {
        "report.html",
        "metrics.json",
        "run.json",
    }

    out = tmp_path / "label.zip"
    exported = run_cli(
        trainer,
        "export",
        tmp_path / "run",
        "--out",
        out,
        "--key",
        pose_model.signing_key,
        "--version",
        "1.0.0",
        "--mlflow",
    )
    assert exported.code == 0, exported.err
    version = client.get_model_version_by_alias("label", "candidate")  # the model id: the target column
    assert version.run_id == record["run_id"] and version.tags["bundle.model_id"] == "label"


# --------------------------------------------------------------------------- mistakes


@pytest.fixture
def fleet_file(tmp_path: Path) -> Path:
    """A fleet of one kiosk nobody runs: every case below must fail before any upload."""
    (tmp_path / "kiosk.token").write_text("token\n")
    path = tmp_path / "fleet.toml"
    path.write_text(
        f'[[device]]\nname = "kiosk-x"\nurl = "http://127.0.0.1:{free_port()}"\n'
        'token_file = "kiosk.token"\n'
    )
    return path


@pytest.mark.parametrize(
    ("bundle", "extra", "message"),
    [
        ("models:/poses@nobody", (), "Registered model alias nobody not found"),
        ("models:/unknown@candidate", (), "Registered Model with name=unknown not found"),
        ("models:/poses/99", (), "version=99) not found"),
        ("models:/poses", (), "expected models:/NAME@ALIAS or models:/NAME/VERSION"),
        ("models:/poses@candidate", ("--promote", "latest"), "--promote 'latest'"),
        ("{bundle}", ("--promote", "production"), "--promote needs a registered bundle"),
        ("models:/poses@candidate", ("--tracking-uri", "sqlite:///{missing}"), "no MLflow store there"),
    ],
)
def test_push_mistakes_are_one_line_errors(
    tracked: Tracked,
    pose_model: PoseBundle,
    fleet_file: Path,
    tmp_path: Path,
    bundle: str,
    extra: tuple[str, ...],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked.uri)  # --tracking-uri, where given, wins
    missing = tmp_path / "nothing" / "mlflow.db"
    fill = {"bundle": pose_model.bundle, "missing": missing}
    argv = ["push", bundle.format(**fill), "--fleet", fleet_file, *(arg.format(**fill) for arg in extra)]
    result = run_cli(provisioning, *argv)
    assert result.code == 2, result
    assert len(result.err.splitlines()) == 1 and message in result.err, result.err
    assert not missing.parent.exists()  # a missing store is not created


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--tracking-uri", "sqlite:///x.db"), "--tracking-uri needs --mlflow"),
        (("--mlflow", "--register", "poses"), "--register needs --key"),
        (("--mlflow", "--key", "{key}", "--alias", "v2"), "--alias 'v2'"),
        (("--mlflow", "--tracking-uri", "http://127.0.0.1:{port}"), "no MLflow server answers"),
        (("--mlflow", "--tracking-uri", "sqlite:///{tmp}/no/such/folder.db"), "does not exist"),
    ],
)
def test_train_mistakes_are_found_before_training(
    pose_model: PoseBundle, tmp_path: Path, options: tuple[str, ...], message: str
) -> None:
    fill = {"key": pose_model.signing_key, "port": free_port(), "tmp": tmp_path}
    result = run_cli(trainer, *train_argv(pose_model, tmp_path / "run"), *(o.format(**fill) for o in options))
    assert result.code == 2 and message in result.err, result.err
    assert "fitting" not in result.err and not (tmp_path / "run").exists()


def test_without_mlflow_the_commands_name_the_extra(tmp_path: Path, pose_model: PoseBundle) -> None:
    """The commands import MLflow only when asked to use it; with it unimportable, they name the extra."""
    script = (
        "import json, sys\n"
        "from trainer.__main__ import main as trainer\n"
        "from provisioning.__main__ import main as provisioning\n"
        "imported = 'mlflow' in sys.modules\n"
        "sys.modules['mlflow'] = None  # as if the extra were not installed\n"
        "codes = [trainer(json.loads(sys.argv[1])), provisioning(json.loads(sys.argv[2]))]\n"
        "print(json.dumps([imported, *codes]))\n"
    )
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'[[device]]\nname = "k"\nurl = "http://127.0.0.1:{free_port()}"\ntoken_env = "T"\n')
    train = [str(a) for a in train_argv(pose_model, tmp_path / "run", "--mlflow")]
    push = ["push", "models:/poses@candidate", "--fleet", str(fleet)]
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(train), json.dumps(push)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "T": "token"},
        check=False,
    )
    assert json.loads(done.stdout) == [False, 2, 2], done.stderr
    errors = done.stderr.splitlines()
    assert len(errors) == 2 and all("need MLflow: pip install .[mlflow]" in line for line in errors), errors


# --------------------------------------------------------------------------- a tracking server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on a free loopback port, proxying artifacts; its whole process group stopped."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{folder / 'server.db'}",
        "--artifacts-destination",
        str(folder / "art"),
    ]
    # no background job runner: it forks a pool of consumers this test never uses
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (folder / "server.log").open("wb")
    process = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server not up within {SERVER_START_S} s: {(folder / 'server.log').read_text()}"
                )
            time.sleep(0.25)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        log.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


def test_a_remote_tracking_server_works_the_same(
    server: str,
    pose_model: PoseBundle,
    kiosks: Fleet,
    token_env: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = train_argv(pose_model, tmp_path / "run", "--cv", 0, "--mlflow", "--tracking-uri", server)
    trained = run_cli(
        trainer, *argv, "--key", pose_model.signing_key, "--model-id", "poses", "--version", "2.0.0"
    )
    assert trained.code == 0, trained.err
    client = client_for(server)
    version = client.get_model_version_by_alias("poses", "candidate")
    assert version.source.startswith("mlflow-artifacts:")  # uploaded through the server
    record: dict[str, Any] = json.loads((tmp_path / "run" / "mlflow.json").read_text())
    assert record == {**record, "tracking_uri": server, "run_id": version.run_id}

    fleet = kiosks.write("remote.toml")
    argv = [
        "push",
        "models:/poses@candidate",
        "--fleet",
        fleet,
        "--device",
        "kiosk-a",
        "--tracking-uri",
        server,
    ]
    status = provisioning([*map(str, argv), "--promote", "production"])
    captured = capsys.readouterr()
    assert status == 0 and table(captured.out)["kiosk-a"][0] == "ok", captured
    assert kiosks.version("kiosk-a") == "2.0.0"
    assert client.get_model_version_by_alias("poses", "production").version == version.version
