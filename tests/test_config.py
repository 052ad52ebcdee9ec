"""The device configuration: one test per rule, errors that name the key, secrets from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.__main__ import main
from device.config import ConfigError, load_config, parse_config

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
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOVEMENT_EDGE_HTTP_TOKEN", "do-not-print")
    path = tmp_path / "device.toml"
    path.write_text('[source]\nkind = "camera"\n')
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "do-not-print" not in out


def test_a_missing_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in capsys.readouterr().err
