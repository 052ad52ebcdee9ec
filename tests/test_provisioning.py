"""Kiosk set-up: ``init-device``, the fleet file's validation, install.sh in ``--root`` mode, the unit.

Everything runs for real: the commands through ``python -m provisioning``'s entry point, the
device's own config loader and ``check-config`` on what ``init-device`` wrote, the installer under
``sh`` (dash on Debian, so it stays POSIX), and ``systemd-analyze`` on the unit as installed.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import REPO
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from device.__main__ import main as device
from device.certificates import fingerprint, make_self_signed
from device.config import load_config
from provisioning.__main__ import main as provisioning
from provisioning.inventory import load_fleet, token_for
from trainer.__main__ import main as trainer

INSTALLER = REPO / "provisioning" / "install.sh"
UNIT = REPO / "systemd" / "movement-edge.service"


@pytest.fixture(scope="module")
def public_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keys = tmp_path_factory.mktemp("keys")
    assert trainer(["keygen", "--out", str(keys)]) == 0
    return keys / "signing.pub"


def init_device(out: Path, public_key: Path, *extra: str, name: str = "kiosk-1") -> int:
    return provisioning(
        ["init-device", "--name", name, "--out", str(out), "--trusted-key", str(public_key), *extra]
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- init-device


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_init_device_writes_a_config_the_device_accepts_and_a_fleet_entry(
    tmp_path: Path, public_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, fleet = tmp_path / "kiosks" / "kiosk-1", tmp_path / "fleet.toml"
    workstation = tmp_path / "kiosks" / "kiosk-1.workstation"
    extra = ["--mqtt-host", "broker.lan", "--host", "192.168.1.52", "--fleet", str(fleet)]
    assert init_device(out, public_key, *extra) == 0
    printed = capsys.readouterr().out
    # the folder that is copied to the kiosk holds no token in clear; the one that stays holds both
    assert sorted(p.name for p in out.iterdir()) == ["device.toml", "signing.pub", "tls.crt", "tls.key"]
    assert sorted(p.name for p in workstation.iterdir()) == [
        "fleet-entry.toml",
        "kiosk-1.token",
        "kiosk-1.viewer.token",
    ]
    assert "for this workstation only: kiosk-1.token (device token), kiosk-1.viewer.token" in printed
    assert str(workstation) in printed

    token, viewer = (
        (workstation / name).read_text().strip() for name in ("kiosk-1.token", "kiosk-1.viewer.token")
    )
    assert len(token) >= 40 and len(viewer) >= 40 and token != viewer
    assert mode(workstation) == 0o700 and mode(out / "tls.key") == 0o600
    assert mode(workstation / "kiosk-1.token") == mode(workstation / "kiosk-1.viewer.token") == 0o600
    config = load_config(out / "device.toml", env={})
    assert config.http.token_sha256 == sha256(token) and config.http.viewer_token_sha256 == sha256(viewer)
    kiosk_files = b"".join(path.read_bytes() for path in out.iterdir())
    assert token.encode() not in kiosk_files and viewer.encode() not in kiosk_files
    assert config.http.token is None and config.http.viewer_token is None
    assert str(config.http.bind) == "0.0.0.0" and config.http.port == 8080
    assert (config.http.tls_cert, config.http.tls_key) == (
        out.resolve() / "tls.crt",
        out.resolve() / "tls.key",
    )
    assert config.http.allowed_hosts == ["kiosk-1.local", "kiosk-1", "192.168.1.52"]
    assert config.device.id == "kiosk-1" and config.mqtt.host == "broker.lan"
    assert config.model.trusted_keys == [out.resolve() / "signing.pub"]  # relative to the config
    assert (out / "signing.pub").read_bytes() == public_key.read_bytes()
    # written here for the kiosk: its camera and folders exist there, so only keys and values here
    assert device(["check-config", str(out / "device.toml"), "--offline"]) == 0
    capsys.readouterr()

    # the certificate names the kiosk as clients reach it; its fingerprint is what the fleet pins
    certificate = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["kiosk-1.local", "kiosk-1"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["192.168.1.52"]
    private_key = serialization.load_pem_private_key((out / "tls.key").read_bytes(), password=None)
    assert private_key.public_key() == certificate.public_key()

    # the snippet and the fleet file both lead to the token; the fleet file's path is relative
    for inventory in (workstation / "fleet-entry.toml", fleet):
        (entry,) = load_fleet(inventory)
        assert (entry.name, entry.url) == ("kiosk-1", "https://kiosk-1.local:8080")
        assert entry.fingerprint == fingerprint((out / "tls.crt").read_bytes())
        assert token_for(entry, {}) == token
    assert 'token_file = "kiosks/kiosk-1.workstation/kiosk-1.token"' in fleet.read_text()

    # a second device is appended to the same fleet file
    assert (
        init_device(tmp_path / "kiosks" / "kiosk-2", public_key, "--fleet", str(fleet), name="kiosk-2") == 0
    )
    assert [entry.name for entry in load_fleet(fleet)] == ["kiosk-1", "kiosk-2"]


def test_init_device_refuses_to_overwrite_without_force(
    tmp_path: Path, public_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, fleet = tmp_path / "kiosk-1", tmp_path / "fleet.toml"
    token_file = tmp_path / "kiosk-1.workstation" / "kiosk-1.token"
    assert init_device(out, public_key, "--fleet", str(fleet)) == 0
    token = token_file.read_text()
    capsys.readouterr()

    assert init_device(out, public_key) == 2
    assert "exists and is not empty; give --force" in capsys.readouterr().err
    assert token_file.read_text() == token
    # a fresh --out, but the workstation folder of the same name is taken
    (tmp_path / "kiosk-1").rename(tmp_path / "moved")
    assert init_device(out, public_key) == 2
    assert f"--workstation {token_file.parent} exists and is not empty" in capsys.readouterr().err
    assert not out.exists()
    (tmp_path / "moved").rename(out)

    # the same name again in the fleet file: refused before anything is written
    assert init_device(tmp_path / "again", public_key, "--fleet", str(fleet)) == 2
    assert "a device named kiosk-1 is already in it" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()

    assert init_device(out, public_key, "--force") == 0
    assert token_file.read_text() != token  # a fresh token


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "kiosk 1"], "--name 'kiosk 1': use 1-64 letters, digits, _ and -"),
        (["--source", "file"], "--source file needs --video PATH"),
        (["--url", "ftp://kiosk-1"], "--url ftp://kiosk-1: must be the device's base URL"),
        (["--url", "http://kiosk-1:8080"], "--url http://kiosk-1:8080: the kiosk serves HTTPS"),
        (["--camera", "/dev/sda"], "source.device: must be a camera index or a /dev/videoN path"),
        (["--host", "kiosk 1"], "http.allowed_hosts: 'kiosk 1' is not a host name or IP address"),
        (["--workstation", "{out}/secrets"], "--workstation {out}/secrets is inside --out {out}"),
        (["--cert", "{keys}/tls.crt"], "--cert and --key go together"),
        (["--cert", "{keys}/signing.pub", "--key", "{keys}/tls.key"], "signing.pub: not a PEM certificate"),
        (["--cert", "{keys}/tls.crt", "--key", "{keys}/signing.pub"], "signing.pub: not a PEM private key"),
        (["--cert", "{keys}/tls.crt", "--key", "{keys}/other.key"], "other.key is not the private key of"),
    ],
)
def test_init_device_usage_errors(
    tmp_path: Path, public_key: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    keys, out = tmp_path / "keys", tmp_path / "out"
    keys.mkdir()
    key_pem, cert_pem = make_self_signed("kiosk-1", ["kiosk-1.local"])
    (keys / "tls.key").write_bytes(key_pem)
    (keys / "tls.crt").write_bytes(cert_pem)
    (keys / "other.key").write_bytes(make_self_signed("other", ["other.local"])[0])
    (keys / "signing.pub").write_bytes(public_key.read_bytes())
    base = ["init-device", "--name", "kiosk-1", "--out", str(out), "--trusted-key", str(public_key)]
    assert provisioning([*base, *(arg.format(keys=keys, out=out) for arg in args)]) == 2
    err = capsys.readouterr().err
    assert message.format(keys=keys, out=out) in err and err.count("\n") == 1, err
    assert not out.exists() and not (tmp_path / "out.workstation").exists()


def test_init_device_uses_the_users_own_certificate_and_pins_it(
    tmp_path: Path, public_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_pem, cert_pem = make_self_signed("kiosk-3", ["kiosk-3.clinic.example"])
    (tmp_path / "own.key").write_bytes(key_pem)
    (tmp_path / "own.crt").write_bytes(cert_pem)
    out = tmp_path / "kiosk-3"
    extra = ["--cert", str(tmp_path / "own.crt"), "--key", str(tmp_path / "own.key")]
    extra += ["--url", "https://kiosk-3.clinic.example:8443", "--workstation", str(tmp_path / "here")]
    assert init_device(out, public_key, *extra, name="kiosk-3") == 0

    assert (out / "tls.crt").read_bytes() == cert_pem and (out / "tls.key").read_bytes() == key_pem
    (entry,) = load_fleet(tmp_path / "here" / "fleet-entry.toml")
    assert entry.url == "https://kiosk-3.clinic.example:8443" and entry.fingerprint == fingerprint(cert_pem)
    config = load_config(out / "device.toml", env={})
    assert config.http.allowed_hosts == ["kiosk-3.local", "kiosk-3", "kiosk-3.clinic.example"]
    assert f"certificate sha256 {fingerprint(cert_pem)}" in capsys.readouterr().out


def test_gitignore_keeps_every_secret_the_tools_write_out_of_commits(
    tmp_path: Path, public_key: Path
) -> None:
    """Everything init-device and keygen write, in a scratch repository with the project's .gitignore:
    keys and tokens are ignored, what is meant to be shared is not."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    shutil.copy(REPO / ".gitignore", tmp_path / ".gitignore")
    subprocess.run([git, "init", "-q", str(tmp_path)], check=True, timeout=30)
    shutil.copytree(public_key.parent, tmp_path / "keys")  # signing.key and signing.pub
    assert init_device(tmp_path / "kiosks" / "kiosk-1", public_key) == 0
    written = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if path.is_file())
    written = [path for path in written if not path.startswith((".git/", ".gitignore"))]

    checked = subprocess.run(
        [git, "-C", str(tmp_path), "check-ignore", "--no-index", *written], capture_output=True, text=True
    )
    ignored = sorted(checked.stdout.split())
    assert ignored == [
        "keys/signing.key",
        "kiosks/kiosk-1.workstation/fleet-entry.toml",
        "kiosks/kiosk-1.workstation/kiosk-1.token",
        "kiosks/kiosk-1.workstation/kiosk-1.viewer.token",
        "kiosks/kiosk-1/tls.key",
    ], written


