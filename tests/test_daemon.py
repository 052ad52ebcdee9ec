"""The daemon end to end: a real video, real MediaPipe, a real bundle, a real broker, real HTTP.

The in-process tests build the daemon with :func:`device.daemon.build` from a validated config;
the lifecycle tests run ``python -m device run`` as a child process and signal it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto, Subscriber, free_port
from conftest import REPO, PoseBundle, eventually
from model_bundles import resigned

from device.config import Config, parse_config
from device.daemon import Daemon
from device.model.bundle import MANIFEST, SIGNATURE, load_private_key, manifest_bytes_of, sign_manifest

DEVICE = "kiosk-test"
TOPIC = f"movement/{DEVICE}"


def device_config(
    tmp_path: Path,
    model: PoseBundle,
    video: Path,
    mqtt_port: int,
    *,
    pace: str = "fast",
    loop: bool = False,
    trusted: Path | None = None,
    keepalive: int = 30,
) -> dict[str, Any]:
    return {
        "device": {"id": DEVICE, "state_dir": str(tmp_path / "state")},
        "source": {"kind": "file", "paths": [str(video)], "pace": pace, "loop": loop},
        "model": {"bundle": str(model.bundle), "trusted_keys": [str(trusted or model.public_key)]},
        "mqtt": {"port": mqtt_port, "stats_interval_s": 1, "keepalive_s": keepalive},
        "http": {"port": 0},
    }


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_classifications_of_a_real_video_reach_a_subscriber_in_order(
    tmp_path: Path, pose_model: PoseBundle, data_dir: Path, run_daemon: Callable[[Config], Daemon]
) -> None:
    with Mosquitto() as broker, Subscriber(broker.port, f"{TOPIC}/#") as sub:
        config = parse_config(
            device_config(tmp_path, pose_model, data_dir / "videos" / "squats.mp4", broker.port)
        )
        daemon = run_daemon(config)
        assert eventually(daemon.capture.ended.is_set, 60, "the video to end")
        # squats.mp4: 65 frames, one person in each; a per-frame model classifies every one
        received = sub.wait_for(f"{TOPIC}/classification", 65, timeout=30)
        payloads = [m.json() for m in received]
        assert [p["seq"] for p in payloads] == list(range(1, 66))
        assert [p["window"]["last_frame"] for p in payloads] == list(range(1, 66))
        first = payloads[0]
        assert set(first) == {
            "seq",
            "epoch",
            "ts",
            "label",
            "confidence",
            "probabilities",
            "window",
            "model",
            "latency_ms",
            "person",
        }
        assert first["model"] == {"id": "poses", "version": "1.0.0"}
        assert set(first["window"]) == {"first_frame", "last_frame", "start_ts_ms", "end_ts_ms"}
        assert abs(sum(first["probabilities"].values()) - 1) < 1e-3
        labels = [p["label"] for p in payloads]
        # three squats with standing in between: the model must see both, squats most often
        assert max(set(labels), key=labels.count) == "Squat" and labels.count("Stand") >= 5
        assert all(0 < p["latency_ms"] < 5000 for p in payloads)

        eventually(lambda: daemon.outbox.depth == 0, 10, "the outbox to drain")
        retained = [f"{TOPIC}/#", f"homeassistant/device/{DEVICE}/config"]
        with Subscriber(broker.port, retained) as late:  # retained topics for a late subscriber
            assert late.wait_for(f"{TOPIC}/availability")[0].payload == b"online"
            state = late.wait_for(f"{TOPIC}/state")[0].json()
            assert state["person_present"] is True and state["seq"] == 65
            model_state = late.wait_for(f"{TOPIC}/model/state")[0].json()
            assert model_state["status"] == "ok" and model_state["version"] == "1.0.0"
            assert late.wait_for(f"homeassistant/device/{DEVICE}/config")
        stats = sub.wait_for(f"{TOPIC}/stats", timeout=10)[0].json()
        assert {"fps", "latency_ms", "outbox", "uptime_s"} <= set(stats)

        status, body = http_get(daemon.http_port, "/api/status")
        snapshot = json.loads(body)
        assert status == 200
        assert snapshot["counters"]["classifications"] == 65
        assert snapshot["model"]["id"] == "poses" and snapshot["mqtt"]["connected"] is True
        assert snapshot["camera"]["state"] == "ended"
        # the video ended: frames stopped, so health fails once the last frame is 5 s old
        eventually(lambda: http_get(daemon.http_port, "/healthz")[0] == 503, 15, "healthz 503")

        daemon.stop()
        assert sub.wait_until(f"{TOPIC}/availability", lambda m: m.payload == b"stopped", timeout=10)


def test_broker_down_at_start_then_every_classification_arrives_in_order(
    tmp_path: Path, pose_model: PoseBundle, data_dir: Path, run_daemon: Callable[[Config], Daemon]
) -> None:
    port = free_port()
    with (
        Mosquitto(port, persistence=True) as broker,
        Subscriber(port, f"{TOPIC}/classification", persistent=True, client_id="dashboard") as sub,
    ):
        broker.stop()
        config = parse_config(device_config(tmp_path, pose_model, data_dir / "videos" / "squats.mp4", port))
        daemon = run_daemon(config)
        assert eventually(daemon.capture.ended.is_set, 60, "the video to end")
        eventually(lambda: daemon.outbox.depth == 65, 10, "all 65 results waiting in the outbox")
        snapshot = daemon.status.snapshot()
        assert snapshot["mqtt"]["connected"] is False and snapshot["counters"]["classifications"] == 65

        broker.start()
        received = sub.wait_for(f"{TOPIC}/classification", 65, timeout=60)
        seqs = sorted({m.json()["seq"] for m in received})
        assert seqs == list(range(1, 66))  # none lost
        first_seen = list(dict.fromkeys(m.json()["seq"] for m in received))
        assert first_seen == seqs  # and in order
        eventually(lambda: daemon.outbox.depth == 0, 15, "the outbox to drain")


def test_page_health_and_metrics_while_frames_flow(
    tmp_path: Path, pose_model: PoseBundle, data_dir: Path, run_daemon: Callable[[Config], Daemon]
) -> None:
    config = device_config(
        tmp_path, pose_model, data_dir / "videos" / "dance.mp4", 1, pace="realtime", loop=True
    )
    config["mqtt"] = {"enabled": False}
    daemon = run_daemon(parse_config(config))
    eventually(lambda: http_get(daemon.http_port, "/healthz")[0] == 200, 60, "healthz 200")
    status, page = http_get(daemon.http_port, "/")
    assert status == 200 and b"poses" in page
    status, jpeg = http_get(daemon.http_port, "/frame.jpg")
    assert status == 200 and jpeg[:2] == b"\xff\xd8"
    status, metrics = http_get(daemon.http_port, "/metrics")
    assert status == 200 and b"frames" in metrics


def test_display_and_device_names_reach_the_page_state_and_home_assistant(
    tmp_path: Path, pose_model: PoseBundle, data_dir: Path, run_daemon: Callable[[Config], Daemon]
) -> None:
    named = tmp_path / "named.zip"
    names = {"Squat": "Deep squat", "Stand": "Standing"}
    named.write_bytes(resigned(pose_model.bundle.read_bytes(), pose_model.signing_key, label_names=names))
    with Mosquitto() as broker, Subscriber(broker.port, [f"{TOPIC}/#", "homeassistant/#"]) as sub:
        config = device_config(tmp_path, pose_model, data_dir / "videos" / "squats.mp4", broker.port)
        config["model"]["bundle"] = str(named)
        config["device"]["name"] = "Hall kiosk"
        daemon = run_daemon(parse_config(config))
        assert eventually(daemon.capture.ended.is_set, 60, "the video to end")
        sub.wait_for(f"{TOPIC}/classification", 65, timeout=30)
        state = sub.wait_until(f"{TOPIC}/state", lambda m: m.json().get("seq") == 65, timeout=30).json()
        assert state["label_name"] == names.get(state["label"], state["label"])
        shown = {
            m.json()["label"]: m.json()["label_name"]
            for m in sub.messages(f"{TOPIC}/state")
            if "label" in m.json()
        }
        assert shown.get("Squat") == "Deep squat"  # squats.mp4 is mostly squats
        assert all(name == names.get(label, label) for label, name in shown.items())
        discovery = sub.wait_for(f"homeassistant/device/{DEVICE}/config")[0].json()
        assert discovery["dev"]["name"] == "Hall kiosk"  # [device] name, as on the page
        sensor = discovery["cmps"][f"movement_edge_{DEVICE}_label"]
        assert "label_name" in sensor["value_template"]
        status, body = http_get(daemon.http_port, "/api/status")
        assert status == 200 and json.loads(body)["model"]["label_names"] == names


def test_a_bundle_signed_by_an_untrusted_key_leaves_the_daemon_running_without_a_model(
    tmp_path: Path, pose_model: PoseBundle, data_dir: Path, run_daemon: Callable[[Config], Daemon]
) -> None:
    from trainer.__main__ import main as trainer

    assert trainer(["keygen", "--out", str(tmp_path / "other")]) == 0
    config = device_config(
        tmp_path,
        pose_model,
        data_dir / "videos" / "dance.mp4",
        1,
        pace="realtime",
        loop=True,
        trusted=tmp_path / "other" / "signing.pub",
    )
    config["mqtt"] = {"enabled": False}
    daemon = run_daemon(parse_config(config))
    eventually(lambda: daemon.status.snapshot()["counters"]["frames_processed"] > 5, 60, "frames processed")
    snapshot = daemon.status.snapshot()
    assert snapshot["model"] is None and snapshot["counters"]["classifications"] == 0
    status, body = http_get(daemon.http_port, "/healthz")
    assert status == 503 and b"model" in body


def _child(config: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "device", "run", "--config", str(config)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )


def _write_toml(path: Path, config: dict[str, Any]) -> Path:
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sigterm_stops_cleanly_and_sigkill_leaves_the_last_will(
    tmp_path: Path, pose_model: PoseBundle, data_dir: Path
) -> None:
    with Mosquitto() as broker, Subscriber(broker.port, f"{TOPIC}/availability") as sub:
        video = data_dir / "videos" / "dance.mp4"
        config = device_config(
            tmp_path, pose_model, video, broker.port, pace="realtime", loop=True, keepalive=5
        )
        path = _write_toml(tmp_path / "device.toml", config)

        child = _child(path)
        try:
            sub.wait_until(f"{TOPIC}/availability", lambda m: m.payload == b"online", timeout=60)
            child.send_signal(signal.SIGTERM)
            output, _ = child.communicate(timeout=30)
        finally:
            child.kill()
        assert child.returncode == 0
        sub.wait_until(f"{TOPIC}/availability", lambda m: m.payload == b"stopped", timeout=10)
        logged = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
        assert any(entry["msg"] == "daemon stopped" for entry in logged)  # structured logs on stdout

    with Mosquitto(broker.port) as broker, Subscriber(broker.port, f"{TOPIC}/availability") as sub:
        child = _child(path)
        try:
            sub.wait_until(f"{TOPIC}/availability", lambda m: m.payload == b"online", timeout=60)
            child.kill()  # SIGKILL: no goodbye, the broker sends the will after the keepalive
            child.wait(10)
        finally:
            child.kill()
        sub.wait_until(f"{TOPIC}/availability", lambda m: m.payload == b"offline", timeout=20)


class Notifications:
    """A real ``NOTIFY_SOCKET``: a unix datagram socket the test binds, and what arrived on it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.2)

    def read(self) -> list[str]:
        """Take in every notification waiting now; returns all received so far."""
        while True:
            try:
                self.lines += self._socket.recv(4096).decode().splitlines()
            except TimeoutError:
                return self.lines

    def count(self, line: str) -> int:
        return self.read().count(line)

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def notifications(tmp_path: Path) -> Iterator[Notifications]:
    received = Notifications(tmp_path / "notify.sock")
    yield received
    received.close()


