"""Hostile HTTP clients against a real daemon: bad headers and bodies, huge uploads, slow clients.

One real daemon (real MediaPipe on ``dance.mp4`` looping at its own pace, the trained pose model,
a bearer token, a 1 MB upload limit) serves on 127.0.0.1 while requests are written byte for byte
on raw sockets, so nothing a client library would tidy up is tidied up. Every answer must be a
4xx with a JSON ``{"error": …}`` (never a 500, never a traceback), and afterwards the daemon must
still be up and classifying with its model unchanged. Slow clients (byte-by-byte headers and
bodies, idle connections, one address opening more connections than it may) must not stop
``/healthz`` answering for others. The daemon subscribes to no MQTT topic (``device/publisher.py``
only publishes), so there is no MQTT payload to attack.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import PoseBundle, eventually
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_daemon import device_config

from device.config import parse_config
from device.daemon import Daemon, build
from device.status import StatusBoard
from device.web import ConnectionLimits, WebServer, create_app

TOKEN = "hostile-kiosk-token"
UPLOAD_MB = 1
LIMIT = UPLOAD_MB * 1024 * 1024
OTHER_CLIENT = "127.0.0.2"  # also this machine, but another address than the attackers' 127.0.0.1
HTTP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> str:
        """The JSON error message; fails unless the answer is one."""
        assert self.headers.get("content-type", "").startswith("application/json"), self
        message = json.loads(self.body)["error"]
        assert isinstance(message, str) and message and "Traceback" not in message
        return message


def connect(port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def read_answer(sock: socket.socket) -> Answer | None:
    """The response on ``sock`` up to its Content-Length (None when closed without one)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if b"\r\n\r\n" not in data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Answer(int(lines[0].split()[1]), headers, body)


def raw(port: int, request: bytes, source: str = "127.0.0.1", timeout: float = 10.0) -> Answer | None:
    """Send ``request`` exactly as given and read one answer."""
    with connect(port, source, timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused before all was sent
            sock.sendall(request)
        return read_answer(sock)


def request(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def get(port: int, path: str, source: str = "127.0.0.1") -> Answer:
    answer = raw(port, request("GET", path), source)
    assert answer is not None, f"no answer to GET {path}"
    return answer


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def hostile_kiosk(work: Path, model: PoseBundle, data_dir: Path) -> Iterator[Daemon]:
    """A real daemon classifying a looping real video, model 1.0.0, token set, 1 MB upload limit."""
    video = data_dir / "videos" / "dance.mp4"
    config = device_config(work, model, video, 1883, pace="realtime", loop=True)
    config["mqtt"] = {"enabled": False}
    config["http"] = {"port": 0, "token": TOKEN, "max_upload_mb": UPLOAD_MB}
    daemon = build(parse_config(config, env={}))
    daemon.start()
    try:
        eventually(lambda: get(daemon.http_port, "/healthz").status == 200, 60, "a healthy kiosk")
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def kiosk(
    tmp_path_factory: pytest.TempPathFactory, pose_model: PoseBundle, data_dir: Path
) -> Iterator[Daemon]:
    yield from hostile_kiosk(tmp_path_factory.mktemp("hostile-kiosk"), pose_model, data_dir)


def classifications(daemon: Daemon) -> int:
    return json.loads(get(daemon.http_port, "/api/status").body)["counters"]["classifications"]


def still_serving(daemon: Daemon) -> None:
    """Up, healthy, on model 1.0.0, and classifying: the counter moves on."""
    before = classifications(daemon)
    eventually(lambda: classifications(daemon) > before + 2, 20, "more classifications")
    assert get(daemon.http_port, "/healthz").status == 200
    assert json.loads(get(daemon.http_port, "/api/status").body)["model"]["version"] == "1.0.0"


# --------------------------------------------------------------------------- headers and bodies

HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
)


@HTTP
@given(
    value=st.one_of(
        HEADER_TEXT,
        st.sampled_from(
            ["Bearer", "Bearer ", "bearer", "Basic " + TOKEN, TOKEN, f"Bearer {TOKEN}x", "Bearer \t"]
        ),
        HEADER_TEXT.map(lambda t: f"Bearer {t}"),
        st.sampled_from([f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} "]),
    )
)
def test_authorization_header_variants(kiosk: Daemon, value: str) -> None:
    """Only the token, after a case-insensitive Bearer, passes; then the unknown version is a 422."""
    answer = raw(kiosk.http_port, request("POST", "/api/models/9.9.9/activate", {"Authorization": value}))
    assert answer is not None
    scheme, _, token = value.partition(" ")
    valid = scheme.lower() == "bearer" and token.strip() == TOKEN
    assert answer.status == (422 if valid else 401), (value, answer)
    message = answer.error()
    assert "Traceback" not in message and TOKEN not in message
    if not valid:
        assert answer.headers["www-authenticate"].startswith("Bearer")


CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            "application/zip",
            "application/octet-stream",
            "multipart/form-data",
            "multipart/form-data; boundary=x",
            "multipart/form-data; boundary=",
            'multipart/form-data; boundary="unterminated',
            "application/x-www-form-urlencoded",
            "application/json; charset=utf-16",
            "text/plain; charset=nonsense",
            "",
        ]
    ),
    HEADER_TEXT,
)


