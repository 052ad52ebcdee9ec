"""Model delivery to a running daemon over its HTTP API, end to end.

A real daemon classifies ``dance.mp4`` (looping at its own pace, 20 fps, a person in every frame)
with real MediaPipe while bundles are posted over real HTTP with the bearer token; a real
mosquitto carries ``classification`` and the retained ``model/state``. The model is per-frame
(one window = one frame), so the published stream shows whether the pipeline ever paused.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto, Subscriber
from conftest import PoseBundle, eventually
from model_bundles import BAD_BUNDLES, BadBundle, bad_bundles, size_limit, versions_of

from device.config import Config, parse_config
from device.daemon import Daemon, build

DEVICE = "kiosk-models"
TOPIC = f"movement/{DEVICE}"
TOKEN = "a-kiosk-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SLACK_S = 0.05  # scheduling jitter allowed on top of the pipeline's ordinary rhythm


@pytest.fixture(scope="module")
def versions(pose_model: PoseBundle, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return versions_of(pose_model, tmp_path_factory.mktemp("versions"), "2.0.0")


def kiosk(state: Path, model: PoseBundle, data_dir: Path, limit: int, mqtt_port: int | None) -> Config:
    """A kiosk whose configuration names version 1.0.0 and whose model store lives in ``state``."""
    return parse_config(
        {
            "device": {"id": DEVICE, "state_dir": str(state)},
            "source": {
                "kind": "file",
                "paths": [str(data_dir / "videos" / "dance.mp4")],
                "pace": "realtime",
                "loop": True,
            },
            "model": {
                "bundle": str(model.bundle),
                "trusted_keys": [str(model.public_key)],
                "max_bundle_mb": limit / 2**20,
            },
            "mqtt": {"enabled": False} if mqtt_port is None else {"port": mqtt_port},
            "http": {"port": 0, "token": TOKEN},
        },
        env={},
    )


def call(
    daemon: Daemon, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """Status and decoded JSON of one request over HTTP; a POST when there is a body."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon.http_port}{path}",
        data=body,
        method="GET" if body is None else "POST",
        headers=headers or {},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def snapshot(daemon: Daemon) -> dict[str, Any]:
    status, body = call(daemon, "/api/status")
    assert status == 200
    return body


def keeps_classifying(daemon: Daemon, version: str, count: int = 10) -> None:
    """``count`` more classifications arrive over the API, the newest all by ``version``."""
    start = snapshot(daemon)["counters"]["classifications"]
    eventually(
        lambda: snapshot(daemon)["counters"]["classifications"] >= start + count,
        15,
        f"{count} more classifications",
    )
    assert {p["model"]["version"] for p in snapshot(daemon)["recent"][:count]} == {version}


def model_state(sub: Subscriber, **expected: Any) -> dict[str, Any]:
    """The first ``model/state`` message whose fields include ``expected``."""
    message = sub.wait_until(
        f"{TOPIC}/model/state", lambda m: expected.items() <= m.json().items(), timeout=10
    )
    return message.json()


def test_a_pushed_version_takes_over_without_a_pause_and_rolls_back(
    tmp_path: Path,
    pose_model: PoseBundle,
    versions: dict[str, bytes],
    data_dir: Path,
    run_daemon: Callable[[Config], Daemon],
) -> None:
    limit = size_limit(versions["1.0.0"])
    with Mosquitto() as broker, Subscriber(broker.port, f"{TOPIC}/#") as sub:
        daemon = run_daemon(kiosk(tmp_path, pose_model, data_dir, limit, broker.port))
        keeps_classifying(daemon, "1.0.0")
        model_state(sub, status="ok", version="1.0.0")

        status, body = call(daemon, "/api/models", versions["2.0.0"], AUTH)
        assert status == 201, body
        assert body == {
            "version": "2.0.0",
            "model_id": "poses",
            "status": "active",
            "previous": "1.0.0",
            "changed": True,
            "detail": "poses 2.0.0 is active (previous: 1.0.0)",
        }
        eventually(lambda: snapshot(daemon)["model"]["version"] == "2.0.0", 5, "the status to show 2.0.0")
        keeps_classifying(daemon, "2.0.0")
        assert model_state(sub, status="ok", version="2.0.0")["id"] == "poses"

        # Every classification, in order: one switch, and none of the gaps around it is longer
        # than the longest in ordinary running before it (a dropped frame, say) plus jitter.
        stream = sorted((m.json() for m in sub.messages(f"{TOPIC}/classification")), key=lambda p: p["seq"])
        models = [p["model"]["version"] for p in stream]
        switch = models.index("2.0.0")
        assert set(models[:switch]) == {"1.0.0"} and set(models[switch:]) == {"2.0.0"}
        assert [p["seq"] for p in stream] == list(range(stream[0]["seq"], stream[-1]["seq"] + 1))
        gaps = [later["ts"] - earlier["ts"] for earlier, later in pairwise(stream)]
        assert gaps[switch - 1] <= max(gaps[: switch - 1]) + SLACK_S, (gaps[switch - 1], max(gaps))

        status, body = call(daemon, "/api/models", versions["1.0.0"], AUTH)
        assert status == 422
        assert body["error"].startswith("compatibility: version 1.0.0 is older than the active 2.0.0")
        model_state(sub, status="rejected", version="2.0.0", detail=body["error"])

        status, body = call(daemon, "/api/models/1.0.0/activate", b"", AUTH)
        assert status == 200 and body["previous"] == "2.0.0" and body["version"] == "1.0.0"
        assert model_state(sub, status="rolled_back", version="1.0.0")["detail"] == body["detail"]
        assert snapshot(daemon)["model"]["status"] == "rolled_back"
        keeps_classifying(daemon, "1.0.0")
        status, listed = call(daemon, "/api/models")
        assert status == 200
        assert [(m["version"], m["status"]) for m in listed] == [("2.0.0", "available"), ("1.0.0", "active")]

        status, body = call(daemon, "/api/models/7.0.0/activate", b"", AUTH)
        assert status == 422 and body["error"].startswith("activate: version '7.0.0' is not stored")
        assert snapshot(daemon)["model"]["version"] == "1.0.0"


