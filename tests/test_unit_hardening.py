"""The systemd unit's sandbox, checked directive by directive and by running the daemon inside it.

systemd does not run here (no PID 1 systemd in the container or in CI), so the unit cannot be
started for real. What can be done for real is what its riskiest directives do to the process:
``SystemCallFilter=`` is a seccomp filter, so the test expands the unit's own filter with this
machine's ``systemd-analyze syscall-filter`` (the sets of the systemd that will enforce it),
loads it with libseccomp — as systemd does — in a launcher that then executes the real
``python -m device run``, and watches the daemon classify a video with MediaPipe, publish to a
real mosquitto, serve HTTPS, write its SQLite outbox and stop cleanly on SIGTERM. The same run
measures the memory and threads that ``MemoryMax=`` and ``TasksMax=`` must leave room for.
"""

from __future__ import annotations

import codecs
import ctypes.util
import http.client
import json
import re
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from broker import Mosquitto, Subscriber, free_port
from conftest import REPO, PoseBundle, eventually
from test_provisioning import INSTALLER, UNIT, parse_unit

from device.certificates import make_self_signed
from device.config import SECRET_ENV, parse_config
from provisioning.devices import toml_document

DEVICE = "kiosk-sandbox"
CREDENTIALS_DIR = "/etc/movement-edge/credentials"


def service() -> dict[str, list[str]]:
    return parse_unit(UNIT)["Service"]