# --------------------------------------------------------------------------- the fleet file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "device: required (at least one [[device]] table)"),
        ("[device]\nname = 'k1'\n", "device: must be an array of tables: [[device]]"),
        ("[[device]]\nurl = 'http://k1:8080'\ntoken_env = 'T'\n", "device 1: name: required"),
        (
            "[[device]]\nname = 'k1'\nurl = 'http://k1:8080'\n",
            "device 1 ('k1'): give exactly one of token_env or token_file",
        ),
        (
            "[[device]]\nname = 'k1'\nurl = 'http://k1:8080'\ntoken_env = 'T'\ntoken_file = 't'\n",
            "device 1 ('k1'): give exactly one of token_env or token_file",
        ),
        (
            "[[device]]\nname = 'k1'\nurl = 'k1:8080'\ntoken_env = 'T'\n",
            "device 1 ('k1'): url: must be the device's base URL",
        ),
        (
            "[[device]]\nname = 'k1'\nurl = 'http://k1'\ntokn_env = 'T'\n",
            "device 1 ('k1'): tokn_env: unknown key",
        ),
        (
            "[[device]]\nname = 'k1'\nurl = 'http://a'\ntoken_env = 'T'\n"
            "[[device]]\nname = 'k1'\nurl = 'http://b'\ntoken_env = 'T'\n",
            "device: name 'k1' appears more than once",
        ),
        ("timeout = 3\n[[device]]\nname = 'k1'\nurl = 'http://a'\ntoken_env = 'T'\n", "timeout: unknown key"),
        (
            "[[device]]\nname = 'k1'\nurl = 'https://k1:8080'\nfingerprint = 'ab:cd'\ntoken_env = 'T'\n",
            "device 1 ('k1'): fingerprint: must be the SHA-256 of the kiosk's certificate: 64 hex digits",
        ),
        (
            f"[[device]]\nname = 'k1'\nurl = 'http://k1:8080'\nfingerprint = '{'a' * 64}'\ntoken_env = 'T'\n",
            "device 1 ('k1'): fingerprint pins a certificate: the url must be https://",
        ),
        (
            "[[device]]\nname = 'k1'\nurl = 'https://k1:99999'\ntoken_env = 'T'\n",
            "device 1 ('k1'): url: the port must be a number between 0 and 65535",
        ),
        ("[[device]\n", "not valid TOML"),
    ],
)
def test_fleet_file_errors_name_the_key_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(text)
    assert provisioning(["status", "--fleet", str(fleet)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"provisioning status: error: {fleet}: ") and err.count("\n") == 1, err
    assert message in err, err


def test_a_fingerprint_is_accepted_as_openssl_prints_it(tmp_path: Path) -> None:
    digest = fingerprint(make_self_signed("k1", ["k1.local"])[1])
    openssl_style = ":".join(digest[i : i + 2] for i in range(0, 64, 2)).upper()
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        f"[[device]]\nname = 'k1'\nurl = 'https://k1'\nfingerprint = '{openssl_style}'\ntoken_env = 'T'\n"
    )
    assert load_fleet(fleet)[0].fingerprint == digest