@st.composite
def multipart_bodies(draw: st.DrawFn) -> bytes:
    """Multipart that is almost right: a boundary of ``x``, parts with and without the bundle field."""
    name = draw(st.sampled_from(["bundle", "file", "", '"bundle']))
    payload = draw(st.binary(max_size=200))
    parts = [
        b"--x\r\n",
        f'Content-Disposition: form-data; name="{name}"; filename="m.zip"\r\n\r\n'.encode(),
        payload,
        draw(st.sampled_from([b"\r\n--x--\r\n", b"\r\n--x", b"", b"--x--"])),
    ]
    return b"".join(parts[: draw(st.integers(1, len(parts)))])


@HTTP
@given(content_type=CONTENT_TYPES, body=st.one_of(st.binary(max_size=300), multipart_bodies()))
def test_upload_bodies_and_content_types_are_refused_with_a_json_error(
    kiosk: Daemon, content_type: str, body: bytes
) -> None:
    headers = {**AUTH, "Content-Type": content_type}
    answer = raw(kiosk.http_port, request("POST", "/api/models", headers, body))
    assert answer is not None and answer.status in (400, 413, 415, 422), answer
    answer.error()


@HTTP
@given(version=st.text(max_size=30), force=st.one_of(st.none(), HEADER_TEXT))
def test_activate_path_parameters(kiosk: Daemon, version: str, force: str | None) -> None:
    path = f"/api/models/{urllib.parse.quote(version, safe='')}/activate"
    if force is not None:
        path += "?force=" + urllib.parse.quote(force, safe="")
    answer = raw(kiosk.http_port, request("POST", path, AUTH))
    assert answer is not None, version
    if answer.status == 200:  # "1", "1.0", "01.0.0" … name the active version: nothing to change
        assert json.loads(answer.body)["version"] == "1.0.0", (version, answer)
        return
    assert 400 <= answer.status < 500, (version, answer)
    if answer.status == 422:
        assert answer.error().startswith(("activate: version", "verify:", "compatibility:")), answer
    else:
        answer.error()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=100).map(lambda b: b"GET /api/status HTTP/1.1\r\n" + b + b"\r\n\r\n"),
        st.binary(max_size=60).map(
            lambda b: b"POST /api/models HTTP/1.1\r\nContent-Length: " + b + b"\r\n\r\n"
        ),
        st.binary(max_size=60).map(
            lambda b: b"POST /api/models HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b
            + b"\r\n0\r\n\r\n"
        ),
    )
)
def test_garbage_requests_get_a_4xx_or_a_closed_connection(kiosk: Daemon, data: bytes) -> None:
    try:
        answer = raw(kiosk.http_port, data + b"\r\n\r\n", timeout=3)
    except TimeoutError:
        return  # a request still incomplete (a body it announced): the server waits, within its grace
    if answer is not None:
        assert answer.status < 500, answer
        if answer.status >= 400 and answer.headers.get("content-type", "").startswith("application/json"):
            answer.error()