def test_the_unit_filters_system_calls_and_bounds_memory_and_tasks() -> None:
    unit = service()
    assert unit["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert unit["SystemCallErrorNumber"] == ["EPERM"]  # a refused call fails; it does not kill the daemon
    assert unit["SystemCallArchitectures"] == ["native"]
    assert unit["ProtectProc"] == ["invisible"] and unit["PrivateMounts"] == ["yes"]
    assert re.fullmatch(r"\d+[KMG]", unit["MemoryMax"][-1]) and int(unit["TasksMax"][-1]) > 0
    # ProcSubset=pid would hide /proc/cpuinfo, from which XNNPACK learns an ARM CPU: on a
    # Raspberry Pi MediaPipe and LiteRT would lose their CPU backend. Kept out on purpose.
    assert "ProcSubset" not in unit


def test_secrets_are_credentials_each_optional_and_none_is_an_environment_file() -> None:
    unit = service()
    assert "EnvironmentFile" not in unit, "secrets in the environment reach every child and /proc/PID/environ"
    loaded = dict(value.split(":", 1) for value in unit["LoadCredential"])
    defaults = dict(value.split(":", 1) for value in unit["SetCredential"])
    assert set(loaded) == set(defaults) == set(SECRET_ENV), "every secret the daemon reads, no other"
    assert loaded == {name: f"{CREDENTIALS_DIR}/{name}" for name in SECRET_ENV}
    # install.sh --credential writes exactly there
    assert "CREDENTIALS_DIR=$ETC/credentials" in INSTALLER.read_text()


def test_a_missing_credential_file_means_the_secret_is_not_set(tmp_path: Path) -> None:
    """The unit's default for an absent credential file must read as "not set", not as a password."""
    defaults = dict(value.split(":", 1) for value in service()["SetCredential"])
    (tmp_path / "mqtt_password").write_text(codecs.decode(defaults["mqtt_password"], "unicode_escape"))
    base = {"source": {"kind": "file", "paths": ["v.mp4"]}, "mqtt": {"username": "kiosk"}}
    assert parse_config(base, env={"CREDENTIALS_DIRECTORY": str(tmp_path)}).mqtt.password is None

    (tmp_path / "mqtt_password").write_text("s3cret\n")  # what install.sh --credential installs
    assert parse_config(base, env={"CREDENTIALS_DIRECTORY": str(tmp_path)}).mqtt.password == "s3cret"


# --------------------------------------------------------------------------- the daemon in the filter


@cache
def syscalls(group: str) -> frozenset[str]:
    """The system calls of a ``@group`` as this machine's systemd defines it, nested groups expanded."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: it defines the unit's system call sets")
    listed = subprocess.run([analyze, "syscall-filter", group], capture_output=True, text=True, check=True)
    names: set[str] = set()
    for line in listed.stdout.splitlines()[1:]:
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        names |= syscalls(name) if name.startswith("@") else {name}
    return frozenset(names)


def allowed_syscalls() -> list[str]:
    """What the unit's SystemCallFilter= lines allow: the allow-list minus the ``~`` deny-lists."""
    allowed: set[str] = set()
    for line in service()["SystemCallFilter"]:
        deny = line.startswith("~")
        for group in line.removeprefix("~").split():
            allowed = allowed - syscalls(group) if deny else allowed | syscalls(group)
    return sorted(allowed)


SECCOMP_LAUNCHER = """
import ctypes, errno, os, sys
lib = ctypes.CDLL(sys.argv[1], use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
context = lib.seccomp_init(0x00050000 | errno.EPERM)  # SCMP_ACT_ERRNO(EPERM): SystemCallErrorNumber=
for name in sys.argv[2].split(","):
    number = lib.seccomp_syscall_resolve_name(name.encode())
    if number >= 0 and lib.seccomp_rule_add(context, 0x7FFF0000, number, 0) != 0:  # SCMP_ACT_ALLOW
        sys.exit(f"seccomp: cannot allow {name}")
if lib.seccomp_load(context) != 0:  # also sets no_new_privs, as NoNewPrivileges= does
    sys.exit("seccomp: the filter did not load")
try:
    os.sched_setaffinity(0, os.sched_getaffinity(0))  # @resources: refused from now on
except PermissionError:
    print("seccomp filter loaded", flush=True)
os.execv(sys.executable, [sys.executable, *sys.argv[3:]])  # the filter stays across exec
"""


def libseccomp() -> str:
    found = ctypes.util.find_library("seccomp")
    if found is None:
        pytest.skip("libseccomp is not installed (systemd itself depends on it)")
    return found


@pytest.fixture
def sandboxed_daemon(
    tmp_path: Path, pose_model: PoseBundle, data_dir: Path, task_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """``python -m device run`` under the unit's system call filter: (process, HTTPS port, log)."""
    key_pem, cert_pem = make_self_signed(DEVICE, ["127.0.0.1"])
    (tmp_path / "tls.key").write_bytes(key_pem)
    (tmp_path / "tls.crt").write_bytes(cert_pem)
    port = free_port()
    with Mosquitto() as broker:
        config = {
            "device": {"id": DEVICE, "state_dir": str(tmp_path / "state")},
            "source": {"kind": "file", "paths": [str(data_dir / "videos" / "dance.mp4")], "loop": True},
            "pose": {"model": str(task_path)},
            "model": {"bundle": str(pose_model.bundle), "trusted_keys": [str(pose_model.public_key)]},
            "mqtt": {"port": broker.port},
            "http": {"port": port, "tls_cert": "tls.crt", "tls_key": "tls.key"},
        }
        path = tmp_path / "device.toml"
        path.write_text(toml_document(list(config.items())))
        log = tmp_path / "daemon.log"
        command = [sys.executable, "-c", SECCOMP_LAUNCHER, libseccomp(), ",".join(allowed_syscalls())]
        command += ["-m", "device", "run", "--config", str(path)]
        with log.open("wb") as output:
            process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
        try:
            with Subscriber(broker.port, f"movement/{DEVICE}/classification") as results:
                results.wait_for(f"movement/{DEVICE}/classification", 30, timeout=120)
            yield process, port, log
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def https_status(port: int) -> dict:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # only the sandbox is tested here
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        connection.request("GET", "/api/status")
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def size_bytes(text: str) -> int:
    return int(text[:-1]) * 1024 ** "KMG".index(text[-1]) * 1024


def test_the_daemon_classifies_publishes_and_stops_inside_the_units_system_call_filter(
    sandboxed_daemon: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    process, port, log = sandboxed_daemon
    status = eventually(lambda: https_status(port), 30, "HTTPS /api/status")
    # 30 classifications reached mosquitto (the fixture waited for them), each through the outbox
    assert status["counters"]["classifications"] >= 30 and status["mqtt"]["connected"]

    measured = proc_status(process.pid)
    peak_bytes = int(measured["VmHWM"].split()[0]) * 1024
    threads = int(measured["Threads"])
    unit = service()
    print(f"in the filter: peak RSS {peak_bytes / 2**20:.0f} MiB, {threads} threads")
    assert peak_bytes < size_bytes(unit["MemoryMax"][-1]) / 2, "MemoryMax= leaves at least twice the need"
    assert threads < int(unit["TasksMax"][-1]) / 2, "TasksMax= leaves at least twice the need"

    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0, log.read_text()[-3000:]
    assert log.read_text().startswith("seccomp filter loaded"), "the daemon really ran in the filter"
