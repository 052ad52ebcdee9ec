"""The kiosk daemon as the benchmarks run it: its configuration, in-process or as a real child process.

The load and memory numbers come from ``python -m device run --config FILE`` in a process of its
own, exactly as systemd starts it on a kiosk: a load tool or the benchmark's own Python threads
then cannot share the daemon's interpreter (and its GIL), and the resident memory read from
``/proc/<pid>/status`` is the daemon's alone, not the benchmark's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.samples import BODY25_TABLE
from provisioning.devices import toml_document
from tests.broker import free_port
from trainer.recipes import PoseBundle, pose_bundle

DEVICE_ID = "bench"
REPO = Path(__file__).resolve().parents[1]


def train_model(work: Path) -> PoseBundle:
    """The per-frame 20-pose classifier of the BODY-25 table, signed, as the demo and tests build it.

    The trainer's report (the whole manifest, among others) goes to ``work/trainer.log``, not
    between the benchmark's lines; its errors still reach stderr.
    """
    work.mkdir(parents=True, exist_ok=True)
    with (work / "trainer.log").open("w") as log, contextlib.redirect_stdout(log):
        return pose_bundle(BODY25_TABLE, work / "model")


def daemon_config(
    model: PoseBundle,
    work: Path,
    videos: list[Path],
    *,
    loop: bool,
    pace: str,
    mqtt_port: int | None = None,
    http_port: int = 0,
) -> dict[str, Any]:
    """A device configuration on video files; MQTT only when a broker port is given."""
    mqtt: dict[str, Any] = {"enabled": False}
    if mqtt_port is not None:
        mqtt = {"port": mqtt_port, "stats_interval_s": 10}
    return {
        "device": {"id": DEVICE_ID, "state_dir": str(work / "state")},
        "source": {"kind": "file", "paths": [str(v) for v in videos], "loop": loop, "pace": pace},
        "model": {"bundle": str(model.bundle), "trusted_keys": [str(model.public_key)]},
        "mqtt": mqtt,
        "http": {"port": http_port},
    }


def write_config(config: dict[str, Any], path: Path) -> Path:
    """``config`` as the device TOML file ``device run --config`` reads."""
    path.write_text(toml_document(list(config.items()), "written by the benchmarks"))
    return path


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process (this one by default), from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    """The processes ``pid`` started that still run (the daemon's web face runs in one), from ``/proc``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process that ended while we looked
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, ...
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return sorted(found)


class DaemonProcess:
    """``python -m device run`` in a child process; a context manager that always stops it.

    Entering returns once ``/healthz`` answers 200 (a model runs on flowing frames); leaving
    sends SIGTERM (the daemon's clean shutdown) and kills it if it has not exited in time.
    ``env`` adds to the environment (``MALLOC_ARENA_MAX``, as a unit file's ``Environment=``);
    ``cpus`` restricts the process and every thread it starts to those cores (as ``taskset -c``
    or systemd's ``CPUAffinity=``), from before its first instruction.
    """

    def __init__(
        self,
        config: dict[str, Any],
        work: Path,
        *,
        ready_timeout_s: float = 120.0,
        env: Mapping[str, str] | None = None,
        cpus: set[int] | None = None,
    ) -> None:
        self.port = free_port()
        self.config = {**config, "http": {**config.get("http", {}), "port": self.port}}
        self.work = work
        self.ready_timeout_s = ready_timeout_s
        self.env = {**os.environ, **(env or {})}
        self.cpus = cpus
        self.log_path = work / "daemon.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the daemon is not running")
        return self._process.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> DaemonProcess:
        config_path = write_config(self.config, self.work / "device.toml")
        cpus = self.cpus
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "device", "run", "--config", str(config_path)],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
            )
        deadline = time.monotonic() + self.ready_timeout_s
        while self._get("/healthz") != 200:
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the daemon did not become healthy:\n{self.log_tail()}")
            time.sleep(0.2)
        return self

    def _get(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(self.url(path), timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    def status(self) -> dict[str, Any]:
        """``/api/status`` (the daemon's own counters); a generous timeout, as it may run under load."""
        with urllib.request.urlopen(self.url("/api/status"), timeout=30) as response:
            return json.load(response)

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def children_rss_mb(self) -> float:
        """The resident memory of the processes the daemon started (0 when it started none)."""
        return sum(rss_mb(child) for child in children(self.pid))

    def stop(self, timeout_s: float = 30.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