def test_the_example_fleet_file_is_valid() -> None:
    assert [entry.name for entry in load_fleet(REPO / "examples" / "fleet.toml")] == ["kiosk-1", "kiosk-2"]


# --------------------------------------------------------------------------- install.sh --root


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(INSTALLER), "--root", str(root), "--no-venv", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every path under ``root``: its mode and, for files, the SHA-256 of the content."""
    return {
        str(path.relative_to(root)): (
            mode(path),
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir",
        )
        for path in sorted(root.rglob("*"))
    }


@pytest.fixture
def kiosk_config(tmp_path: Path, public_key: Path) -> Path:
    assert init_device(tmp_path / "kiosk-1", public_key) == 0
    return tmp_path / "kiosk-1" / "device.toml"


def test_installer_root_mode_builds_the_tree_and_a_second_run_changes_nothing(
    tmp_path: Path, kiosk_config: Path
) -> None:
    root = tmp_path / "root"
    password = tmp_path / "broker-password"
    password.write_text("s3cret\n")
    credential = ("--credential", f"mqtt_password={password}")
    first = install(root, "--config", str(kiosk_config), "--with-mosquitto", *credential)
    assert first.returncode == 0, first.stderr

    expected_modes = {
        "opt/movement-edge": 0o755,
        "opt/movement-edge/device/__main__.py": 0o644,
        "opt/movement-edge/device/templates/index.html": 0o644,
        "opt/movement-edge/trainer/__main__.py": 0o644,
        "opt/movement-edge/provisioning/install.sh": 0o755,
        "opt/movement-edge/requirements/device.txt": 0o644,
        "opt/movement-edge/pyproject.toml": 0o644,
        "opt/movement-edge/README.md": 0o644,
        "etc/movement-edge": 0o750,
        "etc/movement-edge/device.toml": 0o640,
        "etc/movement-edge/signing.pub": 0o644,
        "etc/movement-edge/tls.crt": 0o644,
        "etc/movement-edge/tls.key": 0o600,
        "etc/movement-edge/credentials": 0o700,
        "etc/movement-edge/credentials/mqtt_password": 0o600,
        "var/lib/movement-edge": 0o750,
        "var/cache/movement-edge": 0o750,
        "etc/systemd/system/movement-edge.service": 0o644,
    }
    assert {path: mode(root / path) for path in expected_modes} == expected_modes
    assert (root / "etc/systemd/system/movement-edge.service").read_bytes() == UNIT.read_bytes()
    assert (root / "etc/movement-edge/device.toml").read_bytes() == kiosk_config.read_bytes()
    for name in ("tls.crt", "tls.key"):
        assert (root / "etc/movement-edge" / name).read_bytes() == (kiosk_config.parent / name).read_bytes()
    assert (root / "etc/movement-edge/credentials/mqtt_password").read_text() == "s3cret\n"
    assert not list(root.rglob("*.token")), "the tokens stay on the workstation"
    assert not list(root.rglob("__pycache__"))
    installed = load_config(root / "etc/movement-edge/device.toml", env={})
    assert installed.model.trusted_keys == [root / "etc/movement-edge/signing.pub"]
    assert installed.http.tls_key == root / "etc/movement-edge/tls.key"

    # what would happen to the machine: recorded, not done
    log = (root / "install.log").read_text().splitlines()
    useradd = next(line for line in log if line.startswith("useradd "))
    assert "--system" in useradd and "--groups video" in useradd and useradd.endswith(" movement-edge")
    assert "chown movement-edge:movement-edge /var/lib/movement-edge" in log
    assert "chgrp movement-edge /etc/movement-edge/device.toml" in log
    assert "chown movement-edge:movement-edge /etc/movement-edge/tls.key" in log  # 0600, the daemon's
    assert any("apt-get install" in line and line.endswith("mosquitto") for line in log)
    assert not any("systemctl" in line for line in log)

    before = snapshot(root)
    second = install(root, "--config", str(kiosk_config), "--with-mosquitto", *credential)
    assert second.returncode == 0, second.stderr
    assert snapshot(root) == before


def test_installer_keeps_a_different_config_unless_forced(
    tmp_path: Path, kiosk_config: Path, public_key: Path
) -> None:
    root = tmp_path / "root"
    assert install(root, "--config", str(kiosk_config)).returncode == 0
    assert init_device(tmp_path / "kiosk-2", public_key, name="kiosk-2") == 0
    other = tmp_path / "kiosk-2" / "device.toml"

    refused = install(root, "--config", str(other))
    assert refused.returncode == 2
    assert (
        "/etc/movement-edge/device.toml exists and differs" in refused.stderr and "--force" in refused.stderr
    )
    assert (root / "etc/movement-edge/device.toml").read_bytes() == kiosk_config.read_bytes()

    assert install(root, "--config", str(other), "--force").returncode == 0
    assert (root / "etc/movement-edge/device.toml").read_bytes() == other.read_bytes()
    assert install(root).returncode == 0  # an upgrade without --config keeps it
    assert (root / "etc/movement-edge/device.toml").read_bytes() == other.read_bytes()


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--help"], 0, ""),
        (["--bogus"], 2, "unknown option --bogus"),
        (["--config"], 2, "--config needs a value"),
        (["--credential", "tls_key=/etc/hostname"], 2, "NAME must be mqtt_password, http_token or"),
        (["--credential", "mqtt_password"], 2, "--credential mqtt_password: expected NAME=FILE"),
        (["--credential", "http_token=/nonexistent"], 2, "no such file /nonexistent"),
    ],
)
def test_installer_options(tmp_path: Path, args: list[str], status: int, message: str) -> None:
    command = ["sh", str(INSTALLER), "--root", str(tmp_path / "root"), "--no-venv", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == status, result.stderr
    if status == 0:
        assert "Examples:" in result.stdout and "--root DIR" in result.stdout
    else:
        assert result.stderr.startswith("install: error: ") and message in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and not (tmp_path / "root" / "etc").exists()


def test_installer_warns_that_an_old_secrets_env_is_no_longer_read(
    tmp_path: Path, kiosk_config: Path
) -> None:
    root = tmp_path / "root"
    (root / "etc/movement-edge").mkdir(parents=True)
    (root / "etc/movement-edge/secrets.env").write_text("MOVEMENT_EDGE_MQTT_PASSWORD=old\n")
    result = install(root, "--config", str(kiosk_config))
    assert result.returncode == 0, result.stderr
    assert "/etc/movement-edge/secrets.env is no longer read" in result.stderr
    assert "--credential NAME=FILE" in result.stderr


# A stand-in interpreter as a minimal image has it: Python 3.11 without venv and ensurepip. It
# answers install.sh's questions, makes a bare "virtualenv" and takes pip and check-config quietly.
BARE_PYTHON = """#!/bin/sh
case "$1" in
--version) echo "Python 3.11.2" ;;
-c) case "$2" in *ensurepip*) exit 1 ;; esac ;;
-m) if [ "$2" = venv ]; then
        mkdir -p "$3/bin" "$3/lib/python3.11/site-packages" && cp "$0" "$3/bin/python"
    fi ;;
