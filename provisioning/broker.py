"""The workstation's connection to the fleet's MQTT broker, for ``release``, ``promote`` and ``rollout``.

Where the broker is comes from the options, or from a file with an ``[mqtt]`` table written as in a
kiosk's config (``--mqtt-config``: host, port, prefix, username, tls …), so the workstation can reuse
what the kiosks use; ``--broker HOST:PORT`` and ``--prefix`` override it. The password comes from
``$MOVEMENT_EDGE_MQTT_PASSWORD``, never from the command line.

Only the options are declared at import time: paho and pydantic are imported when a command runs.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device.cli import UsageError

if TYPE_CHECKING:
    from device.config import MqttSection

PASSWORD_ENV = "MOVEMENT_EDGE_MQTT_PASSWORD"
CONNECT_TIMEOUT_S = 10.0


class BrokerUnavailable(Exception):
    """The broker could not be reached, refused the connection or did not acknowledge in time."""


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("broker")
    group.add_argument(
        "--mqtt-config",
        type=Path,
        metavar="FILE",
        help="a TOML file whose [mqtt] table says where the broker is (a kiosk's config will do)",
    )
    group.add_argument("--broker", metavar="HOST:PORT", help="the broker (default 127.0.0.1:1883)")
    group.add_argument("--prefix", help="topic prefix of the fleet (default movement)")
    group.add_argument("--username", help=f"broker user; the password comes from ${PASSWORD_ENV}")


def broker_settings(args: argparse.Namespace) -> MqttSection:
    """The ``[mqtt]`` settings the options and ``--mqtt-config`` give; a usage error names the key."""
    from pydantic import ValidationError

    from device.config import MqttSection
    from device.documents import read_document

    table: dict[str, Any] = {}
    if args.mqtt_config is not None:
        document = read_document(args.mqtt_config, "TOML", UsageError)
        table = dict(document.get("mqtt", {})) if isinstance(document, dict) else {}
        if not table:
            raise UsageError(f"{args.mqtt_config}: no [mqtt] table")
        base = args.mqtt_config.resolve().parent
        tls = table.get("tls")
        if isinstance(tls, dict):  # relative paths are relative to the file, as in a kiosk's config
            table["tls"] = {
                k: str(base / v) if k.endswith("_file") and isinstance(v, str) else v for k, v in tls.items()
            }
    if args.broker is not None:
        host, _, port = args.broker.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--broker {args.broker}: expected HOST:PORT, such as mqtt.example.org:8883")
        table.update(host=host.strip("[]"), port=int(port))
    for key in ("prefix", "username"):
        if getattr(args, key) is not None:
            table[key] = getattr(args, key)
    if os.environ.get(PASSWORD_ENV):
        table["password"] = os.environ[PASSWORD_ENV]
    table["enabled"] = True
    try:
        return MqttSection.model_validate(table)
    except ValidationError as exc:
        where = str(args.mqtt_config) if args.mqtt_config is not None else "broker options"
        problems = "; ".join(
            f"mqtt.{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise UsageError(f"{where}: {problems}") from None


class BrokerClient:
    """One short-lived paho client: connect, publish retained and wait for the PUBACK, read retained."""

    def __init__(self, settings: MqttSection, role: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from device.publisher import configure_tls

        self.settings = settings
        self.broker = f"{settings.host}:{settings.port}"
        self._connected = threading.Event()
        self._refused: str | None = None
        self._lock = threading.Lock()
        self._received: dict[str, bytes] = {}
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"movement-edge-{role}-{uuid.uuid4().hex[:8]}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        if settings.username:
            self._client.username_pw_set(settings.username, settings.password)
        if settings.tls is not None:
            try:
                configure_tls(self._client, settings.tls)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.on_message = self._on_message

    def __enter__(self) -> BrokerClient:
        try:
            self._client.connect(self.settings.host, self.settings.port, keepalive=30)
        except OSError as exc:
            raise BrokerUnavailable(f"broker {self.broker}: {exc.strerror or exc}") from None
        self._client.loop_start()
        if not self._connected.wait(CONNECT_TIMEOUT_S) or self._refused:
            self.close()
            raise BrokerUnavailable(f"broker {self.broker}: {self._refused or 'no answer to CONNECT'}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refused = f"connection refused: {str(reason).lower()}"
        self._connected.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            if message.payload:  # an empty retained message clears a topic
                self._received[message.topic] = bytes(message.payload)
            else:
                self._received.pop(message.topic, None)

    def topic(self, *parts: str) -> str:
        return "/".join((self.settings.prefix, *parts))

    def publish_retained(self, topic: str, payload: bytes, timeout_s: float = 30.0) -> None:
        """Publish retained at QoS 1 and return once the broker acknowledged it."""
        info = self._client.publish(topic, payload, qos=1, retain=True)
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise BrokerUnavailable(f"broker {self.broker}: {topic} not published ({exc})") from None
        if not info.is_published():
            raise BrokerUnavailable(
                f"broker {self.broker}: no acknowledgement for {topic} within {timeout_s:g} s"
            )

    def retained(self, topics: list[str], wait_s: float) -> dict[str, bytes]:
        """The retained messages on ``topics`` (wildcards allowed), as read within ``wait_s`` seconds.

        The broker sends them right after the subscription; the whole wait is spent reading, so
        the answer does not depend on how quickly this machine takes them in.
        """
        self._subscribed.clear()
        self._client.subscribe([(topic, 1) for topic in topics])
        if not self._subscribed.wait(max(wait_s, CONNECT_TIMEOUT_S)):
            raise BrokerUnavailable(f"broker {self.broker}: no acknowledgement of the subscription")
        time.sleep(wait_s)
        with self._lock:
            return dict(self._received)