def test_a_restart_keeps_the_active_version_not_the_configured_one(
    tmp_path: Path,
    pose_model: PoseBundle,
    versions: dict[str, bytes],
    data_dir: Path,
    run_daemon: Callable[[Config], Daemon],
) -> None:
    config = kiosk(tmp_path, pose_model, data_dir, size_limit(versions["1.0.0"]), None)
    first = run_daemon(config)
    assert call(first, "/api/models", versions["2.0.0"], AUTH)[0] == 201
    first.stop()

    again = run_daemon(config)  # the configuration still names the 1.0.0 bundle
    eventually(lambda: snapshot(again)["model"] is not None, 10, "a model")
    assert snapshot(again)["model"]["version"] == "2.0.0"
    keeps_classifying(again, "2.0.0")
    status, listed = call(again, "/api/models")
    assert [(m["version"], m["status"]) for m in listed] == [("2.0.0", "active"), ("1.0.0", "available")]


class TestRefusals:
    """One daemon on 1.0.0 for every refusal; each must leave it on 1.0.0 and classifying."""

    @pytest.fixture(scope="class")
    def running(
        self,
        tmp_path_factory: pytest.TempPathFactory,
        pose_model: PoseBundle,
        versions: dict[str, bytes],
        data_dir: Path,
    ) -> Iterator[tuple[Daemon, Subscriber]]:
        limit = size_limit(versions["1.0.0"])
        state = tmp_path_factory.mktemp("refusals")
        with Mosquitto() as broker, Subscriber(broker.port, f"{TOPIC}/#") as sub:
            daemon = build(kiosk(state, pose_model, data_dir, limit, broker.port))
            daemon.start()
            try:
                keeps_classifying(daemon, "1.0.0")
                yield daemon, sub
            finally:
                daemon.stop()

    @pytest.fixture(scope="class")
    def bad(
        self, versions: dict[str, bytes], pose_model: PoseBundle, tmp_path_factory: pytest.TempPathFactory
    ) -> dict[str, BadBundle]:
        good = versions["1.0.0"]
        return bad_bundles(good, pose_model, tmp_path_factory.mktemp("bad"), size_limit(good))

    @pytest.mark.parametrize("case", BAD_BUNDLES)
    def test_a_bad_bundle_is_refused_with_its_step(
        self, running: tuple[Daemon, Subscriber], bad: dict[str, BadBundle], case: str
    ) -> None:
        daemon, sub = running
        status, body = call(daemon, "/api/models", bad[case].data, AUTH)
        assert status == 422
        assert body["error"].startswith(bad[case].refusal)
        model = snapshot(daemon)["model"]
        assert (model["version"], model["status"], model["detail"]) == ("1.0.0", "rejected", body["error"])
        state = model_state(sub, status="rejected", detail=body["error"])
        assert (state["id"], state["version"], len(state["sha256"])) == ("poses", "1.0.0", 64)
        keeps_classifying(daemon, "1.0.0")

    @pytest.mark.parametrize(
        "headers", [{}, {"Authorization": "Bearer not-the-token"}], ids=["no token", "wrong token"]
    )
    def test_without_the_token_nothing_changes(
        self, running: tuple[Daemon, Subscriber], versions: dict[str, bytes], headers: dict[str, str]
    ) -> None:
        daemon, sub = running
        states = len(sub.messages(f"{TOPIC}/model/state"))
        assert call(daemon, "/api/models", versions["2.0.0"], headers)[0] == 401
        assert call(daemon, "/api/models/2.0.0/activate", b"", headers)[0] == 401
        assert snapshot(daemon)["model"]["version"] == "1.0.0"
        keeps_classifying(daemon, "1.0.0")
        assert len(sub.messages(f"{TOPIC}/model/state")) == states
        assert [m["version"] for m in call(daemon, "/api/models")[1]] == ["1.0.0"]
