"""The device configuration: one test per rule, errors that name the key, secrets from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.__main__ import main
from device.config import ConfigError, load_config, parse_config
from trainer.__main__ import main as trainer
from trainer.recipes import PoseBundle

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"source": {"kind": "file", "paths": ["walk.mp4"]}}


def test_the_example_config_is_valid() -> None:
    config = load_config(REPO / "examples" / "device.toml")
    assert config.device.id == "kiosk-1"
    assert config.source.kind == "camera"
    assert config.model.trusted_keys == [(REPO / "examples" / "signing.pub").resolve()]


def test_defaults_are_safe() -> None:
    config = parse_config(MINIMAL, env={})
    assert str(config.http.bind) == "127.0.0.1" and config.http.port == 8080
    assert config.http.token is None  # mutating endpoints stay closed without a token
    assert config.mqtt.enabled and config.mqtt.port == 1883
    assert config.outbox_path == Path("/var/lib/movement-edge/outbox.sqlite")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "source: required"),
        ({"source": {"kind": "webcam"}}, "source.kind: must be one of"),
        ({"source": {"kind": "file"}}, "source.paths: required"),
        ({"source": {"kind": "file", "paths": ["a.mp4"], "lop": True}}, "source.lop: unknown key"),
        ({**MINIMAL, "colour": "red"}, "colour: unknown key"),
        ({**MINIMAL, "mqtt": {"port": 70000}}, "mqtt.port"),
        ({**MINIMAL, "mqtt": {"password": "x"}}, "mqtt: mqtt.password is set but mqtt.username is not"),
        ({**MINIMAL, "mqtt": {"prefix": "a/#"}}, "mqtt.prefix"),
        ({**MINIMAL, "device": {"id": "bad id"}}, "device.id"),
        ({**MINIMAL, "device": {"log_level": "loud"}}, "device.log_level"),
        ({"source": {"kind": "camera", "device": "/dev/sda"}}, "source.device: must be a camera index"),
        ({"source": {"kind": "url", "url": "ftp://x"}}, "source.url"),
        (
            {**MINIMAL, "model": {"smoothing": {"kind": "hysteresis", "enter": 0.3, "exit": 0.5}}},
            "smoothing.exit",
        ),
        ({**MINIMAL, "http": {"token_sha256": "short"}}, "http.token_sha256"),
        ({**MINIMAL, "http": {"bind": "kiosk.local"}}, "http.bind"),
    ],
)
def test_each_rule_names_its_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        parse_config(data, env={})
    assert message in str(caught.value)


def test_a_refused_camera_url_or_pipeline_is_not_echoed_with_its_password() -> None:
    for source in (
        {"kind": "url", "url": "ftp://admin:hunter2@10.0.0.9/stream"},
        {"kind": "gstreamer", "pipeline": ""},
    ):
        with pytest.raises(ConfigError) as caught:
            parse_config({"source": source}, env={})
        assert "source." in str(caught.value) and "hunter2" not in str(caught.value), caught.value
        assert "got" not in str(caught.value)


def test_secrets_come_from_the_environment_or_credentials(tmp_path: Path) -> None:
    data = {**MINIMAL, "mqtt": {"username": "kiosk"}}
    config = parse_config(
        data, env={"MOVEMENT_EDGE_MQTT_PASSWORD": "s3cret", "MOVEMENT_EDGE_HTTP_TOKEN": "t0ken"}
    )
    assert config.mqtt.password == "s3cret" and config.http.token == "t0ken"
    (tmp_path / "http_token").write_text("from-systemd\n")
    config = parse_config(data, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert config.http.token == "from-systemd"


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "device.toml"
    path.write_text('[source]\nkind = "file"\npaths = ["videos/a.mp4"]\n[model]\nbundle = "m.zip"\n')
    config = load_config(path, env={})
    assert config.source.paths == [tmp_path / "videos" / "a.mp4"]
    assert config.model.bundle == tmp_path / "m.zip"


@pytest.mark.parametrize(
    ("content", "message"),
    [("[source\nkind=1", "not valid TOML"), ('[source]\nkind = "file"\npaths = []\n', "source.paths")],
)
def test_check_config_reports_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "device.toml"
    path.write_text(content)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(path) in err[0]


def test_check_config_accepts_a_good_file_and_hides_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, squats: Path
) -> None:
    monkeypatch.setenv("MOVEMENT_EDGE_HTTP_TOKEN", "do-not-print")
    path = tmp_path / "device.toml"
    path.write_text(f'[device]\nstate_dir = "state"\n[source]\nkind = "file"\npaths = ["{squats}"]\n')
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK (files and devices too)" in out and "do-not-print" not in out


# --------------------------------------------------------------------------- what the config names


def write_config(folder: Path, source: str, model: str = "") -> Path:
    """A device.toml in ``folder`` with its own state folder, the given [source] and [model] bodies."""
    path = folder / "device.toml"
    path.write_text(f'[device]\nstate_dir = "state"\n[source]\n{source}\n[model]\n{model}\n')
    return path


def check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    status = main(["check-config", *argv])
    return status, capsys.readouterr().err.splitlines()


def test_check_config_names_every_missing_file_on_a_line_of_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], squats: Path
) -> None:
    (tmp_path / "pose.task").write_text("not a zip")
    source = f'kind = "file"\npaths = ["{squats}", "gone.mp4"]'
    model = 'bundle = "model.zip"\ntrusted_keys = ["signing.pub"]'
    path = write_config(tmp_path, source, model)
    with path.open("a") as config:
        config.write('[pose]\nmodel = "pose.task"\n')

    status, lines = check(capsys, str(path))
    assert status == 2
    prefix = f"device check-config: error: {path}: "
    assert all(line.startswith(prefix) for line in lines), lines
    assert [line.removeprefix(prefix) for line in lines] == [
        f"source.paths.1 {tmp_path / 'gone.mp4'}: No such file or directory",
        f"pose.model {tmp_path / 'pose.task'}: not a pose landmarker .task bundle (File is not a zip file); "
        "pass a valid pose landmarker .task file with --pose-model",
        f"model.trusted_keys.0 {tmp_path / 'signing.pub'}: cannot read (No such file or directory)",
        f"model.bundle {tmp_path / 'model.zip'}: No such file or directory",
    ]

    assert main(["check-config", str(path), "--offline"]) == 0  # written for another machine
    assert "OK (files and devices not checked: --offline)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ('kind = "camera"\ndevice = 99', "source.device 99: /dev/video99 does not exist: no camera there"),
        ('kind = "camera"\ndevice = "/dev/video99"', "source.device /dev/video99: /dev/video99 does not"),
        ('kind = "file"\npaths = ["device.toml"]', "source.paths.0 {tmp}/device.toml: cannot open as"),
    ],
)
def test_a_camera_or_video_the_daemon_cannot_open_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], source: str, problem: str
) -> None:
    status, lines = check(capsys, str(write_config(tmp_path, source)))
    assert status == 2 and len(lines) == 1 and problem.format(tmp=tmp_path) in lines[0]


def test_state_and_outbox_folders_must_be_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], squats: Path
) -> None:
    (tmp_path / "taken").write_text("a file where a folder should be")
    path = tmp_path / "device.toml"
    path.write_text(
        f'[device]\nstate_dir = "taken/state"\n[source]\nkind = "file"\npaths = ["{squats}"]\n'
        '[outbox]\npath = "taken/outbox.sqlite"\n'
    )
    status, lines = check(capsys, str(path))
    taken = tmp_path / "taken"
    assert status == 2 and [line.split(f"{path}: ", 1)[1] for line in lines] == [
        f"device.state_dir {taken / 'state'}: {taken} is not a folder",
        f"outbox.path {taken / 'outbox.sqlite'}: {taken} is not a folder",
    ]


def test_the_fleet_ca_file_must_be_readable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], squats: Path
) -> None:
    path = write_config(tmp_path, f'kind = "file"\npaths = ["{squats}"]')
    with path.open("a") as config:
        config.write('[fleet]\ngroups = ["lobby"]\nca_file = "fleet-ca.pem"\n')
    status, lines = check(capsys, str(path))
    assert status == 2 and [line.split(f"{path}: ", 1)[1] for line in lines] == [
        f"fleet.ca_file {tmp_path / 'fleet-ca.pem'}: No such file or directory"
    ]
    (tmp_path / "fleet-ca.pem").write_text("the CA the file server's certificate is signed by")
    assert check(capsys, str(path)) == (0, [])


def test_the_bundle_must_verify_with_the_trusted_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pose_model: PoseBundle, squats: Path
) -> None:
    source = f'kind = "file"\npaths = ["{squats}"]'
    good = f'bundle = "{pose_model.bundle}"\ntrusted_keys = ["{pose_model.public_key}"]'
    assert check(capsys, str(write_config(tmp_path, source, good))) == (0, [])

    assert trainer(["keygen", "--out", str(tmp_path / "other")]) == 0
    other = f'bundle = "{pose_model.bundle}"\ntrusted_keys = ["other/signing.pub"]'
    status, lines = check(capsys, str(write_config(tmp_path, source, other)))
    assert status == 2 and len(lines) == 1
    assert f"model.bundle {pose_model.bundle}: signature: manifest.sig does not verify" in lines[0]

    unsigned = f'bundle = "{pose_model.bundle}"'
    status, lines = check(capsys, str(write_config(tmp_path, source, unsigned)))
    assert status == 2 and "no model.trusted_keys to verify it with" in lines[0]


def test_a_missing_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in capsys.readouterr().err
