"""Models pulled over MQTT, end to end: real daemons on loopback, a real mosquitto, no HTTP push.

Two kiosks (real MediaPipe on a looping real video, the fixture's 1.0.0 skops model) follow the
fleet group ``lobby``. The workstation only publishes to the broker, through ``python -m
provisioning release`` / ``rollout status`` / ``promote``; no request ever goes to a kiosk (kiosk-b
does not even listen). What the kiosks do is read from what they publish (every classification,
with its model version, and the retained ``model/state``), from their status board (what
``/api/status`` serves) and from kiosk-a's ``/api/status``.

The story, in order, on one broker: a release reaches both kiosks and they classify with it; a
kiosk that was off during a release takes it when it starts; a tampered message and a tampered
bundle are refused while the model keeps running; a model that fails its trial (its threshold
turns every result into ``unknown``) is rolled back on both, and a restarted kiosk does not pull
it again.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import ssl
import threading
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from broker import Mosquitto, Subscriber
from conftest import PoseBundle, eventually
from model_bundles import members, resigned, versions_of
from paho.mqtt.enums import CallbackAPIVersion
from tls_files import TlsFiles

from device.config import ConfigError, parse_config
from device.daemon import Daemon, build
from device.fleet_pull import FetchFailed, fetch_bundle
from device.model.bundle import MANIFEST, load_private_key
from device.model.desired import encode_inline, read_desired, sign_desired
from provisioning.__main__ import main as provisioning

GROUP = "lobby"
DESIRED = f"movement/fleet/{GROUP}/model/desired"
VIDEO_FRAMES = 102  # dance.mp4, looped at pace "fast": no frame is ever dropped
TRIAL_FRAMES = VIDEO_FRAMES
"""A trial sees every frame of the looping video exactly once, wherever it starts, so the share of
results with a label it measures is the model's own on this video, whatever the machine's speed."""
WAIT = 60.0  # generous: only guards against a hang


@pytest.fixture(scope="module")
def bundles(pose_model: PoseBundle, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """2.0.0 and 2.1.0 (good) and 3.0.0 whose threshold of 1.0 makes every result ``unknown`` (its samples
    still reproduce, so it passes every check of the store and fails only its trial)."""
    work = tmp_path_factory.mktemp("pull-bundles")
    made = versions_of(pose_model, work, "2.0.0", "2.1.0")
    decision = json.loads(members(made["1.0.0"])[MANIFEST])["decision"]
    made["3.0.0"] = resigned(
        made["1.0.0"], pose_model.signing_key, version="3.0.0", decision={**decision, "threshold": 1.0}
    )
    paths = {}
    for version, data in made.items():
        paths[version] = work / f"poses-{version}.zip"
        paths[version].write_bytes(data)
    return paths


def kiosk_config(
    name: str, folder: Path, model: PoseBundle, video: Path, port: int, http: bool
) -> dict[str, Any]:
    return {
        "device": {"id": name, "state_dir": str(folder / name)},
        "source": {"kind": "file", "paths": [str(video)], "loop": True, "pace": "fast"},
        "model": {"bundle": str(model.bundle), "trusted_keys": [str(model.public_key)]},
        "mqtt": {"port": port, "stats_interval_s": 60},
        "http": {"enabled": http, "port": 0},
        "fleet": {"groups": [GROUP], "trial_frames": TRIAL_FRAMES, "trial_known_ratio": 0.25},
    }


class Kiosks:
    """The two daemons; a kiosk can be stopped and started again on the same state folder."""

    def __init__(self, folder: Path, model: PoseBundle, video: Path, port: int) -> None:
        self.configs = {
            name: parse_config(kiosk_config(name, folder, model, video, port, http=name == "kiosk-a"), env={})
            for name in ("kiosk-a", "kiosk-b")
        }
        self.running: dict[str, Daemon] = {}

    def start(self, name: str) -> Daemon:
        daemon = build(self.configs[name])
        self.running[name] = daemon
        daemon.start()
        return daemon

    def stop(self, name: str) -> None:
        self.running.pop(name).stop()

    def fleet(self, name: str) -> dict[str, Any]:
        return self.running[name].status.snapshot()["fleet"]

    def version(self, name: str) -> str | None:
        model = self.running[name].status.snapshot()["model"]
        return model and model["version"]


@pytest.fixture(scope="module")
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as running:
        yield running


@pytest.fixture(scope="module")
def kiosks(
    broker: Mosquitto, pose_model: PoseBundle, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kiosks]:
    fleet = Kiosks(
        tmp_path_factory.mktemp("pull-fleet"), pose_model, data_dir / "videos" / "dance.mp4", broker.port
    )
    try:
        for name in fleet.configs:
            fleet.start(name)
        yield fleet
    finally:
        for name in list(fleet.running):
            fleet.stop(name)


def settled(kiosks: Kiosks, name: str, expected: str) -> dict[str, Any]:
    """Wait until the kiosk's pull is done (neither fetching nor on trial); it must be ``expected``."""
    fleet = eventually(
        lambda: (f := kiosks.fleet(name)) and f["state"] not in ("idle", "fetching", "trial") and f,
        WAIT,
        f"{name}: the pull settled",
    )
    assert fleet["state"] == expected, fleet
    return fleet


