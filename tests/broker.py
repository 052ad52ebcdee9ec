"""A real mosquitto for tests, and a subscriber that records what it receives.

``Mosquitto`` runs the Debian broker in the foreground on a loopback port with a config file of
its own (nothing from /etc is read), so tests exercise the real protocol: QoS 1 acknowledgements,
retained messages, last wills, refused connections, restarts. It can be stopped and started again
on the same port (what a broker restart looks like to a client); with ``persistence=True`` its
sessions and queued messages survive such a restart, as they do on a production broker.

``Subscriber`` is a paho client on its own network thread that keeps every message per topic and
lets a test wait, with a timeout, until enough have arrived::

    with Mosquitto() as broker, Subscriber(broker.port, "movement/#") as sub:
        ...
        sub.wait_for("movement/kiosk/classification", count=3, timeout=10)
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

HOST = "127.0.0.1"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class Mosquitto:
    """One mosquitto process on ``127.0.0.1:port``; a context manager that always stops it.

    ``port``: given, so a test can make a client wait for a broker that is not there yet, or
    picked free. ``allow_anonymous=False`` refuses clients without credentials; ``users`` (name →
    password) become its password file. ``persistence=True`` keeps sessions across ``restart()``.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        allow_anonymous: bool = True,
        users: Mapping[str, str] | None = None,
        persistence: bool = False,
        start_timeout: float = 10.0,
    ) -> None:
        executable = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(executable).exists():
            raise RuntimeError("mosquitto is not installed (make system installs it)")
        self.executable = executable
        self.port = port or free_port()
        self.allow_anonymous = allow_anonymous
        self.users = dict(users or {})
        self.persistence = persistence
        self.start_timeout = start_timeout
        self._dir = tempfile.TemporaryDirectory(prefix="mosquitto-")
        self.folder = Path(self._dir.name)
        self.log_path = self.folder / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        """Write the config, start the broker and return once the port accepts connections."""
        if self._process is not None and self._process.poll() is None:
            raise RuntimeError(f"mosquitto already runs on port {self.port}")
        config = self.folder / "mosquitto.conf"
        lines = [
            f"listener {self.port} {HOST}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            # Run as whoever runs the tests: as root, mosquitto would otherwise switch to the
            # "mosquitto" user, which cannot write the persistence file into our folder.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "log_dest stderr",
            "log_type all",
        ]
        if self.users:
            lines.append(f"password_file {self._password_file()}")
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.folder}/"]
        else:
            lines.append("persistence false")
        config.write_text("\n".join(lines) + "\n")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.executable, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                socket.create_connection((HOST, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"mosquitto did not accept connections within {self.start_timeout} s:\n{self.log_tail()}"
        )

    def _password_file(self) -> Path:
        """``users`` hashed by ``mosquitto_passwd``, as the broker expects them."""
        path = self.folder / "passwords"
        path.write_text("")
        for user, password in self.users.items():
            subprocess.run(
                ["mosquitto_passwd", "-b", str(path), user, password], check=True, capture_output=True
            )
        path.chmod(0o600)
        return path

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate (SIGTERM: a clean shutdown that saves persistence), kill after ``timeout``."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def restart(self) -> Mosquitto:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 30) -> str:
        """The end of the broker's log, for assertion messages."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()


@dataclass(frozen=True)
class Received:
    """One message as the subscriber saw it; ``retain`` is True for a retained value replayed on subscribe."""

    topic: str
    payload: bytes
    qos: int
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """Collects every message on ``topics`` per topic, on paho's network thread.

    It resubscribes after every reconnect. With ``persistent=True`` it uses a fixed client id and
    a persistent session (``clean_session=False``, QoS 1), so a broker started with
    ``persistence=True`` keeps queuing its messages while it is disconnected — nothing published
    during a broker restart is missed by the test, as with a durable consumer in production.
    """

    def __init__(
        self,
        port: int,
        topics: str | list[str] = "#",
        *,
        host: str = HOST,
        persistent: bool = False,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.port = port
        self.host = host
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.connect_timeout = connect_timeout
        self._messages: dict[str, list[Received]] = defaultdict(list)
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-sub-{uuid.uuid4().hex[:8]}",
            clean_session=not persistent,
        )
        if username:
            self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(1, 2)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def start(self) -> Subscriber:
        """Connect and return once the broker confirmed the subscriptions."""
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(self.connect_timeout):
            self.close()
            raise TimeoutError(
                f"subscriber: no SUBACK from {self.host}:{self.port} within {self.connect_timeout} s"
            )
        return self

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- reading

    def messages(self, topic: str) -> list[Received]:
        """Everything received on ``topic`` so far, in arrival order."""
        with self._changed:
            return list(self._messages[topic])

    def topics_seen(self) -> list[str]:
        """Every topic at least one message arrived on."""
        with self._changed:
            return sorted(topic for topic, received in self._messages.items() if received)

    def payloads(self, topic: str) -> list[Any]:
        """The JSON-decoded payloads received on ``topic`` so far."""
        return [message.json() for message in self.messages(topic)]

    def wait_for(self, topic: str, count: int = 1, timeout: float = 10.0) -> list[Received]:
        """Wait until ``topic`` has at least ``count`` messages; raise ``TimeoutError`` otherwise."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._messages[topic]) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{topic}: {len(self._messages[topic])} of {count} messages after {timeout} s; "
                        f"topics seen: {sorted(self._messages)}"
                    )
                self._changed.wait(remaining)
            return list(self._messages[topic])

    def wait_until(
        self, topic: str, predicate: Callable[[Received], bool], timeout: float = 10.0
    ) -> Received:
        """Wait for a message on ``topic`` for which ``predicate(message)`` is true; return it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while (match := next((m for m in self._messages[topic] if predicate(m)), None)) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [m.payload for m in self._messages[topic]][-5:]
                    raise TimeoutError(f"{topic}: no matching message after {timeout} s; last seen {seen}")
                self._changed.wait(remaining)
            return match

    # ---------------------------------------------------------------- paho callbacks

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if not reason.is_failure:
            client.subscribe([(topic, 1) for topic in self.topics])

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self._messages[message.topic].append(
                Received(message.topic, bytes(message.payload), message.qos, bool(message.retain))
            )
            self._changed.notify_all()