esac
"""


def test_installer_installs_python3_venv_where_the_image_lacks_it(tmp_path: Path, kiosk_config: Path) -> None:
    python = tmp_path / "python3.11"
    python.write_text(BARE_PYTHON)
    python.chmod(0o755)
    root = tmp_path / "root"
    result = subprocess.run(
        ["sh", str(INSTALLER), "--root", str(root), "--python", str(python), "--config", str(kiosk_config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    log = (root / "install.log").read_text().splitlines()
    assert any(line.endswith("apt-get install --yes --no-install-recommends python3-venv") for line in log)
    assert (root / "opt/movement-edge/venv/bin/python").exists()


def test_a_picamera2_kiosk_gets_debians_camera_library_and_its_venv_sees_it(
    tmp_path: Path, public_key: Path
) -> None:
    """Debian's python3-picamera2 lives in /usr/lib/python3/dist-packages; the kiosk's venv must
    import it while its own pinned numpy still wins over Debian's."""
    assert init_device(tmp_path / "pi", public_key, "--source", "picamera2") == 0
    root = tmp_path / "root"
    venv = root / "opt/movement-edge/venv"  # a venv managed otherwise (--no-venv): real, no pip
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    result = install(root, "--config", str(tmp_path / "pi" / "device.toml"))
    assert result.returncode == 0, result.stderr
    log = (root / "install.log").read_text().splitlines()
    assert any(line.endswith("--no-install-recommends python3-picamera2") for line in log)

    # Debian's side, inside the tree: picamera2 and an older numpy; the venv's own numpy
    debian = root / "usr/lib/python3/dist-packages"
    for folder, text in ((debian / "numpy", "debian"), (debian / "picamera2", "picamera2"),
                         (venv / "lib/python3.11/site-packages/numpy", "venv")):
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text(f"WHERE = {text!r}\n")
    probe = "import numpy, picamera2; print(numpy.WHERE, picamera2.WHERE)"
    seen = subprocess.run([venv / "bin/python", "-c", probe], capture_output=True, text=True, timeout=60)
    assert seen.stdout.split() == ["venv", "picamera2"], seen.stderr
    # a kiosk with a USB camera gets neither
    assert init_device(tmp_path / "usb", public_key, "--source", "camera", name="kiosk-2") == 0
    usb = tmp_path / "usb-root"
    assert install(usb, "--config", str(tmp_path / "usb" / "device.toml")).returncode == 0
    assert "picamera2" not in (usb / "install.log").read_text()
    assert not list(usb.rglob("*.pth"))


