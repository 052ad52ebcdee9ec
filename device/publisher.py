"""MQTT for the daemon: drains the outbox to the broker and keeps the device's retained topics current.

This is the only module that imports paho (paho-mqtt 2.x, callback API version 2). Topics are
``<prefix>/<device_id>/...`` as DESIGN.md §5 lists them: ``availability`` (retained: ``online`` on
every connect, ``offline`` as the last will, ``stopped`` on a clean stop), ``classification`` and
``events`` (QoS 1 from the outbox), ``state``, ``model/state`` and ``activity`` (retained),
``stats`` (QoS 0, periodic), plus one retained Home Assistant device-discovery message.

It also receives: :meth:`MqttPublisher.subscribe` names topics (QoS 1) subscribed on every
connect — the clean session forgets them — so a retained message on them (a fleet group's desired
model, :mod:`device.fleet_pull`) arrives again after each reconnect; its consumer must be idempotent.
Messages reach the consumer's handler on paho's network thread, which only hands them over.

Two threads, and why:

- **paho's network thread** runs the callbacks. They only record facts (connected or refused, which
  message ids the broker acknowledged) and wake the worker. They never touch SQLite (an fsync there
  would stall keepalives) and never take a lock that is held around a paho call: paho calls
  ``on_publish`` while holding its own message lock, so that would deadlock against a publish.
- **the worker** (thread ``mqtt-publisher``) does all publishing and all bookkeeping. On every new
  connection it announces (``online``, discovery, ``model/state``, ``state``), then sends outbox
  rows in ``seq`` order with at most :data:`IN_FLIGHT` unacknowledged, deletes a row only when the
  PUBACK for its message id arrived, and publishes ``stats`` on schedule.

Delivery is at least once and in order. A refused connection is not a connection: nothing is sent
until a CONNACK with success. When the connection drops, the worker forgets the ids in flight and,
after the next successful connect, resends from the oldest unacknowledged row; paho's own copies of
unacknowledged messages are dropped on connect so they are not sent a second time. A message whose
PUBACK was lost with the connection is therefore delivered twice — subscribers drop duplicates by
``(epoch, seq)``, which never repeats (see :mod:`device.outbox` and :mod:`device.spool`: the rows
come from the durable outbox, or from memory while storage fails).

A broker can accept a connection, answer pings and still never acknowledge a publish (a wedged
bridge or plugin, a proxy in between). The keepalive cannot see that, so acknowledgements have a
deadline of their own: when the oldest message in flight has waited :data:`ACK_TIMEOUT_S`, the
worker gives the connection up (``mqtt.detail`` says why, ``mqtt_ack_timeouts`` counts it) and
paho reconnects; everything unacknowledged is sent again on the new connection.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from device import __version__
from device.config import MqttSection, TlsSection
from device.outbox import Outbox
from device.spool import Spool
from device.status import ModelInfo, StatusBoard

log = logging.getLogger("device.publisher")

IN_FLIGHT = 20  # outbox messages sent and not yet acknowledged, at most
ACK_TIMEOUT_S = 30.0
"""The longest a message in flight waits for its PUBACK before the connection is given up."""
RECONNECT_DELAY_S = (1, 30)  # paho's reconnect backoff: first wait, longest wait
THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")
_WAKE_S = 1.0  # the worker's longest sleep: how late it may notice a stop
_FPS_STAGES = ("capture", "pose", "classify")


@dataclass(frozen=True)
class Topics:
    """Every topic one device publishes to."""

    base: str  # <prefix>/<device_id>
    discovery: str  # <discovery_prefix>/device/<device_id>/config

    @classmethod
    def for_device(cls, config: MqttSection, device_id: str) -> Topics:
        return cls(f"{config.prefix}/{device_id}", f"{config.discovery_prefix}/device/{device_id}/config")

    def __call__(self, name: str) -> str:
        return f"{self.base}/{name}"

    @property
    def availability(self) -> str:
        return self("availability")

    @property
    def classification(self) -> str:
        return self("classification")

    @property
    def state(self) -> str:
        return self("state")

    @property
    def stats(self) -> str:
        return self("stats")

    @property
    def model_state(self) -> str:
        return self("model/state")

    @property
    def activity(self) -> str:
        return self("activity")


def discovery_payload(topics: Topics, device_id: str, name: str = "") -> dict[str, Any]:
    """Home Assistant device-based discovery: the device, and sensors fed by the retained ``state``.

    Availability maps anything but ``online`` (``offline``, ``stopped``) to unavailable.
    """
    uid = f"movement_edge_{device_id}"
    return {
        "dev": {
            "ids": [uid],
            "name": name or f"Movement {device_id}",  # [device] name, as on the status page
            "mf": "movement-edge",
            "mdl": "kiosk",
            "sw": __version__,
        },
        "o": {"name": "movement-edge", "sw": __version__},
        "availability": [
            {
                "topic": topics.availability,
                "value_template": "{{ 'online' if value == 'online' else 'offline' }}",
            }
        ],
        "state_topic": topics.state,
        "qos": 1,
        "cmps": {
            f"{uid}_label": {
                "p": "sensor",
                "name": "Movement",
                "unique_id": f"{uid}_label",
                "icon": "mdi:run",
                "value_template": "{{ value_json.get('label_name', value_json.get('label')) }}",
            },
            f"{uid}_confidence": {
                "p": "sensor",
                "name": "Confidence",
                "unique_id": f"{uid}_confidence",
                "unit_of_measurement": "%",
                "state_class": "measurement",
                "value_template": "{{ (value_json.confidence * 100) | round(1) "
                "if 'confidence' in value_json else none }}",
            },
            f"{uid}_person": {
                "p": "binary_sensor",
                "name": "Person present",
                "unique_id": f"{uid}_person",
                "device_class": "occupancy",
                "value_template": "{{ 'ON' if value_json.person_present else 'OFF' }}",
            },
            f"{uid}_people": {
                "p": "sensor",
                "name": "People in view",
                "unique_id": f"{uid}_people",
                "icon": "mdi:account-group",
                "state_class": "measurement",
                "value_template": "{{ (value_json.people | default([1])) | length "
                "if value_json.person_present else 0 }}",
            },
            # fed by the retained ``activity`` topic (its own state_topic)
            f"{uid}_activity": {
                "p": "sensor",
                "name": "Activity",
                "unique_id": f"{uid}_activity",
                "icon": "mdi:weight-lifter",
                "state_topic": topics.activity,
                "value_template": "{{ value_json.current or 'none' }}",
            },
            f"{uid}_reps": {
                "p": "sensor",
                "name": "Repetitions",
                "unique_id": f"{uid}_reps",
                "icon": "mdi:counter",
                "state_class": "measurement",
                "state_topic": topics.activity,
                "value_template": "{{ value_json.activities[value_json.current].reps "
                "if value_json.current else 0 }}",
            },
            f"{uid}_range": {
                "p": "sensor",
                "name": "Last repetition's range of motion",
                "unique_id": f"{uid}_range",
                "unit_of_measurement": "°",
                "state_topic": topics.activity,
                "value_template": "{{ value_json.last_range }}",
            },
        },
    }


def model_state_payload(
    info: ModelInfo | None, status: str, detail: str, fleet: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The retained ``model/state``: the active model (or nulls), the outcome of the last change,
    and, on a kiosk that pulls its models, where the pull stands (``fleet``)."""
    return {
        "id": info.model_id if info else None,
        "version": info.version if info else None,
        "sha256": info.sha256 if info else None,
        "status": status,
        "detail": detail,
        **({"fleet": dict(fleet)} if fleet is not None else {}),
    }