def test_after_all_of_that_the_daemon_still_classifies(kiosk: Daemon) -> None:
    still_serving(kiosk)


# --------------------------------------------------------------------------- large uploads


@pytest.mark.parametrize("declared", [LIMIT + 1, 10 * 2**30, 2**63])
def test_an_upload_over_the_limit_is_refused_from_its_headers(kiosk: Daemon, declared: int) -> None:
    """413 as JSON while not one byte of the body has been sent: nothing was read, buffered or spooled."""
    head = request("POST", "/api/models", {**AUTH, "Content-Type": "application/zip"})
    head = head.replace(b"Content-Length: 0", f"Content-Length: {declared}".encode())
    with connect(kiosk.http_port) as sock:
        sock.sendall(head)
        answer = read_answer(sock)
    assert answer is not None and answer.status == 413
    assert "exceeds" in answer.error()
    still_serving(kiosk)


def test_a_chunked_upload_over_the_limit_is_refused(kiosk: Daemon) -> None:
    head = request("POST", "/api/models", {**AUTH, "Transfer-Encoding": "chunked"}).replace(
        b"Content-Length: 0\r\n", b""
    )
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, bytes(64 * 1024))
    with connect(kiosk.http_port) as sock:
        sock.sendall(head)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the server may close first
            for _ in range(LIMIT // len(chunk) + 4):  # a little over the limit, never the last chunk
                sock.sendall(chunk)
        answer = read_answer(sock)
    assert answer is not None and answer.status == 413, answer
    answer.error()
    still_serving(kiosk)


def test_content_length_that_is_not_a_number_is_a_400(kiosk: Daemon) -> None:
    for value in ("-1", "abc", "1e9", "0x10", "1, 2"):
        head = request("POST", "/api/models", AUTH).replace(
            b"Content-Length: 0", f"Content-Length: {value}".encode()
        )
        answer = raw(kiosk.http_port, head)
        assert answer is not None and answer.status == 400, (value, answer)
        answer.error()


# --------------------------------------------------------------------------- slow clients


def dribble(sockets: list[socket.socket], data: bytes, position: int) -> None:
    """Send byte ``position`` of ``data`` on every socket (one step of a byte-by-byte client)."""
    for sock in sockets:
        if position < len(data):
            with contextlib.suppress(OSError):
                sock.send(data[position : position + 1])


def test_byte_by_byte_and_idle_clients_do_not_starve_health_checks_or_the_pipeline(kiosk: Daemon) -> None:
    """Three times as many slow connections as the server has worker threads, from the same address."""
    slow_headers = request("GET", "/api/status")
    slow_body = request("POST", "/api/models", {**AUTH, "Content-Type": "application/zip"}, b"x" * 200)
    with contextlib.ExitStack() as stack:
        headers = [stack.enter_context(connect(kiosk.http_port)) for _ in range(8)]
        bodies = [stack.enter_context(connect(kiosk.http_port)) for _ in range(8)]
        idle = [stack.enter_context(connect(kiosk.http_port)) for _ in range(8)]
        before = classifications(kiosk)
        for position in range(40):  # a few seconds of dribbling, with health checks in between
            dribble(headers, slow_headers, position)
            dribble(bodies, slow_body, position)
            if position % 8 == 0:
                assert get(kiosk.http_port, "/healthz").status == 200
            time.sleep(0.05)
        assert classifications(kiosk) > before
        assert all(s.fileno() != -1 for s in idle)
    still_serving(kiosk)


def test_one_address_cannot_take_every_connection(kiosk: Daemon) -> None:
    """Beyond its share an address is turned away at once; others are still served.

    114 connections: more than waitress's default limit of 100, at which it stopped accepting
    anyone's (this test hung on ``/healthz`` before the per-client share).
    """
    share = ConnectionLimits().per_client
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(connect(kiosk.http_port)) for _ in range(share + 50)]
        for sock in held:
            sock.setblocking(False)
        closed: set[int] = set()

        def turned_away() -> bool:
            for index, sock in enumerate(held):
                with contextlib.suppress(BlockingIOError):  # still open: nothing to read
                    if index not in closed and sock.recv(1) == b"":  # closed by the server without a word
                        closed.add(index)
            return len(closed) >= 50

        eventually(turned_away, 10, "the connections beyond the share closed")
        assert get(kiosk.http_port, "/healthz", source=OTHER_CLIENT).status == 200

    def served_again() -> bool:
        answer = raw(kiosk.http_port, request("GET", "/healthz"))
        return answer is not None and answer.status == 200

    eventually(served_again, 10, "the address served again once its connections are gone")