def api_status(daemon: Daemon) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}/api/status", timeout=5) as response:
        return json.loads(response.read())


def by_seq(results: Subscriber, name: str) -> list[dict[str, Any]]:
    """Every classification ``name`` published, once each (QoS 1 may repeat), in order."""
    seen = {(p["epoch"], p["seq"]): p for p in results.payloads(f"movement/{name}/classification")}
    return [seen[key] for key in sorted(seen)]


def count_of(results: Subscriber, name: str, version: str) -> int:
    return sum(p["model"]["version"] == version for p in by_seq(results, name))


def release(broker: Mosquitto, bundle: Path, key: Path, *extra: str) -> int:
    return provisioning(
        [
            "release",
            str(bundle),
            "--group",
            GROUP,
            "--key",
            str(key),
            "--broker",
            f"127.0.0.1:{broker.port}",
            *extra,
        ]
    )


def lobby(broker: Mosquitto, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The group's row of ``rollout status --json``."""
    capsys.readouterr()
    status = provisioning(
        ["rollout", "status", "--json", "--broker", f"127.0.0.1:{broker.port}", "--wait", "1"]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    return next(g for g in json.loads(out)["groups"] if g["group"] == GROUP)


def rollout_shows(broker: Mosquitto, capsys: pytest.CaptureFixture[str], **expected: Any) -> dict[str, Any]:
    """Wait until ``rollout status`` shows ``expected`` for the group (the kiosks' retained
    ``model/state`` follows their status board a moment later)."""

    def shown() -> dict[str, Any] | None:
        row = lobby(broker, capsys)
        return row if all(row.get(k) == v for k, v in expected.items()) else None

    return eventually(shown, WAIT, f"rollout status showing {expected}")


def publish_raw(broker: Mosquitto, payload: bytes, topic: str = DESIRED) -> None:
    """A message on the group's topic from someone who can reach the broker but holds no key."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="intruder")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: the tests' output shows what the commands print."""


class FileServer:
    """A static file server on loopback (as S3 or nginx would serve bundles)."""

    def __init__(self, folder: Path, tls: ssl.SSLContext | None = None) -> None:
        handler = partial(_QuietFiles, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="file-server", daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_release_reaches_both_kiosks_and_they_classify_with_it(
    kiosks: Kiosks,
    broker: Mosquitto,
    bundles: dict[str, Path],
    pose_model: PoseBundle,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, daemon in kiosks.running.items():  # 1.0.0's record, the trials' yardstick: two whole loops
        eventually(
            lambda d=daemon: d.status.snapshot()["counters"]["frames_processed"] >= 2 * VIDEO_FRAMES,
            WAIT,
            f"{name} classifying with 1.0.0",
        )
        assert kiosks.version(name) == "1.0.0" and kiosks.fleet(name)["state"] == "idle"
    with Subscriber(broker.port, "movement/+/classification") as results:
        assert release(broker, bundles["2.0.0"], pose_model.signing_key) == 0
        assert "release 1 of group lobby: poses 2.0.0 (inline" in capsys.readouterr().out
        for name in kiosks.running:
            settled(kiosks, name, "ok")
            eventually(lambda n=name: count_of(results, n, "2.0.0") >= 5, WAIT, f"{name}: results of 2.0.0")
    for name in kiosks.running:
        fleet = kiosks.fleet(name)
        assert kiosks.version(name) == "2.0.0"
        assert fleet["desired"]["version"] == "2.0.0" and fleet["desired"]["release"] == 1, fleet
        assert fleet["detail"].startswith("poses 2.0.0 passed its trial"), fleet
    eventually(
        lambda: api_status(kiosks.running["kiosk-a"])["fleet"]["state"] == "ok", WAIT, "/api/status: ok"
    )
    rollout_shows(broker, capsys, running={"poses 2.0.0": 2}, states={"ok": 2}, online=2, kiosks=2)


def test_a_kiosk_that_was_off_takes_the_release_when_it_starts(
    kiosks: Kiosks, broker: Mosquitto, bundles: dict[str, Path], pose_model: PoseBundle, tmp_path: Path
) -> None:
    """kiosk-b is off while 2.1.0 is released from a file server (the URL form); it comes back on
    its old state folder, receives the retained message and converges."""
    kiosks.stop("kiosk-b")
    served = tmp_path / "served"
    served.mkdir()
    (served / "poses-2.1.0.zip").write_bytes(bundles["2.1.0"].read_bytes())
    with FileServer(served) as files:
        assert release(broker, bundles["2.1.0"], pose_model.signing_key, "--url-base", files.url) == 0
        eventually(
            lambda: kiosks.fleet("kiosk-a")["state"] == "ok" and kiosks.version("kiosk-a") == "2.1.0",
            WAIT,
            "kiosk-a on 2.1.0",
        )
        kiosks.start("kiosk-b")
        assert kiosks.version("kiosk-b") == "2.0.0"  # what it ran when it went off
        eventually(lambda: kiosks.fleet("kiosk-b")["state"] == "ok", WAIT, "kiosk-b converged")
    assert kiosks.version("kiosk-b") == "2.1.0"
    assert kiosks.fleet("kiosk-b")["desired"]["release"] == 2


def test_a_tampered_message_or_bundle_is_refused_and_the_model_keeps_running(
    kiosks: Kiosks, broker: Mosquitto, bundles: dict[str, Path], pose_model: PoseBundle
) -> None:
    key = load_private_key(pose_model.signing_key)
    good = bundles["3.0.0"].read_bytes()
    body = {
        "group": GROUP,
        "release": 3,
        "issued_at": "2026-12-02T12:00:00+00:00",
        "model_id": "poses",
        "version": "3.0.0",
        "sha256": hashlib.sha256(good).hexdigest(),
        "size": len(good),
        "bundle": encode_inline(good),
        "url": None,
        "canary_percent": 100,
    }
    message = json.loads(sign_desired(body, key))
    message["body"] = message["body"].replace('"release": 3', '"release": 4')  # edited after signing
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x01
    tampered_bundle = sign_desired({**body, "release": 5, "bundle": encode_inline(bytes(flipped))}, key)
    with Subscriber(broker.port, "movement/+/classification") as results:
        for payload, refusal in (
            (
                json.dumps(message).encode(),
                "signature: the desired model message's signature does not verify",
            ),
            (tampered_bundle, "hash: the bundle's sha256 is not the one the message names"),
        ):
            publish_raw(broker, payload)
            for name in kiosks.running:
                eventually(
                    lambda n=name, r=refusal: (kiosks.fleet(n)["last_error"] or "").startswith(r),
                    WAIT,
                    f"{name}: {refusal}",
                )
                assert kiosks.fleet(name)["state"] == "refused" and kiosks.version(name) == "2.1.0"
        for name in kiosks.running:  # and it keeps classifying with 2.1.0
            eventually(
                lambda n=name: count_of(results, n, "2.1.0") >= 5, WAIT, f"{name}: 2.1.0 still running"
            )
            assert count_of(results, name, "3.0.0") == 0


def test_a_model_that_fails_its_trial_is_rolled_back_and_not_pulled_again(
    kiosks: Kiosks,
    broker: Mosquitto,
    bundles: dict[str, Path],
    pose_model: PoseBundle,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with Subscriber(broker.port, ["movement/+/classification", "movement/+/model/state"]) as seen:
        assert release(broker, bundles["3.0.0"], pose_model.signing_key) == 0
        for name in kiosks.running:
            eventually(lambda n=name: kiosks.fleet(n)["state"] == "rolled_back", WAIT, f"{name} rolled back")
            assert kiosks.version(name) == "2.1.0"
            state = seen.wait_until(
                f"movement/{name}/model/state",
                lambda m: m.json().get("fleet", {}).get("state") == "rolled_back",
                WAIT,
            ).json()
            assert state["version"] == "2.1.0", state
            assert "poses 3.0.0 failed its trial" in state["fleet"]["detail"], state
            assert "had a label (not unknown)" in state["fleet"]["last_error"], state
            assert count_of(seen, name, "3.0.0") > 0  # it did run, and was judged on its results
            eventually(lambda n=name: count_of(seen, n, "2.1.0") > 0, WAIT, f"{name}: 2.1.0 again")
    rollout_shows(
        broker, capsys, running={"poses 2.1.0": 2}, states={"rolled_back": 2}, desired="poses 3.0.0"
    )
    assert (
        provisioning(["rollout", "status", "--kiosks", "--broker", f"127.0.0.1:{broker.port}", "--wait", "1"])
        == 0
    )
    groups, kiosk_rows = capsys.readouterr().out.split("\n\n")
    header = ["group", "release", "desired", "canary", "kiosks", "online", "running", "states"]
    assert groups.splitlines()[0].split() == header, groups
    assert groups.splitlines()[1].split()[:3] == [GROUP, "6", "poses"], groups  # 1, 2, two tampered, 6
    for line in kiosk_rows.splitlines()[1:]:
        assert line.split()[1:6] == ["online", "poses", "2.1.0", "rolled_back", "rolled_back"], kiosk_rows
        assert "poses 3.0.0 failed its trial" in line, kiosk_rows

    # a restart: the retained release names 3.0.0 again, and the kiosk does not take it
    kiosks.stop("kiosk-b")
    daemon = kiosks.start("kiosk-b")
    with Subscriber(broker.port, "movement/kiosk-b/classification") as results:
        eventually(lambda: kiosks.fleet("kiosk-b")["desired"] is not None, WAIT, "kiosk-b: the release again")
        eventually(lambda: count_of(results, "kiosk-b", "2.1.0") >= 20, WAIT, "kiosk-b classifying")
        assert count_of(results, "kiosk-b", "3.0.0") == 0
    fleet = kiosks.fleet("kiosk-b")
    assert fleet["state"] == "rolled_back" and "it is not pulled again" in fleet["detail"], fleet
    assert fleet["failed"] == ["poses 3.0.0"]
    assert [m["version"] for m in daemon.list() if m["status"] == "active"] == ["2.1.0"]


# --------------------------------------------------------------------------- mistakes, one line each


@pytest.mark.parametrize(
    ("fleet", "mqtt", "message"),
    [
        ({"groups": ["a/b"]}, {}, "fleet.groups.0: String should match pattern"),
        ({"groups": ["lobby", "lobby"]}, {}, "fleet.groups: group 'lobby' is listed twice"),
        ({"groups": ["lobby"]}, {"enabled": False}, "fleet.groups needs mqtt.enabled"),
        ({"trial_known_ratio": 1.5}, {}, "fleet.trial_known_ratio: Input should be less than or equal to 1"),
        ({"trial_frames": -1}, {}, "fleet.trial_frames: Input should be greater than or equal to 0"),
        ({"max_fetch_mb": 0}, {}, "fleet.max_fetch_mb: Input should be greater than 0"),
        ({"group": ["lobby"]}, {}, "fleet.group: unknown key"),
    ],
)
def test_fleet_config_mistakes_name_the_key(
    fleet: dict[str, Any], mqtt: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"source": {"kind": "file", "paths": ["v.mp4"]}, "fleet": fleet, "mqtt": mqtt}, env={})
    assert message in str(caught.value), caught.value


def test_a_url_that_does_not_serve_the_bundle_is_not_published(
    broker: Mosquitto,
    bundles: dict[str, Path],
    pose_model: PoseBundle,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "poses-2.0.0.zip").write_bytes(bundles["2.1.0"].read_bytes())  # the wrong file under the name
    topic = "movement/fleet/elsewhere/model/desired"
    publish_raw(broker, b"what was there before", topic)
    with FileServer(tmp_path) as files:
        status = provisioning(
            [
                *(
                    "release",
                    str(bundles["2.0.0"]),
                    "--group",
                    "elsewhere",
                    "--key",
                    str(pose_model.signing_key),
                ),
                *("--broker", f"127.0.0.1:{broker.port}", "--url-base", files.url),
            ]
        )
    err = capsys.readouterr().err
    assert status == 1 and "does not serve the bundle: " in err and "nothing published" in err, err
    with Subscriber(broker.port, topic) as retained:
        assert retained.wait_for(topic)[0].payload == b"what was there before"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--url-base", "http://files.example.org/m"],
            "plain http is allowed only to loopback; use https://",
        ),
        (["--url-base", "https://u:p@files.example.org/m"], "must not carry credentials"),
        (["--broker", "no-port"], "--broker no-port: expected HOST:PORT"),
        (["--canary", "0%"], "argument --canary: must be within 1..100 %"),
        (["--canary", "a tenth"], "argument --canary: 'a tenth' is not a whole percentage"),
        (["--key", "missing.key"], "--key missing.key: cannot read"),
        (["--mqtt-config", "missing.toml"], "missing.toml"),
    ],
)
def test_release_mistakes_exit_2_with_one_line(
    argv: list[str], message: str, pose_model: PoseBundle, capsys: pytest.CaptureFixture[str]
) -> None:
    options = {"--key": str(pose_model.signing_key), "--broker": "127.0.0.1:9"}
    for option, value in zip(argv[::2], argv[1::2], strict=True):
        options[option] = value
    args = ["release", str(pose_model.bundle), "--group", GROUP, *(x for kv in options.items() for x in kv)]
    status = provisioning(args)
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and message in err, err


def test_an_unreachable_broker_is_one_line_and_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    status = provisioning(["rollout", "status", "--broker", "127.0.0.1:9", "--wait", "1"])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1 and "broker 127.0.0.1:9: " in err, err


def test_https_urls_are_verified_against_the_configured_ca_and_the_size_is_bounded(
    bundles: dict[str, Path], pose_model: PoseBundle, tmp_path: Path
) -> None:
    """A kiosk fetches over verified TLS only: with ``fleet.ca_file`` naming the server's CA it gets
    the bundle; with the system's CAs, which do not know it, it gets nothing."""
    tls = TlsFiles.make(tmp_path)
    served = tmp_path / "served"
    served.mkdir()
    data = bundles["2.0.0"].read_bytes()
    (served / "poses.zip").write_bytes(data + b"and more than the message says")
    key = load_private_key(pose_model.signing_key)
    with FileServer(served, tls.server()) as files:
        body = {
            "group": GROUP,
            "release": 1,
            "issued_at": "2026-12-02T12:00:00+00:00",
            "model_id": "poses",
            "version": "2.0.0",
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "bundle": None,
            "url": f"{files.url}/poses.zip",
            "canary_percent": 100,
        }
        desired = read_desired(sign_desired(body, key), GROUP, [key.public_key()])
        with pytest.raises(FetchFailed) as unknown_ca:
            fetch_bundle(desired, 1 << 20, 10.0)
        assert unknown_ca.value.retry and "CERTIFICATE_VERIFY_FAILED" in str(unknown_ca.value)
        with pytest.raises(FetchFailed) as too_long:
            fetch_bundle(desired, 1 << 20, 10.0, ca_file=tls.cert)
        assert not too_long.value.retry and str(too_long.value).startswith("size: the server announces")
        (served / "poses.zip").write_bytes(data)
        assert fetch_bundle(desired, 1 << 20, 10.0, ca_file=tls.cert) == data
        with pytest.raises(FetchFailed, match="fleet.max_fetch_mb allows 1000"):
            fetch_bundle(desired, 1000, 10.0, ca_file=tls.cert)