def test_systemd_notify_ready_and_watchdog(
    tmp_path: Path, pose_model: PoseBundle, data_dir: Path, notifications: Notifications
) -> None:
    config = device_config(
        tmp_path, pose_model, data_dir / "videos" / "dance.mp4", 1, pace="realtime", loop=True
    )
    config["mqtt"] = {"enabled": False}
    child = _child(
        _write_toml(tmp_path / "device.toml", config),
        NOTIFY_SOCKET=str(notifications.path),
        WATCHDOG_USEC="2000000",
    )
    try:
        eventually(lambda: notifications.count("WATCHDOG=1") >= 1, 60, "the watchdog fed")
        child.send_signal(signal.SIGTERM)
        child.wait(30)
    finally:
        child.kill()
    assert notifications.count("READY=1") == 1
    assert any(m.startswith("STATUS=") and "fps" in m for m in notifications.lines)


def test_a_bundle_whose_features_the_device_cannot_compute_is_a_clear_state_not_a_crash(
    tmp_path: Path, pose_model: PoseBundle, data_dir: Path, run_daemon: Callable[[Config], Daemon]
) -> None:
    from model_bundles import MODEL, members, rezip

    files = members(pose_model.bundle.read_bytes())
    manifest = json.loads(files[MANIFEST])
    manifest["feature_spec"]["presets"] = ["gait"]  # from a newer trainer: signed, but not computable here
    files[MANIFEST] = manifest_bytes_of(manifest)
    files[SIGNATURE] = sign_manifest(files[MANIFEST], load_private_key(pose_model.signing_key))
    unknown = tmp_path / "gait.zip"
    unknown.write_bytes(rezip({name: files[name] for name in (MANIFEST, SIGNATURE, MODEL)}))
    with Mosquitto() as broker, Subscriber(broker.port, f"{TOPIC}/model/state") as sub:
        config = device_config(
            tmp_path, pose_model, data_dir / "videos" / "dance.mp4", broker.port, pace="realtime", loop=True
        )
        config["model"]["bundle"] = str(unknown)
        daemon = run_daemon(parse_config(config))
        rejected = sub.wait_until(
            f"{TOPIC}/model/state", lambda m: m.json()["status"] == "rejected", 30
        ).json()
        assert "gait" in rejected["detail"]
        eventually(
            lambda: daemon.status.snapshot()["counters"]["frames_processed"] > 10, 60, "frames flowing"
        )
        status, body = http_get(daemon.http_port, "/healthz")
        assert status == 503 and b"model" in body
        assert daemon.status.snapshot()["counters"]["classifications"] == 0