def read_cpu_temp(path: Path = THERMAL_ZONE) -> float | None:
    """The SoC temperature in °C from sysfs (millidegrees), or None where there is none."""
    try:
        return round(int(path.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def stats_payload(snapshot: Mapping[str, Any], cpu_temp_c: float | None) -> dict[str, Any]:
    """The ``stats`` message from a :meth:`StatusBoard.snapshot`."""
    stages, counters = snapshot["stages"], snapshot["counters"]
    return {
        "ts": round(time.time(), 3),
        "uptime_s": snapshot["uptime_s"],
        "fps": {stage: stages[stage]["fps"] for stage in _FPS_STAGES},
        "stage_ms": {
            stage: {p: times[f"{p}_ms"] for p in ("p50", "p95", "p99")} for stage, times in stages.items()
        },
        "latency_ms": snapshot["latency_ms"],
        "frames": {
            "captured": counters["frames_captured"],
            "dropped": counters["frames_dropped"],
            "processed": counters["frames_processed"],
            "without_person": counters["frames_without_person"],
            "undecodable": counters["frames_undecodable"],
        },
        "classifications": counters["classifications"],
        "outbox": dict(snapshot["outbox"]),
        "storage": dict(snapshot["storage"]),
        "cpu_temp_c": cpu_temp_c,
    }


def _json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def _guarded(callback: Callable[..., None]) -> Callable[..., None]:
    """paho ends its network thread when a callback raises: log the bug instead, keep the link alive."""

    @functools.wraps(callback)
    def wrapper(*args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("mqtt callback failed", extra={"callback": callback.__name__})

    return wrapper


class _Link:
    """The connection as paho's callbacks report it; ``generation`` counts every up/down change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.connected = False
        self.generation = 0
        self.detail = "not started"

    def set(self, connected: bool, detail: str) -> bool:
        """Record the state; returns whether anything changed (worth a status update and a log line)."""
        with self._lock:
            changed = (connected, detail) != (self.connected, self.detail)
            if connected != self.connected:
                self.generation += 1
            self.connected, self.detail = connected, detail
            return changed

    def state(self) -> tuple[bool, int]:
        with self._lock:
            return self.connected, self.generation


class _InFlight:
    """Outbox rows published on the current connection and not yet acknowledged (worker only)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.cursor: dict[str, int] = {}  # per epoch, the last seq handed to paho; absent: the oldest
        self._by_mid: dict[int, tuple[tuple[str, int], float]] = {}  # in send order

    def room(self) -> int:
        return self.limit - len(self._by_mid)

    def add(self, mid: int, key: tuple[str, int], sent_at: float) -> None:
        self._by_mid[mid] = (key, sent_at)
        self.cursor[key[0]] = key[1]

    def settle(self, mid: int) -> tuple[tuple[str, int], float] | None:
        """The ((epoch, seq), sent_at) of an acknowledged message id; None for ids that are not ours."""
        return self._by_mid.pop(mid, None)

    def oldest(self) -> float | None:
        """When the longest-waiting message in flight was sent; None when nothing is in flight."""
        return next(iter(self._by_mid.values()))[1] if self._by_mid else None

    def reset(self) -> None:
        """The connection or the spool changed: nothing is in flight any more; resend from the oldest."""
        self._by_mid.clear()
        self.cursor = {}


class _Retained:
    """Latest payload per retained topic and which ones still need publishing (thread-safe)."""

    def __init__(self, topics: tuple[str, ...]) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, bytes | None] = dict.fromkeys(topics)  # publish order on connect
        self._dirty: set[str] = set()

    def set(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self._values[topic] = payload
            self._dirty.add(topic)

    def mark_all(self) -> None:
        with self._lock:
            self._dirty = {topic for topic, value in self._values.items() if value is not None}

    def take_dirty(self) -> list[tuple[str, bytes]]:
        with self._lock:
            due = [(t, v) for t, v in self._values.items() if t in self._dirty and v is not None]
            self._dirty.clear()
            return due


class MqttPublisher:
    """Publishes one device's outbox and retained topics to one broker (see the module docstring)."""

    def __init__(
        self,
        config: MqttSection,
        device_id: str,
        outbox: Outbox | Spool,
        status: StatusBoard,
        *,
        client_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        device_name: str = "",
    ) -> None:
        self.config = config
        self.device_id = device_id
        self.device_name = device_name  # Home Assistant's name for the device; empty: "Movement <id>"
        self.topics = Topics.for_device(config, device_id)
        self.client_id = client_id or f"movement-edge-{device_id}"
        self.broker = f"{config.host}:{config.port}"
        self._outbox = outbox if isinstance(outbox, Spool) else Spool.around(outbox, status)
        self._status = status
        self._clock = clock
        self._ack_timeout_s = ack_timeout_s
        self._stalled = ""  # why the last connection was given up by us, until an ack arrives again
        self._link = _Link()
        self._inflight = _InFlight(IN_FLIGHT)
        self._retained = _Retained((self.topics.model_state, self.topics.state, self.topics.activity))
        self._acked: queue.SimpleQueue[int] = queue.SimpleQueue()  # PUBACKed mids, from paho's thread
        self._generation = (0, 0)  # the link's and the spool's generations the worker last acted on
        self._wake = threading.Event()
        self._closing = threading.Event()  # stop() was called: flush, announce nothing
        self._drained = threading.Event()  # closing, and the outbox is empty or cannot be sent
        self._halt = threading.Event()  # the worker's stop flag
        self._worker = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._lifecycle = threading.Lock()
        self._started = self._stopped = False
        self._handlers: dict[str, Callable[[str, bytes], None]] = {}  # subscribed topic -> consumer
        self._handlers_lock = threading.Lock()
        self._client = self._make_client() if config.enabled else None

    def topic(self, name: str) -> str:
        """``<prefix>/<device_id>/<name>``, e.g. ``topic("classification")`` for outbox rows."""
        return self.topics(name)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect in the background and start the worker; never blocks, never raises for a down broker.

        paho retries with its reconnect backoff (:data:`RECONNECT_DELAY_S`) for as long as it takes;
        meanwhile classifications wait in the outbox. A publisher runs once: after :meth:`stop`,
        build a new one.
        """
        with self._lifecycle:
            if self._started or self._stopped:
                return
            self._started = True
        if self._client is None:
            self._status.set_mqtt(False, False, self.broker, "disabled")
            return
        self._set_link(False, "connecting")
        self._client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        self._client.loop_start()
        self._worker.start()
        log.info("mqtt starting", extra={"broker": self.broker, "client_id": self.client_id})

    def stop(self, timeout: float = 5.0) -> None:
        """Flush, publish ``stopped``, disconnect; all within about ``timeout`` seconds (idempotent).

        While connected, the worker keeps sending until every stored row is acknowledged (the
        pipeline has stopped by now, so this ends), then ``stopped`` goes out as the last word.
        Whatever is still unacknowledged at the deadline stays in the outbox for the next start.
        """
        with self._lifecycle:
            if self._stopped:
                return
            self._stopped = True
            started = self._started
        if not started or self._client is None:
            return
        deadline = self._clock() + timeout
        self._closing.set()
        self._wake.set()
        self._drained.wait(max(0.0, deadline - self._clock()))
        if self._link.state()[0]:
            info = self._client.publish(self.topics.availability, b"stopped", qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.1, deadline - self._clock()))
            except RuntimeError:  # the connection went away meanwhile: the will says offline instead
                log.warning("mqtt stop: 'stopped' not acknowledged", extra={"broker": self.broker})
        self._halt.set()
        self._wake.set()
        self._worker.join(max(1.0, deadline - self._clock()))
        self._client.disconnect()
        self._client.loop_stop()
        self._set_link(False, "stopped")
        self._status.set_outbox(self._outbox.depth, self._outbox.dropped)
        log.info("mqtt stopped", extra={"broker": self.broker, "unacknowledged": self._outbox.depth})

    # ------------------------------------------------------------------ producers' interface

    def notify(self) -> None:
        """New rows are in the outbox: wake the worker (cheap; safe from any thread)."""
        self._wake.set()

    def set_state(self, payload: Mapping[str, Any]) -> None:
        """The retained ``state``: latest classification and ``person_present``; sent now if connected.

        Like every payload here it must be valid JSON (``ValueError`` for NaN, ``TypeError`` otherwise).
        """
        self._retained.set(self.topics.state, _json(payload))
        self._wake.set()

    def set_model_state(self, payload: Mapping[str, Any]) -> None:
        """The retained ``model/state``: id, version, sha256, status; sent now if connected."""
        self._retained.set(self.topics.model_state, _json(payload))
        self._wake.set()

    def set_activity(self, payload: Mapping[str, Any]) -> None:
        """The retained ``activity``: the person's current activity, set, repetitions, hold time."""
        self._retained.set(self.topics.activity, _json(payload))
        self._wake.set()

    def subscribe(self, topics: Sequence[str], handler: Callable[[str, bytes], None]) -> None:
        """Receive ``topics`` (exact names, QoS 1) now and after every reconnect.

        ``handler(topic, payload)`` runs on paho's network thread: it must only hand the message
        to a thread of its own, never do the work there (keepalives would stall).
        """
        with self._handlers_lock:
            self._handlers.update(dict.fromkeys(topics, handler))
        if self._client is not None and self._link.state()[0]:
            self._client.subscribe([(topic, 1) for topic in topics])

    # ------------------------------------------------------------------ paho's thread

    def _make_client(self) -> mqtt.Client:
        config = self.config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True, protocol=mqtt.MQTTv311
        )
        client.max_inflight_messages_set(IN_FLIGHT + 10)  # our window governs; room for retained topics
        client.reconnect_delay_set(*RECONNECT_DELAY_S)
        client.will_set(self.topics.availability, "offline", qos=1, retain=True)
        if config.username:
            client.username_pw_set(config.username, config.password)
        if config.tls is not None:
            configure_tls(client, config.tls)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    @_guarded
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            self._set_link(False, f"connection refused: {str(reason).lower()}")
            return
        # paho would resend its copies of messages unacknowledged on the old connection; the worker
        # resends them from the outbox in order, so those copies would only be extra duplicates.
        client.drop_out_messages()
        self._set_link(True, f"reconnected; before: {self._stalled}" if self._stalled else "")
        # After the link is marked up, so a subscribe() racing this sees it up or is seen here.
        with self._handlers_lock:
            topics = list(self._handlers)
        if topics:  # a clean session: the broker forgot them, and sends their retained messages again
            client.subscribe([(topic, 1) for topic in topics])

    @_guarded
    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._handlers_lock:
            handler = self._handlers.get(message.topic)
        if handler is not None:
            handler(message.topic, bytes(message.payload))

    @_guarded
    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._set_link(False, "broker unreachable")

    @_guarded
    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        connected, _ = self._link.state()
        if self._closing.is_set():
            self._set_link(False, "stopping")
        elif connected:  # after a refusal paho reports a disconnect too; keep the refusal as the detail
            self._set_link(False, f"connection lost: {str(reason).lower()}")

    @_guarded
    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:  # MQTT 5 only; the row stays and is resent after the next reconnect
            log.warning("mqtt publish refused", extra={"mid": mid, "reason": str(reason)})
            return
        self._acked.put(mid)
        self._wake.set()

    def _set_link(self, connected: bool, detail: str) -> None:
        if self._link.set(connected, detail):
            self._status.set_mqtt(True, connected, self.broker, detail)
            level = (
                logging.INFO
                if connected or detail in ("connecting", "stopping", "stopped")
                else logging.WARNING
            )
            log.log(
                level,
                "mqtt connected" if connected else "mqtt not connected",
                extra={"broker": self.broker, "detail": detail},
            )
        self._wake.set()

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        interval = self.config.stats_interval_s
        next_stats = self._clock() + interval
        while not self._halt.is_set():
            self._wake.wait(min(_WAKE_S, max(0.0, next_stats - self._clock())))
            self._wake.clear()
            try:
                self._step()
                if self._clock() >= next_stats:
                    next_stats = self._clock() + interval
                    self._publish_stats()
            except Exception:
                log.exception("mqtt publisher step failed; retrying")
                self._halt.wait(_WAKE_S)
        self._settle()

    def _step(self) -> None:
        """One pass: acknowledge, react to a new connection, send what is due, report the outbox."""
        connected, link = self._link.state()  # read first: every PUBACK of older links is queued
        self._settle()
        generation = (link, self._outbox.generation)
        if generation != self._generation:
            reconnected = link != self._generation[0]
            self._generation = generation
            self._inflight.reset()
            if reconnected and connected and not self._closing.is_set():
                self._announce()
        if connected and not self._stall():
            for topic, payload in self._retained.take_dirty():
                self._publish(topic, payload, qos=1, retain=True)
            self._fill()
        if self._closing.is_set() and (not connected or self._outbox.sendable == 0):
            self._drained.set()
        self._status.set_outbox(self._outbox.depth, self._outbox.dropped)

    def _settle(self) -> None:
        """Delete the rows whose PUBACK arrived, in one transaction."""
        now = self._clock()
        acked = []
        while not self._acked.empty():  # the worker is the only consumer
            entry = self._inflight.settle(self._acked.get_nowait())
            if entry is not None:
                key, sent_at = entry
                acked.append(key)
                self._status.record_stage("publish", now - sent_at)
        if acked:
            self._outbox.ack(*acked)
            if self._stalled:  # the broker acknowledges again: the stall is history
                self._stalled = ""
                self._set_link(True, "")

    def _stall(self) -> bool:
        """Give the connection up when the oldest message in flight waited too long for its PUBACK.

        Shutting the socket down (rather than ``disconnect()``, which would end paho's loop) makes
        paho see a lost connection and reconnect with its backoff; the new connection resends.
        """
        sent_at = self._inflight.oldest()
        if sent_at is None or self._clock() - sent_at < self._ack_timeout_s:
            return False
        self._stalled = f"no acknowledgement from the broker for {self._ack_timeout_s:g} s"
        self._status.count("mqtt_ack_timeouts")
        self._set_link(False, f"{self._stalled}; reconnecting")
        assert self._client is not None  # the worker runs only with a client
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return True

    def _announce(self) -> None:
        """After every successful connect: ``online``, discovery, then the retained values."""
        self._publish(self.topics.availability, b"online", qos=1, retain=True)
        if self.config.discovery:
            self._publish(
                self.topics.discovery,
                _json(discovery_payload(self.topics, self.device_id, self.device_name)),
                qos=1,
                retain=True,
            )
        self._retained.mark_all()

    def _fill(self) -> None:
        """Send outbox rows after the cursor, in seq order, until the in-flight window is full."""
        room = self._inflight.room()
        if room <= 0:
            return
        for message in self._outbox.pending(after=self._inflight.cursor, limit=room):
            info = self._publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # the connection just went; the next connect resends from the oldest row
            self._inflight.add(info.mid, message.key, self._clock())

    def _publish_stats(self) -> None:
        if not self._link.state()[0]:
            return
        self._status.set_outbox(self._outbox.depth, self._outbox.dropped)
        payload = stats_payload(self._status.snapshot(), read_cpu_temp())
        self._publish(self.topics.stats, _json(payload), qos=0, retain=False)

    def _publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> mqtt.MQTTMessageInfo:
        assert self._client is not None  # the worker runs only with a client
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("mqtt publish failed", extra={"topic": topic, "rc": mqtt.error_string(info.rc)})
        return info


def configure_tls(client: mqtt.Client, tls: TlsSection) -> None:
    """Certificates from the config; a missing or unreadable file fails at build time, not later."""
    try:
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
        )
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"mqtt.tls: cannot load certificates ({exc})") from exc
    if tls.insecure:
        client.tls_insecure_set(True)
