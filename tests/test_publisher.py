"""The MQTT publisher against a real mosquitto on loopback: delivery, order, outages, retained topics."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from broker import HOST, Mosquitto, Received, Subscriber, free_port
from conftest import eventually
from test_faults import report  # noqa: F401  (the fixture printing FAULTS lines for the README)

from device.config import MqttSection, TlsSection
from device.outbox import Outbox
from device.prediction import Prediction
from device.publisher import ACK_TIMEOUT_S, MqttPublisher
from device.status import StatusBoard

REPO = Path(__file__).resolve().parents[1]
DESIGN_FIELDS = {
    *("seq", "epoch", "ts", "label", "confidence", "probabilities"),
    *("window", "model", "latency_ms", "person"),
}


def prediction(i: int) -> Prediction:
    return Prediction(
        ts=1_750_000_000.0 + i,
        label="squat" if i % 2 else "stand",
        confidence=0.875,
        probabilities=(("squat", 0.875), ("stand", 0.125)),
        first_frame=10 * i + 1,
        last_frame=10 * i + 30,
        start_ts_ms=333.3 * i,
        end_ts_ms=333.3 * i + 1000.0,
        model_id="demo",
        model_version="1.2.0",
        latency_ms=12.5,
    )


def in_order_without_duplicates(received: list[Received]) -> list[int]:
    """What a subscriber keeps when it drops every message whose seq it has already passed."""
    kept: list[int] = []
    for message in received:
        seq = message.json()["seq"]
        if not kept or seq > kept[-1]:
            kept.append(seq)
    return kept


@dataclass
class Rig:
    """One publisher with its own outbox and status board."""

    publisher: MqttPublisher
    outbox: Outbox
    status: StatusBoard

    def emit(self, count: int, start: int = 0) -> None:
        """What the daemon does per classification: store it, then wake the publisher."""
        for i in range(start, start + count):
            self.outbox.append(self.publisher.topic("classification"), prediction(i).payload())
            self.publisher.notify()

    @property
    def mqtt(self) -> dict[str, Any]:
        return self.status.snapshot()["mqtt"]

    def topic(self, name: str) -> str:
        return self.publisher.topic(name)


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as running:
        yield running


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    """Build publishers (not started); every one is stopped and its outbox closed afterwards."""
    rigs: list[Rig] = []

    def make(port: int, device_id: str = "kiosk", ack_timeout_s: float = ACK_TIMEOUT_S, **mqtt: Any) -> Rig:
        outbox = Outbox(tmp_path / f"{device_id}-{len(rigs)}.sqlite", max_rows=10_000)
        status = StatusBoard(device_id)
        config = MqttSection(port=port, **mqtt)
        client_id = f"test-{device_id}-{uuid.uuid4().hex[:6]}"
        publisher = MqttPublisher(
            config, device_id, outbox, status, client_id=client_id, ack_timeout_s=ack_timeout_s
        )
        rig = Rig(publisher, outbox, status)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.publisher.stop(timeout=1.0)
        rig.outbox.close()


def test_classifications_arrive_in_order_with_seq_and_the_design_fields(broker: Mosquitto, make_rig) -> None:
    rig = make_rig(broker.port)
    with Subscriber(broker.port, "movement/#") as sub:
        rig.publisher.start()
        rig.emit(30)
        received = sub.wait_for(rig.topic("classification"), 30, timeout=15)
        assert [m.json()["seq"] for m in received] == list(range(1, 31))
        assert all((m.qos, m.retain) == (1, False) for m in received)
        first = received[0].json()
        assert set(first) == DESIGN_FIELDS
        assert first == {"seq": 1, "epoch": rig.outbox.epoch, **prediction(0).payload()}
        assert set(first["window"]) == {"first_frame", "last_frame", "start_ts_ms", "end_ts_ms"}
        assert first["model"] == {"id": "demo", "version": "1.2.0"}
        eventually(lambda: rig.outbox.depth == 0, 10, "outbox drained after the PUBACKs")
        assert rig.mqtt == {
            "enabled": True,
            "connected": True,
            "broker": f"127.0.0.1:{broker.port}",
            "detail": "",
        }
        eventually(lambda: rig.status.snapshot()["outbox"] == {"depth": 0, "dropped": 0}, 5, "status current")


def test_retained_availability_state_and_model_state_reach_a_late_subscriber(
    broker: Mosquitto, make_rig
) -> None:
    rig = make_rig(broker.port, "kiosk-7")
    rig.publisher.set_model_state({"id": "demo", "version": "1.0.0", "sha256": "ab" * 32, "status": "ok"})
    rig.publisher.set_state({"label": "stand", "confidence": 0.5, "person_present": False})
    with Subscriber(broker.port, "movement/#") as live:
        rig.publisher.start()
        live.wait_for(rig.topic("state"), 1)
        # a change while connected is published at once and replaces the retained value
        rig.publisher.set_state({"label": "squat", "confidence": 0.9, "person_present": True})
        rig.publisher.set_model_state({"id": "demo", "version": "1.1.0", "sha256": "cd" * 32, "status": "ok"})
        live.wait_for(rig.topic("state"), 2)
        live.wait_for(rig.topic("model/state"), 2)
    with Subscriber(broker.port, "movement/#") as late:
        availability = late.wait_for(rig.topic("availability"))[0]
        state = late.wait_for(rig.topic("state"))[0]
        model = late.wait_for(rig.topic("model/state"))[0]
    assert (availability.payload, availability.retain) == (b"online", True)
    assert state.retain and state.json() == {"label": "squat", "confidence": 0.9, "person_present": True}
    assert model.retain and model.json()["version"] == "1.1.0" and model.json()["status"] == "ok"


def test_home_assistant_device_discovery(broker: Mosquitto, make_rig) -> None:
    rig = make_rig(broker.port, "gym-1")
    topic = "homeassistant/device/gym-1/config"
    with Subscriber(broker.port, "homeassistant/#") as live:
        rig.publisher.start()
        live.wait_for(topic)
    with Subscriber(broker.port, "homeassistant/#") as late:
        message = late.wait_for(topic)[0]
    config = message.json()
    assert message.retain
    assert {"dev", "o", "cmps"} <= set(config)
    assert config["availability"][0]["topic"] == "movement/gym-1/availability"
    assert config["state_topic"] == "movement/gym-1/state"
    platforms = sorted(component["p"] for component in config["cmps"].values())
    assert platforms == ["binary_sensor", *["sensor"] * 6]
    assert len({component["unique_id"] for component in config["cmps"].values()}) == 7
    # the activity, its repetitions and the last range of motion read the retained activity topic
    activity_sensors = [
        c for c in config["cmps"].values() if c.get("state_topic") == "movement/gym-1/activity"
    ]
    assert sorted(c["name"] for c in activity_sensors) == [
        "Activity",
        "Last repetition's range of motion",
        "Repetitions",
    ]


def test_no_discovery_when_disabled(broker: Mosquitto, make_rig) -> None:
    rig = make_rig(broker.port, discovery=False)
    with Subscriber(broker.port, "#") as sub:
        rig.publisher.start()
        sub.wait_for(rig.topic("availability"))
        rig.publisher.stop()
        sub.wait_until(rig.topic("availability"), lambda m: m.payload == b"stopped")
        assert not [topic for topic in sub.topics_seen() if topic.startswith("homeassistant/")]


def test_stats_are_published_periodically(broker: Mosquitto, make_rig) -> None:
    rig = make_rig(broker.port, stats_interval_s=0.3)
    rig.emit(3)
    with Subscriber(broker.port, "movement/#") as sub:
        rig.publisher.start()
        stats = sub.wait_for(rig.topic("stats"), 3, timeout=10)
    assert all((m.qos, m.retain) == (0, False) for m in stats)
    latest = sub.payloads(rig.topic("stats"))[-1]
    assert set(latest["fps"]) == {"capture", "pose", "classify"}
    assert {"latency_ms", "stage_ms", "uptime_s", "cpu_temp_c"} <= set(latest)
    assert set(latest["frames"]) >= {"dropped", "captured"}
    assert set(latest["outbox"]) == {"depth", "dropped"}
    assert latest["storage"]["ok"] is True and latest["storage"]["mode"] == "disk"


def test_broker_down_at_start_then_everything_arrives_in_order(make_rig) -> None:
    port = free_port()
    # A durable consumer: its session survives the broker's absence and collects what it missed.
    with (
        Mosquitto(port, persistence=True) as broker,
        Subscriber(port, "movement/#", persistent=True, client_id="consumer") as sub,
    ):
        broker.stop()
        rig = make_rig(port)
        rig.publisher.start()  # returns with the broker down: connecting happens on paho's thread
        assert rig.mqtt["connected"] is False
        rig.emit(40)
        eventually(lambda: rig.mqtt["detail"] == "broker unreachable", 5, "status says unreachable")
        assert rig.mqtt["connected"] is False
        time.sleep(0.3)
        assert rig.outbox.depth == 40  # nothing acknowledged, nothing lost
        assert rig.status.snapshot()["outbox"]["depth"] == 40

        broker.start()
        received = sub.wait_for(rig.topic("classification"), 40, timeout=40)
        assert in_order_without_duplicates(received) == list(range(1, 41))
        assert received[0].json()["seq"] == 1
        eventually(lambda: rig.outbox.depth == 0, 10, "outbox drained")
        assert rig.mqtt["connected"] is True


def test_broker_restart_mid_stream_loses_nothing(make_rig, caplog: pytest.LogCaptureFixture) -> None:
    total = 300
    port = free_port()
    with (
        Mosquitto(port, persistence=True) as broker,
        Subscriber(port, "movement/#", persistent=True, client_id="consumer") as sub,
    ):
        rig = make_rig(port)
        rig.publisher.start()
        eventually(lambda: rig.mqtt["connected"], 10, "publisher connected")

        def produce() -> None:  # a classification every 5 ms, across the restart
            for i in range(total):
                rig.emit(1, start=i)
                time.sleep(0.005)

        producer = threading.Thread(target=produce, name="producer")
        producer.start()
        sub.wait_for(rig.topic("classification"), 50, timeout=15)
        broker.restart()
        producer.join(30)

        def complete() -> bool:
            return in_order_without_duplicates(sub.messages(rig.topic("classification")))[-1:] == [total]

        eventually(complete, 40, f"seq {total} received")
        received = sub.messages(rig.topic("classification"))
        assert in_order_without_duplicates(received) == list(range(1, total + 1))
        eventually(lambda: rig.outbox.depth == 0, 10, "outbox drained")
        lost = [r for r in caplog.records if getattr(r, "detail", "").startswith("connection lost")]
        assert lost, "the publisher never saw the restart"


def test_clean_stop_publishes_stopped_retained_and_is_idempotent(broker: Mosquitto, make_rig) -> None:
    rig = make_rig(broker.port)
    rig.publisher.start()
    eventually(lambda: rig.mqtt["connected"], 10, "publisher connected")
    rig.emit(5)
    rig.publisher.stop(timeout=5)
    assert rig.outbox.depth == 0  # stop() flushed the outbox before disconnecting
    assert rig.mqtt["connected"] is False and rig.mqtt["detail"] == "stopped"
    rig.publisher.stop()  # a second stop is a no-op
    assert rig.mqtt["connected"] is False and rig.mqtt["detail"] == "stopped"
    with Subscriber(broker.port, "movement/#") as late:
        availability = late.wait_for(rig.topic("availability"))[0]
    assert (availability.payload, availability.retain) == (b"stopped", True)


CHILD = """
import signal, sys
from pathlib import Path
from device.config import MqttSection, TlsSection
from device.outbox import Outbox
from device.publisher import MqttPublisher
from device.status import StatusBoard

