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
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import PoseBundle, eventually
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_daemon import device_config
from tls_files import TlsFiles

from device.access import AccessPolicy
from device.config import parse_config
from device.daemon import Daemon, build
from device.http_server import ConnectionLimits, WebServer
from device.sources import VideoFileSource
from device.status import LiveView, StatusBoard
from device.web import STREAMS_EXTENSION, create_app

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


def connect(
    port: int,
    source: str = "127.0.0.1",
    timeout: float = 10.0,
    *,
    tls: TlsFiles | None = None,
    receive_buffer: int | None = None,
) -> socket.socket:
    """A connection to the server on 127.0.0.1 from ``source``; over TLS when given the kiosk's files.

    ``receive_buffer`` shrinks the client's socket buffer, so a client that does not read fills
    the path to it in a few hundred kilobytes instead of megabytes.
    """
    sock = socket.socket()
    try:
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        return sock if tls is None else tls.wrap(sock)
    except BaseException:
        sock.close()
        raise


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


def raw(
    port: int, request: bytes, source: str = "127.0.0.1", timeout: float = 10.0, tls: TlsFiles | None = None
) -> Answer | None:
    """Send ``request`` exactly as given and read one answer."""
    with connect(port, source, timeout, tls=tls) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused before all was sent
            sock.sendall(request)
        return read_answer(sock)


