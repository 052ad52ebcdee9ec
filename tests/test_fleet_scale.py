"""Many kiosks pulling from one real mosquitto: convergence, a canary that stops at its share, a
failing model rolled back everywhere, replays refused, and what a kiosk remembers across restarts.

The kiosks are :class:`fleet_kiosks.LightKiosk`: the daemon's publisher (subscription included),
model store and puller in one process, each with its own state folder, no frames. Every assertion
is on counts and states; the time each phase took is printed (``FLEET SCALE``), never asserted.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from broker import Mosquitto
from conftest import PoseBundle, eventually
from fleet_kiosks import LightKiosk
from model_bundles import members, resigned, versions_of
from paho.mqtt.enums import CallbackAPIVersion

from device.config import FleetSection
from device.fleet_pull import STATE_FILE
from device.model.bundle import MANIFEST
from device.model.desired import in_canary
from provisioning.__main__ import main as provisioning

GROUP = "all"
WAIT = 180.0  # only guards against a hang
FLEET = FleetSection(groups=[GROUP], trial_frames=10, trial_known_ratio=0.5)


@pytest.fixture(scope="module")
def bundles(pose_model: PoseBundle, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """1.0.0 and 2.0.0, and 3.0.0 whose threshold of 1.0 leaves every result unknown."""
    work = tmp_path_factory.mktemp("scale-bundles")
    made = versions_of(pose_model, work, "2.0.0")
    decision = json.loads(members(made["1.0.0"])[MANIFEST])["decision"]
    made["3.0.0"] = resigned(
        made["1.0.0"], pose_model.signing_key, version="3.0.0", decision={**decision, "threshold": 1.0}
    )
    for version, data in made.items():
        (work / f"poses-{version}.zip").write_bytes(data)
    return {version: work / f"poses-{version}.zip" for version in made}


def converged(kiosks: list[LightKiosk], check: Callable[[LightKiosk], bool], what: str) -> None:
    eventually(lambda: all(check(k) for k in kiosks), WAIT, what)


def states(kiosks: list[LightKiosk]) -> Counter[tuple[str | None, str]]:
    return Counter((k.version(), k.puller.state()["state"]) for k in kiosks)


def cli(port: int, *argv: str) -> list[str]:
    return [*argv, "--broker", f"127.0.0.1:{port}"]


@pytest.fixture
def fleet_of(
    pose_model: PoseBundle, tmp_path: Path, bundles: dict[str, Path]
) -> Iterator[Callable[[int, int], list[LightKiosk]]]:
    started: list[LightKiosk] = []

    def make(count: int, port: int) -> list[LightKiosk]:
        first = bundles["1.0.0"].read_bytes()
        for index in range(count):
            kiosk = LightKiosk(
                tmp_path / f"k{index:03d}", f"k{index:03d}", port, pose_model.public_key, FLEET
            )
            started.append(kiosk.start(first))
        return started

    yield make
    for kiosk in started:
        kiosk.stop()


@pytest.mark.parametrize("count", [10, 50])
def test_a_fleet_converges_a_canary_stops_at_its_share_and_a_failing_model_rolls_back_everywhere(
    count: int,
    fleet_of: Callable[[int, int], list[LightKiosk]],
    bundles: dict[str, Path],
    pose_model: PoseBundle,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = str(pose_model.signing_key)
    with Mosquitto() as broker:
        kiosks = fleet_of(count, broker.port)
        assert states(kiosks) == {("1.0.0", "idle"): count}
        canary = {k.device_id for k in kiosks if in_canary(k.device_id, GROUP, 1, 20)}
        assert 0 < len(canary) < count  # 20 % of these ids: some, not all

        release = cli(broker.port, "release", str(bundles["2.0.0"]), "--group", GROUP, "--key", key)
        began = time.monotonic()
        assert provisioning([*release, "--canary", "20%"]) == 0
        converged(
            kiosks,
            lambda k: k.puller.state()["state"] == ("ok" if k.device_id in canary else "waiting"),
            "the canary on 2.0.0, the rest waiting",
        )
        canary_s = time.monotonic() - began
        assert states(kiosks) == {("2.0.0", "ok"): len(canary), ("1.0.0", "waiting"): count - len(canary)}

        began = time.monotonic()
        assert provisioning(cli(broker.port, "promote", "--group", GROUP, "--key", key)) == 0
        converged(
            kiosks, lambda k: k.puller.state()["state"] == "ok" and k.version() == "2.0.0", "all on 2.0.0"
        )
        promote_s = time.monotonic() - began
        assert states(kiosks) == {("2.0.0", "ok"): count}

        began = time.monotonic()
        failing = cli(broker.port, "release", str(bundles["3.0.0"]), "--group", GROUP, "--key", key)
        assert provisioning(failing) == 0
        converged(kiosks, lambda k: k.puller.state()["state"] == "rolled_back", "all rolled back")
        rollback_s = time.monotonic() - began
        assert states(kiosks) == {("2.0.0", "rolled_back"): count}

        capsys.readouterr()
        assert provisioning(cli(broker.port, "rollout", "status", "--json", "--wait", "3")) == 0
        (row,) = json.loads(capsys.readouterr().out)["groups"]
        assert row["kiosks"] == row["online"] == count, row
        assert row["running"] == {"poses 2.0.0": count} and row["states"] == {"rolled_back": count}, row
    with capsys.disabled():
        print(
            f"\nFLEET SCALE {count} kiosks: canary (20 %, {len(canary)} kiosks) {canary_s:.1f} s, "
            f"promote to all {promote_s:.1f} s, failing release rolled back everywhere {rollback_s:.1f} s"
        )


def publish(port: int, topic: str, payload: bytes) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="replayer")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def retained(port: int, topic: str) -> bytes:
    """The retained message on ``topic`` as a subscriber receives it."""
    got: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="reader")
    client.on_message = lambda c, u, m: got.append(bytes(m.payload))
    client.connect("127.0.0.1", port)
    client.subscribe(topic, 1)
    client.loop_start()
    try:
        eventually(lambda: got, 30, f"the retained message on {topic}")
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


def test_an_old_release_replayed_is_refused_and_what_failed_is_remembered_across_a_restart(
    fleet_of: Callable[[int, int], list[LightKiosk]],
    bundles: dict[str, Path],
    pose_model: PoseBundle,
    tmp_path: Path,
) -> None:
    key = str(pose_model.signing_key)
    topic = f"movement/fleet/{GROUP}/model/desired"
    with Mosquitto() as broker:
        (kiosk,) = fleet_of(1, broker.port)
        assert (
            provisioning(cli(broker.port, "release", str(bundles["2.0.0"]), "--group", GROUP, "--key", key))
            == 0
        )
        eventually(lambda: kiosk.puller.state()["state"] == "ok", WAIT, "2.0.0 kept")
        old = retained(broker.port, topic)  # release 1, validly signed
        assert (
            provisioning(cli(broker.port, "release", str(bundles["3.0.0"]), "--group", GROUP, "--key", key))
            == 0
        )
        eventually(lambda: kiosk.puller.state()["state"] == "rolled_back", WAIT, "3.0.0 rolled back")

        publish(broker.port, topic, old)  # someone replays release 1 (a downgrade if it were taken)
        eventually(lambda: kiosk.puller.state()["state"] == "refused", WAIT, "the replay refused")
        state: dict[str, Any] = kiosk.puller.state()
        assert state["last_error"] == "replay: release 1 is older than release 2 accepted before", state
        assert kiosk.version() == "2.0.0"

        remembered = json.loads((tmp_path / "k000" / STATE_FILE).read_text())
        assert remembered["releases"][GROUP]["release"] == 2
        assert [(f["model_id"], f["version"]) for f in remembered["failed"]] == [("poses", "3.0.0")]
        assert remembered["trial"] is None

        kiosk.stop()  # the same state folder, a new process' worth of objects: nothing forgotten
        again = LightKiosk(tmp_path / "k000", "k000", broker.port, pose_model.public_key, FLEET).start()
        try:
            eventually(lambda: again.puller.state()["state"] == "refused", WAIT, "the replay refused again")
            assert again.version() == "2.0.0" and again.puller.state()["failed"] == ["poses 3.0.0"]
        finally:
            again.stop()


def test_a_damaged_fleet_state_is_moved_aside_and_the_kiosk_starts_afresh(
    fleet_of: Callable[[int, int], list[LightKiosk]], tmp_path: Path
) -> None:
    folder = tmp_path / "k000"
    folder.mkdir()
    (folder / STATE_FILE).write_text(
        '{"format": 1, "releases": {"all": {"release": "x"}}, "failed": [], "trial": null}'
    )
    with Mosquitto() as broker:
        (kiosk,) = fleet_of(1, broker.port)
        assert kiosk.puller.state()["state"] == "idle" and kiosk.version() == "1.0.0"
    assert [
        p.name.startswith(f"{STATE_FILE}.corrupt-") for p in folder.iterdir() if p.name.startswith(STATE_FILE)
    ] == [True]


def test_a_restart_during_a_trial_fails_it_and_rolls_back(
    fleet_of: Callable[[int, int], list[LightKiosk]],
    bundles: dict[str, Path],
    pose_model: PoseBundle,
    tmp_path: Path,
) -> None:
    """The model on trial may have crashed the process: a kiosk that comes back in the middle of a
    trial goes back to the version before, and never pulls that one again."""
    endless = FleetSection(groups=[GROUP], trial_frames=10**7)
    with Mosquitto() as broker:
        kiosk = LightKiosk(tmp_path / "k000", "k000", broker.port, pose_model.public_key, endless)
        kiosk.start(bundles["1.0.0"].read_bytes())
        try:
            release = cli(broker.port, "release", str(bundles["2.0.0"]), "--group", GROUP)
            assert provisioning([*release, "--key", str(pose_model.signing_key)]) == 0
            eventually(lambda: kiosk.puller.state()["state"] == "trial", WAIT, "2.0.0 on trial")
            assert kiosk.version() == "2.0.0"
        finally:
            kiosk.stop()
        again = LightKiosk(tmp_path / "k000", "k000", broker.port, pose_model.public_key, endless).start()
        try:
            eventually(lambda: again.puller.state()["state"] == "rolled_back", WAIT, "rolled back at start")
            state = again.puller.state()
            assert again.version() == "1.0.0" and state["failed"] == ["poses 2.0.0"], state
            assert state["last_error"] == "the kiosk restarted during its trial", state
        finally:
            again.stop()
