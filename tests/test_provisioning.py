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

from device.__main__ import main as device
from device.config import load_config
from provisioning.__main__ import main as provisioning
from provisioning.fleet import load_fleet, token_for
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


def test_init_device_writes_a_config_the_device_accepts_and_a_fleet_entry(
    tmp_path: Path, public_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, fleet = tmp_path / "kiosks" / "kiosk-1", tmp_path / "fleet.toml"
    assert init_device(out, public_key, "--mqtt-host", "broker.lan", "--fleet", str(fleet)) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "device.toml",
        "fleet-entry.toml",
        "kiosk-1.token",
        "signing.pub",
    ]

    token_file = out / "kiosk-1.token"
    token = token_file.read_text().strip()
    assert mode(token_file) == 0o600 and len(token) >= 40
    config = load_config(out / "device.toml", env={})
    assert config.http.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert config.http.token is None and token not in (out / "device.toml").read_text()
    assert str(config.http.bind) == "0.0.0.0" and config.http.port == 8080
    assert config.device.id == "kiosk-1" and config.mqtt.host == "broker.lan"
    assert config.model.trusted_keys == [out.resolve() / "signing.pub"]  # relative to the config
    assert (out / "signing.pub").read_bytes() == public_key.read_bytes()
    # written here for the kiosk: its camera and folders exist there, so only keys and values here
    assert device(["check-config", str(out / "device.toml"), "--offline"]) == 0
    capsys.readouterr()

    # the snippet and the fleet file both lead to the token; the fleet file's path is relative
    for inventory in (out / "fleet-entry.toml", fleet):
        (entry,) = load_fleet(inventory)
        assert (entry.name, entry.url) == ("kiosk-1", "http://kiosk-1.local:8080")
        assert token_for(entry, {}) == token
    assert 'token_file = "kiosks/kiosk-1/kiosk-1.token"' in fleet.read_text()

    # a second device is appended to the same fleet file
    assert (
        init_device(tmp_path / "kiosks" / "kiosk-2", public_key, "--fleet", str(fleet), name="kiosk-2") == 0
    )
    assert [entry.name for entry in load_fleet(fleet)] == ["kiosk-1", "kiosk-2"]


def test_init_device_refuses_to_overwrite_without_force(
    tmp_path: Path, public_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, fleet = tmp_path / "kiosk-1", tmp_path / "fleet.toml"
    assert init_device(out, public_key, "--fleet", str(fleet)) == 0
    token = (out / "kiosk-1.token").read_text()
    capsys.readouterr()

    assert init_device(out, public_key) == 2
    assert "exists and is not empty; give --force" in capsys.readouterr().err
    assert (out / "kiosk-1.token").read_text() == token

    # the same name again in the fleet file: refused before anything is written
    assert init_device(tmp_path / "again", public_key, "--fleet", str(fleet)) == 2
    assert "a device named kiosk-1 is already in it" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()

    assert init_device(out, public_key, "--force") == 0
    assert (out / "kiosk-1.token").read_text() != token  # a fresh token


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "kiosk 1"], "--name 'kiosk 1': use 1-64 letters, digits, _ and -"),
        (["--source", "file"], "--source file needs --video PATH"),
        (["--url", "ftp://kiosk-1"], "--url ftp://kiosk-1: must be the device's base URL"),
        (["--camera", "/dev/sda"], "source.device: must be a camera index or a /dev/videoN path"),
    ],
)
def test_init_device_usage_errors(
    tmp_path: Path, public_key: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    base = [
        "init-device",
        "--name",
        "kiosk-1",
        "--out",
        str(tmp_path / "out"),
        "--trusted-key",
        str(public_key),
    ]
    assert provisioning([*base, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


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
    first = install(root, "--config", str(kiosk_config), "--with-mosquitto")
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
        "var/lib/movement-edge": 0o750,
        "var/cache/movement-edge": 0o750,
        "etc/systemd/system/movement-edge.service": 0o644,
    }
    assert {path: mode(root / path) for path in expected_modes} == expected_modes
    assert (root / "etc/systemd/system/movement-edge.service").read_bytes() == UNIT.read_bytes()
    assert (root / "etc/movement-edge/device.toml").read_bytes() == kiosk_config.read_bytes()
    assert not list(root.rglob("*.token")), "the token stays on the workstation"
    assert not list(root.rglob("__pycache__"))
    installed = load_config(root / "etc/movement-edge/device.toml", env={})
    assert installed.model.trusted_keys == [root / "etc/movement-edge/signing.pub"]

    # what would happen to the machine: recorded, not done
    log = (root / "install.log").read_text().splitlines()
    useradd = next(line for line in log if line.startswith("useradd "))
    assert "--system" in useradd and "--groups video" in useradd and useradd.endswith(" movement-edge")
    assert "chown movement-edge:movement-edge /var/lib/movement-edge" in log
    assert "chgrp movement-edge /etc/movement-edge/device.toml" in log
    assert any("apt-get install" in line and line.endswith("mosquitto") for line in log)
    assert not any("systemctl" in line for line in log)

    before = snapshot(root)
    second = install(root, "--config", str(kiosk_config), "--with-mosquitto")
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


@pytest.mark.parametrize(("args", "status"), [(["--help"], 0), (["--bogus"], 2), (["--config"], 2)])
def test_installer_options(tmp_path: Path, args: list[str], status: int) -> None:
    result = subprocess.run(["sh", str(INSTALLER), *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == status, result.stderr
    if status == 0:
        assert "Examples:" in result.stdout and "--root DIR" in result.stdout
    else:
        assert result.stderr.startswith("install: error: ")


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

    # and the hardening keeps systemd's own exposure score at most 4.0 (3.4 now; the threshold
    # is given in tenths)
    security = subprocess.run(
        [analyze, "security", "--offline=yes", f"--root={root}", "--threshold=40", "movement-edge.service"],
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
    assert "char-video4linux rw" in service["DeviceAllow"]
    assert single.get("PrivateDevices", "no") == "no"  # it would hide the cameras
    # the paths the unit runs with are the ones install.sh writes
    assert single["ExecStart"].split()[:4] == ["/opt/movement-edge/venv/bin/python", "-m", "device", "run"]
    assert single["ExecStart"].endswith("--config /etc/movement-edge/device.toml")