def request(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def get(port: int, path: str, source: str = "127.0.0.1", tls: TlsFiles | None = None) -> Answer:
    answer = raw(port, request("GET", path), source, tls=tls)
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


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles.make(tmp_path_factory.mktemp("tls"))


GuardedServer = Callable[..., WebServer]


@pytest.fixture
def guarded_server() -> Iterator[GuardedServer]:
    """A bare web server with chosen limits (the daemon's are fixed), HTTPS with ``tls``; stopped after."""
    started: list[WebServer] = []

    def start(
        limits: ConnectionLimits, tls: TlsFiles | None = None, status: StatusBoard | None = None
    ) -> WebServer:
        policy = AccessPolicy(device_sha256=hashlib.sha256(TOKEN.encode()).hexdigest())
        server = WebServer(
            create_app(status or StatusBoard("guarded"), access_policy=policy),
            "127.0.0.1",
            0,
            limits=limits,
            tls=None if tls is None else tls.server(),
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(params=[False, True], ids=["http", "https"])
def transport(request: pytest.FixtureRequest, tls_files: TlsFiles) -> TlsFiles | None:
    """Each protection holds over plain HTTP and over TLS alike."""
    return tls_files if request.param else None


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
    guarded_server: GuardedServer, transport: TlsFiles | None, slow: bytes
) -> None:
    server = guarded_server(ConnectionLimits(grace_s=1.0, min_rate=1000.0), transport)
    with connect(server.port, tls=transport) as sock:
        assert closed_by_server(sock, slow, timeout=15)
    assert get(server.port, "/api/status", tls=transport).status == 200


def test_a_steady_request_is_not_cut_off(guarded_server: GuardedServer) -> None:
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


def test_waitress_refusals_are_json_too(guarded_server: GuardedServer, transport: TlsFiles | None) -> None:
    server = guarded_server(ConnectionLimits(), transport)
    answer = raw(server.port, b"GET /api/status HTTP/1.1\r\nBad Header Line\r\n\r\n", tls=transport)
    assert answer is not None and answer.status == 400
    assert answer.error().startswith("Bad Request")


# --------------------------------------------------------------------------- bodies: decided on the headers


def upload_head(size: int, headers: dict[str, str], path: str = "/api/models") -> bytes:
    """The headers of a POST announcing ``size`` bytes of body, none of which is sent."""
    head = request("POST", path, {"Content-Type": "application/zip", **headers})
    return head.replace(b"Content-Length: 0", f"Content-Length: {size}".encode())


def read_head(sock: socket.socket) -> bytes:
    """The status line and headers of the next answer (interim or final), byte by byte: no body is taken."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        assert byte, f"closed after {head!r}"
        head += byte
    return head


@pytest.mark.parametrize("path", ["/api/models", "/api/models/1.0.0/activate", "/api/keys/revocations"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-the-token"}], ids=["none", "wrong"])
def test_a_body_without_the_device_token_is_refused_before_it_is_sent(
    kiosk: Daemon, path: str, headers: dict[str, str]
) -> None:
    """The 401 arrives while the client has sent only the headers of a 1 MB body.

    Before, waitress read and buffered the whole body first, and this read timed out.
    """
    with connect(kiosk.http_port, timeout=5) as sock:
        sock.sendall(upload_head(LIMIT, headers, path))
        answer = read_answer(sock)
    assert answer is not None and answer.status == 401, answer
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in answer.error()


def test_bodies_in_flight_share_a_bounded_budget(kiosk: Daemon) -> None:
    """All bodies in flight may take twice the upload limit (2 MB here). Two 1 MB uploads still
    arriving hold it; a third is told to retry (503) from its headers; once they end, uploads are
    taken again. ``Expect: 100-continue`` shows when the server has taken a body's share.
    """
    head = upload_head(LIMIT, {**AUTH, "Expect": "100-continue"})
    with contextlib.ExitStack() as stack:
        arriving = [stack.enter_context(connect(kiosk.http_port)) for _ in range(2)]
        for sock in arriving:
            sock.sendall(head)
            assert read_head(sock).startswith(b"HTTP/1.1 100 Continue")
        turned_away = raw(kiosk.http_port, head, timeout=5)
        assert turned_away is not None and turned_away.status == 503, turned_away
        assert turned_away.headers["retry-after"] == "5" and "retry" in turned_away.error()
        for sock in arriving:
            sock.sendall(b"x" * LIMIT)
        finished = [read_answer(sock) for sock in arriving]
    # not a bundle: refused by the model store, after the body was read in full
    assert [answer.status if answer else None for answer in finished] == [422, 422]
    with connect(kiosk.http_port) as sock:  # the budget was given back
        sock.sendall(head)
        assert read_head(sock).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"x" * LIMIT)
        again = read_answer(sock)
    assert again is not None and again.status == 422
    print(f"bodies in flight: 2 x {LIMIT} B accepted, the third refused with 503, then accepted again")
    still_serving(kiosk)


# --------------------------------------------------------------------------- clients that do not read


def pipelined(path: str, count: int) -> bytes:
    """``count`` keep-alive GETs of ``path`` in one write, as a pipelining client sends them."""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() * count


def test_clients_that_do_not_read_their_answers_do_not_hold_up_health_checks(kiosk: Daemon) -> None:
    """Four MJPEG viewers and four connections with 200 pipelined ``/frame.jpg`` each, none of them
    reading: eight connections, as many as the server has workers. ``/healthz`` and ``/api/status``
    keep answering; then the write timeout closes the viewers and their workers are free again.

    Before, every worker ended up waiting on one of these clients and ``/healthz`` timed out.
    """
    assert kiosk.web is not None
    port, streams = kiosk.http_port, kiosk.web.app.extensions[STREAMS_EXTENSION]
    checks = 20
    with contextlib.ExitStack() as stack:
        viewers = [stack.enter_context(connect(port, receive_buffer=4096)) for _ in range(4)]
        for sock in viewers:
            sock.sendall(request("GET", "/stream.mjpg"))
        eventually(lambda: streams.active == 4, 10, "four live viewers")
        for _ in range(4):
            stack.enter_context(connect(port, receive_buffer=4096)).sendall(pipelined("/frame.jpg", 200))
        held = []  # live viewers after each answered pair
        for _ in range(checks):
            health = raw(port, request("GET", "/healthz"), OTHER_CLIENT, timeout=5)
            status = raw(port, request("GET", "/api/status"), OTHER_CLIENT, timeout=5)
            assert health is not None and health.status == 200, health
            assert status is not None and status.status == 200, status
            held.append(streams.active)
            time.sleep(0.1)
        # answered while the viewers held their workers (the write timeout, 10 s, may close them
        # before the last check when the web process's CPU budget makes the checks slow)
        assert held[0] == 4, held
        eventually(lambda: streams.active == 0, 30, "the viewers closed by the write timeout")
        answered = len(held)
    print(f"slow readers: {answered}/{checks} /healthz and /api/status answered, 8 connections not reading")
    still_serving(kiosk)


def live_board(frame: np.ndarray) -> StatusBoard:
    """A board with a camera frame to serve (no person: only the banner is drawn on it)."""
    board = StatusBoard("guarded")
    board.set_view(LiveView(frame, None, None, 1))
    return board


@pytest.fixture(scope="module")
def camera_frame(data_dir: Path) -> np.ndarray:
    """The first frame of dance.mp4 (a real camera picture: its JPEG is about 100 KB)."""
    with VideoFileSource(data_dir / "videos" / "dance.mp4") as video:
        return next(iter(video)).image


def test_a_viewer_that_stops_reading_is_closed_after_the_write_timeout(
    guarded_server: GuardedServer, transport: TlsFiles | None, camera_frame: np.ndarray
) -> None:
    """The stream's worker waits for a slow viewer, but not for ever: after a second without a byte
    taken the connection is closed and the worker and the stream's slot are free again."""
    server = guarded_server(
        ConnectionLimits(write_timeout_s=1.0, output_bytes=64 * 1024), transport, live_board(camera_frame)
    )
    streams = server.app.extensions[STREAMS_EXTENSION]
    with connect(server.port, tls=transport, receive_buffer=4096) as viewer:
        viewer.sendall(request("GET", "/stream.mjpg"))
        eventually(lambda: streams.active == 1, 10, "the viewer's stream")
        eventually(lambda: streams.active == 0 and server.connections == 0, 20, "the viewer closed")
    assert get(server.port, "/frame.jpg", tls=transport).status == 200


def test_a_viewer_that_reads_slowly_is_not_cut_off(
    guarded_server: GuardedServer, camera_frame: np.ndarray
) -> None:
    """Bytes taken count as progress: a viewer behind the stream but reading keeps it."""
    limits = ConnectionLimits(write_timeout_s=5.0, output_bytes=64 * 1024)
    server = guarded_server(limits, None, live_board(camera_frame))
    with connect(server.port, receive_buffer=4096) as viewer:
        viewer.sendall(request("GET", "/stream.mjpg"))
        received = b""
        while received.count(b"--frame\r\n") < 4:  # three whole parts, read 8 KB at a time
            chunk = viewer.recv(8192)
            assert chunk, "the server closed a viewer that was reading"
            received += chunk
            time.sleep(0.02)
    assert server.app.extensions[STREAMS_EXTENSION].active <= 1


def read_pipelined(sock: socket.socket, count: int) -> list[Answer]:
    """``count`` answers in a row from one keep-alive connection."""
    stream = sock.makefile("rb")
    answers = []
    for _ in range(count):
        status = int(stream.readline().split()[1])
        headers = {}
        while (line := stream.readline()) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        answers.append(Answer(status, headers, stream.read(int(headers["content-length"]))))
    return answers


def test_a_pipelining_client_that_reads_late_gets_every_answer(
    guarded_server: GuardedServer, camera_frame: np.ndarray
) -> None:
    """Its requests wait (parked, holding no worker) while its answers are unread; none is lost."""
    server = guarded_server(ConnectionLimits(output_bytes=64 * 1024), None, live_board(camera_frame))
    with connect(server.port, receive_buffer=4096) as client:
        client.sendall(pipelined("/frame.jpg", 50))
        for _ in range(10):  # meanwhile others are served
            assert get(server.port, "/api/status", source=OTHER_CLIENT).status == 200
        answers = read_pipelined(client, 50)
    assert [a.status for a in answers] == [200] * 50
    assert len({a.body for a in answers}) == 1 and answers[0].body.startswith(b"\xff\xd8")


def test_idle_connections_from_a_few_addresses_make_room_for_new_ones(guarded_server: GuardedServer) -> None:
    """Three addresses hold six idle connections each, more than the server's 12 in all: each new
    connection closes the longest idle one instead of waiting for a free slot.

    Before, the server stopped accepting at its limit and this ``/healthz`` hung.
    """
    server = guarded_server(ConnectionLimits(total=12, per_client=6))
    with contextlib.ExitStack() as stack:
        idle = [
            stack.enter_context(connect(server.port, f"127.0.0.{n}")) for n in (2, 3, 4) for _ in range(6)
        ]
        answers = [raw(server.port, request("GET", "/healthz"), "127.0.0.5", timeout=5) for _ in range(5)]
        # answered: 503, as a bare board is not healthy
        assert [a.status if a else None for a in answers] == [503] * 5
        for sock in idle:
            sock.setblocking(False)

        def closed() -> int:
            count = 0
            for sock in idle:
                with contextlib.suppress(BlockingIOError):
                    count += sock.recv(1) == b""
            return count

        evicted = eventually(closed, 10, "idle connections closed")
    assert 6 <= evicted <= 18 - 12 + 5
    print(f"idle connections: 18 held by 3 addresses, limit 12; {evicted} closed, 5/5 /healthz answered")


# --------------------------------------------------------------------------- TLS


def test_a_handshake_that_never_completes_does_not_hold_up_others(
    guarded_server: GuardedServer, tls_files: TlsFiles
) -> None:
    """A client that starts a TLS handshake and stops is closed like any slow request."""
    server = guarded_server(ConnectionLimits(grace_s=1.0, min_rate=1000.0), tls_files)
    with contextlib.ExitStack() as stack:
        stuck = [stack.enter_context(connect(server.port)) for _ in range(3)]
        for sock in stuck:
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
        answer = get(server.port, "/healthz", source=OTHER_CLIENT, tls=tls_files)
        assert answer.status == 503 and answer.error()
        for sock in stuck:
            assert closed_by_server(sock, b"\x00", timeout=15)


def test_one_address_gets_only_its_share_over_tls_too(
    guarded_server: GuardedServer, tls_files: TlsFiles
) -> None:
    server = guarded_server(ConnectionLimits(per_client=4), tls_files)
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(connect(server.port)) for _ in range(4)]
        with pytest.raises((ssl.SSLError, ConnectionError)):  # closed at accept, before any handshake
            connect(server.port, tls=tls_files).close()
        assert get(server.port, "/api/status", source=OTHER_CLIENT, tls=tls_files).status == 200
        assert all(sock.fileno() != -1 for sock in held)