port, device_id, folder = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
config = MqttSection(port=port, keepalive_s=5, discovery=False)
MqttPublisher(config, device_id, Outbox(folder / "outbox.sqlite", 100), StatusBoard(device_id)).start()
signal.pause()
"""


def test_last_will_says_offline_when_the_process_is_killed(broker: Mosquitto, tmp_path: Path) -> None:
    topic = "movement/doomed/availability"
    with Subscriber(broker.port, topic) as sub:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(broker.port), "doomed", str(tmp_path)], cwd=REPO
        )
        try:
            sub.wait_until(topic, lambda m: m.payload == b"online", timeout=20)
            child.send_signal(signal.SIGKILL)
            sub.wait_until(topic, lambda m: m.payload == b"offline", timeout=15)
        finally:
            child.kill()
            child.wait(10)
    with Subscriber(broker.port, topic) as late:
        assert late.wait_for(topic)[0].payload == b"offline"


def test_credentials_from_the_config_are_used(make_rig) -> None:
    with Mosquitto(allow_anonymous=False, users={"kiosk": "s3cret"}) as broker:
        rig = make_rig(broker.port, username="kiosk", password="s3cret")
        rig.publisher.start()
        rig.emit(3)
        eventually(lambda: rig.outbox.depth == 0, 10, "sent and acknowledged with credentials")
        assert rig.mqtt["connected"] is True


@pytest.mark.parametrize(
    "credentials",
    [{}, {"username": "kiosk", "password": "wrong"}],
    ids=["anonymous", "wrong-password"],
)
def test_refused_connection_is_not_connected_and_does_not_crash(make_rig, credentials: dict) -> None:
    with Mosquitto(allow_anonymous=False, users={"kiosk": "s3cret"}) as broker:
        rig = make_rig(broker.port, **credentials)
        rig.publisher.start()
        rig.emit(2)
        detail = eventually(
            lambda: rig.mqtt["detail"].startswith("connection refused") and rig.mqtt["detail"], 10, "refusal"
        )
        assert detail == "connection refused: not authorized"
        assert rig.mqtt["connected"] is False
        time.sleep(0.3)
        assert rig.outbox.depth == 2  # nothing was sent on a refused connection
        rig.publisher.stop()  # returns although the broker never accepted the connection
        assert rig.outbox.depth == 2  # kept for the next start


def test_unreadable_tls_files_fail_at_build_time(tmp_path: Path) -> None:
    config = MqttSection(tls=TlsSection(ca_file=tmp_path / "missing-ca.pem"))
    with Outbox(tmp_path / "outbox.sqlite", 10) as outbox, pytest.raises(ValueError, match="mqtt.tls"):
        MqttPublisher(config, "kiosk", outbox, StatusBoard("kiosk"))


def test_disabled_publisher_only_reports_it(tmp_path: Path) -> None:
    status = StatusBoard("kiosk")
    with Outbox(tmp_path / "outbox.sqlite", 10) as outbox:
        publisher = MqttPublisher(MqttSection(enabled=False), "kiosk", outbox, status)
        publisher.start()
        publisher.stop()
    assert status.snapshot()["mqtt"] == {
        "enabled": False,
        "connected": False,
        "broker": "127.0.0.1:1883",
        "detail": "disabled",
    }


class SilentBroker:
    """Speaks just enough MQTT 3.1.1 to look alive — CONNACK, PINGRESP, SUBACK — and never sends a PUBACK.

    No real broker can be made to behave like this (a wedged bridge or plugin, a proxy in
    between), so this is the suite's one fake broker. It counts connections per client id and
    the PUBLISH packets it swallowed.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections: Counter[str] = Counter()
        self.publishes = 0
        self._server = socket.create_server((HOST, port))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._clients: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, name="silent-broker", daemon=True)]

    def __enter__(self) -> SilentBroker:
        self._threads[0].start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for connection in [self._server, *self._clients]:
            connection.close()
        for thread in self._threads:
            thread.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            connection.settimeout(0.2)
            self._clients.append(connection)
            thread = threading.Thread(
                target=self._serve, args=(connection,), name="silent-client", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        buffer = b""
        while not self._stop.is_set():
            try:
                data = connection.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            buffer += data
            while (packet := _mqtt_packet(buffer)) is not None:
                kind, body, buffer = packet
                if kind == 1:  # CONNECT: the client id follows the 10-byte variable header
                    size = int.from_bytes(body[10:12], "big")
                    self.connections[body[12 : 12 + size].decode()] += 1
                    connection.sendall(b"\x20\x02\x00\x00")
                elif kind == 3:
                    self.publishes += 1  # and no PUBACK, ever
                elif kind == 8:  # SUBSCRIBE: granted, so a subscriber looks connected too
                    connection.sendall(b"\x90\x03" + body[:2] + b"\x01")
                elif kind == 12:
                    connection.sendall(b"\xd0\x00")


def _mqtt_packet(buffer: bytes) -> tuple[int, bytes, bytes] | None:
    """(packet type, body, rest) of the first whole packet in ``buffer``, or None until it has arrived."""
    length, multiplier, index = 0, 1, 1
    while True:
        if index >= len(buffer):
            return None
        byte = buffer[index]
        length += (byte & 0x7F) * multiplier
        multiplier *= 128
        index += 1
        if not byte & 0x80:
            break
    if len(buffer) < index + length:
        return None
    return buffer[0] >> 4, buffer[index : index + length], buffer[index + length :]


def test_a_broker_that_never_acknowledges_is_left_and_a_real_one_then_gets_everything(
    make_rig,
    report: Callable[..., None],  # noqa: F811  (the fixture imported from test_faults)
) -> None:
    port, timeout_s, total = free_port(), 1.0, 10
    with Mosquitto(port, persistence=True) as broker:  # the dashboard's session, kept for later
        with Subscriber(port, "movement/#", persistent=True, client_id="dashboard"):
            pass
        broker.stop()
        with SilentBroker(port) as silent:
            rig = make_rig(port, ack_timeout_s=timeout_s, discovery=False)
            rig.publisher.start()
            rig.emit(total)
            eventually(lambda: silent.publishes >= total, 15, "the messages sent to the silent broker")
            detail = eventually(
                lambda: "no acknowledgement" in rig.mqtt["detail"] and rig.mqtt["detail"], 15, "the status"
            )
            eventually(lambda: silent.connections[rig.publisher.client_id] >= 3, 30, "two reconnects")
            stalled = rig.status.snapshot()
            assert rig.outbox.depth == total  # nothing acknowledged, so nothing deleted
            swallowed, connections = silent.publishes, silent.connections[rig.publisher.client_id]
        broker.start()
        with Subscriber(port, "movement/#", persistent=True, client_id="dashboard") as sub:
            received = sub.wait_for(rig.topic("classification"), total, timeout=30)
            eventually(lambda: rig.outbox.depth == 0, 15, "every row acknowledged by mosquitto")
            eventually(lambda: rig.mqtt["detail"] == "", 10, "the stall forgotten once acknowledged")
    assert detail.startswith(f"no acknowledgement from the broker for {timeout_s:g} s")
    assert stalled["counters"]["mqtt_ack_timeouts"] >= 2
    assert sorted({m.json()["seq"] for m in received}) == list(range(1, total + 1))
    report(
        "broker accepts but never acknowledges",
        ack_timeout_s=timeout_s,
        publishes_swallowed=swallowed,
        connections_to_it=connections,
        ack_timeouts=stalled["counters"]["mqtt_ack_timeouts"],
        then_delivered_by_mosquitto=len({m.json()["seq"] for m in received}),
        lost=total - len({m.json()["seq"] for m in received}),
    )
