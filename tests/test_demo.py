"""``make demo`` as a new user runs it: it starts, classifies live on the page and over MQTT, the
README's ``check-config`` accepts its config, and Ctrl-C (SIGTERM) stops everything cleanly.

``make demo`` is ``make system`` (the Debian packages, which the suite has already) and then
``python scripts/demo.py``, which is what runs here, with ``DEMO_STATE`` and ``DEMO_HTTP_PORT`` so
the test touches neither the checkout's ``.demo/`` nor a port something else may hold.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from broker import Subscriber, free_port
from conftest import REPO, eventually

from device.__main__ import main as device

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Output:
    """The demo's stdout and stderr, read on a thread so the test never blocks on a pipe."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.append(line.rstrip("\n"))

    def find(self, pattern: str) -> re.Match[str] | None:
        return next((m for line in list(self.lines) if (m := re.search(pattern, line))), None)


def get(url: str) -> tuple[int, bytes]:
    try:
        with _HTTP.open(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def test_the_demo_starts_classifies_live_and_stops_on_sigterm(tmp_path: Path) -> None:
    http_port = free_port()
    env = {**os.environ, "DEMO_STATE": str(tmp_path / "demo"), "DEMO_HTTP_PORT": str(http_port)}
    process = subprocess.Popen(
        [sys.executable, "scripts/demo.py"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(process)
    try:
        started = eventually(lambda: output.find(r"mosquitto_sub -h 127\.0\.0\.1 -p (\d+)"), 300, "the demo")
        page = f"http://127.0.0.1:{http_port}"
        assert output.find(rf"status page\s+{re.escape(page)}/")
        mqtt_port = int(started.group(1))
        with Subscriber(mqtt_port, "movement/demo-kiosk/classification") as sub:
            sub.wait_for("movement/demo-kiosk/classification", 3, timeout=120)
        eventually(lambda: get(page + "/healthz")[0] == 200, 60, "a healthy demo kiosk")
        status = json.loads(get(page + "/api/status")[1])
        assert status["model"]["id"] == "fitness" and status["camera"]["state"] == "running"
        code, html = get(page + "/")
        assert code == 200 and b"Demo kiosk" in html
        # the README's check, on the config the demo wrote
        assert device(["check-config", str(tmp_path / "demo" / "device.toml")]) == 0
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert returncode == 0, "\n".join(output.lines[-30:])
    eventually(lambda: "stopping…" in output.lines, 10, "the demo to say it stops")
    assert get(page + "/healthz")[0] == 0  # the daemon is gone, and with it the page
    with pytest.raises(OSError):  # and the broker
        socket.create_connection(("127.0.0.1", mqtt_port), timeout=2).close()
    log = (tmp_path / "demo" / "daemon.log").read_text()
    assert "Traceback" not in log