@pytest.fixture
def guarded_server() -> Iterator[Callable[[ConnectionLimits], WebServer]]:
    """A bare web server with chosen limits (the daemon's are fixed), stopped afterwards."""
    started: list[WebServer] = []

    def start(limits: ConnectionLimits) -> WebServer:
        token_sha256 = hashlib.sha256(TOKEN.encode()).hexdigest()
        server = WebServer(
            create_app(StatusBoard("guarded"), token_sha256=token_sha256), "127.0.0.1", 0, limits=limits
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def closed_by_server(sock: socket.socket, keep_sending: bytes, timeout: float) -> bool:
    """Keep dribbling ``keep_sending`` until the server closes the connection (bounded)."""
    deadline = time.monotonic() + timeout
    sock.settimeout(0.1)
    position = 0
    while time.monotonic() < deadline:
        try:
            if sock.recv(1) == b"":
                return True
        except TimeoutError:
            pass
        except ConnectionResetError:
            return True
        with contextlib.suppress(OSError):
            sock.send(keep_sending[position % len(keep_sending) : position % len(keep_sending) + 1])
        position += 1
        time.sleep(0.1)
    return False


@pytest.mark.parametrize(
    "slow",
    [
        b"GET /api/status HTTP/1.1\r\nX-Slow: " + b"a" * 10_000,
        b"POST /api/models HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"b" * 100_000,
    ],
    ids=["headers", "body"],
)
def test_a_request_that_dribbles_in_is_closed_after_its_grace(
    guarded_server: Callable[[ConnectionLimits], WebServer], slow: bytes
) -> None:
    server = guarded_server(ConnectionLimits(grace_s=1.0, min_rate=1000.0))
    with connect(server.port) as sock:
        assert closed_by_server(sock, slow, timeout=15)
    assert get(server.port, "/api/status").status == 200


def test_a_steady_request_is_not_cut_off(guarded_server: Callable[[ConnectionLimits], WebServer]) -> None:
    """Bytes buy time: a body arriving well above the minimum rate takes longer than the grace, and passes."""
    server = guarded_server(ConnectionLimits(grace_s=0.5, min_rate=1000.0))
    body = b"x" * 20_000  # 20 s at the minimum rate; sent at about 10x that
    head = request("POST", "/api/models", {**AUTH, "Content-Type": "application/zip"}, body)
    with connect(server.port) as sock:
        for start in range(0, len(head), 1000):
            sock.sendall(head[start : start + 1000])
            time.sleep(0.1)
        answer = read_answer(sock)
    assert answer is not None and answer.status == 501  # reached the app: this bare server has no model store
    answer.error()


def test_waitress_refusals_are_json_too(guarded_server: Callable[[ConnectionLimits], WebServer]) -> None:
    server = guarded_server(ConnectionLimits())
    answer = raw(server.port, b"GET /api/status HTTP/1.1\r\nBad Header Line\r\n\r\n")
    assert answer is not None and answer.status == 400
    assert answer.error().startswith("Bad Request")