# --------------------------------------------------------------------------- the systemd unit


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze not found: install Debian's systemd package (make system)")
    return found


def test_the_installed_unit_passes_systemd_analyze_verify(tmp_path: Path, kiosk_config: Path) -> None:
    """Verify the unit as installed, inside the tree, with ``systemd-analyze verify --root``.

    verify resolves ExecStart= and the units it depends on inside the root, so the tree gets what
    a real kiosk has there: the OS's own unit library (sysinit.target, network-online.target …,
    copied from this machine) and the virtualenv's interpreter that ``--no-venv`` skipped
    (``python -m venv --copies``: a real executable, not a symlink leading out of the tree).
    The unit file itself is the installed one, unmodified.
    """
    analyze = systemd_analyze()
    root = tmp_path / "root"
    assert install(root, "--config", str(kiosk_config)).returncode == 0
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    venv = root / "opt/movement-edge/venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--copies", str(venv)], check=True, timeout=60
    )

    verify = subprocess.run(
        [analyze, "verify", f"--root={root}", "movement-edge.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [line for line in (verify.stdout + verify.stderr).splitlines() if "movement-edge" in line]
    assert verify.returncode == 0 and not problems, verify.stdout + verify.stderr

    # and the hardening keeps systemd's own exposure score at most 2.0 (1.5 now; the threshold
    # is given in tenths)
    security = subprocess.run(
        [analyze, "security", "--offline=yes", f"--root={root}", "--threshold=20", "movement-edge.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert security.returncode == 0, security.stdout[-2000:] + security.stderr


def test_verify_catches_a_unit_whose_command_is_missing(tmp_path: Path, kiosk_config: Path) -> None:
    """The check above is not vacuous: without the interpreter in the tree, verify fails."""
    analyze = systemd_analyze()
    root = tmp_path / "root"
    assert install(root, "--config", str(kiosk_config)).returncode == 0
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    verify = subprocess.run(
        [analyze, "verify", f"--root={root}", "movement-edge.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode != 0 and "/opt/movement-edge/venv/bin/python" in verify.stderr


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value (systemd keys such as DeviceAllow= repeat)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        sections[section][key.strip()].append(value.strip())
    return sections


def test_the_unit_has_the_hardening_the_issue_asks_for() -> None:
    unit = parse_unit(UNIT)
    service = unit["Service"]
    single = {key: values[-1] for key, values in service.items()}
    assert single["Type"] == "notify" and "WatchdogSec" in single
    assert single["Restart"] == "on-failure"
    assert "StartLimitIntervalSec" in unit["Unit"] and "StartLimitBurst" in unit["Unit"]
    assert single["User"] == "movement-edge" and "video" in single["SupplementaryGroups"].split()
    assert single["StateDirectory"] == single["ConfigurationDirectory"] == "movement-edge"
    assert single["ProtectSystem"] == "strict"
    assert single["ProtectHome"] == single["PrivateTmp"] == single["NoNewPrivileges"] == "yes"
    assert set(single["RestrictAddressFamilies"].split()) <= {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert single.get("PrivateDevices", "no") == "no"  # it would hide the cameras
    # the paths the unit runs with are the ones install.sh writes
    assert single["ExecStart"].split()[:4] == ["/opt/movement-edge/venv/bin/python", "-m", "device", "run"]
    assert single["ExecStart"].endswith("--config /etc/movement-edge/device.toml")


# The driver groups (/proc/devices names) of what a camera opens: V4L2 nodes and sub-devices,
# media controllers, libcamera's DMA heaps, older Pi firmware's VCHIQ.
CAMERA_GROUPS = {"video4linux", "media", "dma_heap", "vchiq"}


def test_device_access_names_device_groups_not_folders() -> None:
    """systemd's DeviceAllow= takes a device node or ``char-<group>``; a folder such as /dev/dma_heap
    is not accepted (it was in the unit, and libcamera's buffers would have been refused)."""
    allowed = parse_unit(UNIT)["Service"]["DeviceAllow"]
    groups = set()
    for value in allowed:
        device, access = value.split()
        assert access == "rw", value
        assert device.startswith("char-"), f"{value}: a group, so nodes that appear later are allowed too"
        groups.add(device.removeprefix("char-"))
    assert groups == CAMERA_GROUPS


def test_matplotlib_writes_its_cache_into_the_cache_directory() -> None:
    service = parse_unit(UNIT)["Service"]
    environment = dict(pair.split("=", 1) for line in service["Environment"] for pair in line.split())
    cache = "/var/cache/" + service["CacheDirectory"][-1]
    assert environment["MPLCONFIGDIR"].startswith(cache + "/")
