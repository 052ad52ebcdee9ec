"""The fleet tool against kiosks that are not what they claim, or answer what they like.

Each fake kiosk is a real server on a free port: a TLS server with a certificate of its own (a
machine that took over ``kiosk-1.local``), a plain listener on this machine's network address,
or an HTTP server answering ``/api/status`` with a JSON array, HTML, escape sequences, absurd
numbers or a body of 64 MiB. The fakes record every byte they receive, so the tests can say
what reached them — above all, whether the bearer token did. The commands run through
``python -m provisioning``'s real entry point.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import network_address

from device.certificates import fingerprint, make_self_signed
from provisioning.__main__ import main as provisioning
from provisioning.device_api import MAX_ANSWER_BYTES
from provisioning.terminal import MAX_CELL

TOKEN = "the-kiosks-bearer-token-0123456789"
RECEIVE_TIMEOUT_S = 10.0

Answer = Callable[[socket.socket], None]


def json_answer(body: bytes, content_type: str = "application/json") -> Answer:
    def send(connection: socket.socket) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        connection.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)

    return send


def endless_answer(connection: socket.socket) -> None:
    """64 MiB announced and sent until the client stops reading."""
    size = 64 * 1024 * 1024
    connection.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
    chunk = b"[" + b" " * 65535
    try:
        for _ in range(size // len(chunk)):
            connection.sendall(chunk)
    except OSError:
        pass  # the client closed: what it should do


class FakeKiosk:
    """A server on ``host`` that records what each connection sends and answers every request.

    With ``tls`` (key PEM, certificate PEM) it completes a TLS handshake first and records only
    what arrives after it: the bytes an application would see.
    """

    def __init__(self, answer: Answer, host: str = "127.0.0.1", tls: tuple[Path, Path] | None = None) -> None:
        self._answer = answer
        self._context: ssl.SSLContext | None = None
        if tls is not None:
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._context.load_cert_chain(certfile=tls[1], keyfile=tls[0])
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = socket.create_server((host, 0), family=family)
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self.connections = 0
        self.received = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-kiosk", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with connection:
                self._handle(connection)

    def _handle(self, connection: socket.socket) -> None:
        connection.settimeout(RECEIVE_TIMEOUT_S)
        try:
            if self._context is not None:
                connection = self._context.wrap_socket(connection, server_side=True)
            while b"\r\n\r\n" not in self.received:
                chunk = connection.recv(65536)
                if not chunk:
                    return  # the client closed without a request
                self.received += chunk
            self._answer(connection)
        except (OSError, ssl.SSLError):
            return

    def __enter__(self) -> FakeKiosk:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(RECEIVE_TIMEOUT_S + 5)
        self._server.close()


def fleet_file(tmp_path: Path, url: str, fingerprint: str | None = None) -> Path:
    """A fleet of one, ``kiosk-1``, whose token is in a file beside the fleet file."""
    (tmp_path / "kiosk-1.token").write_text(TOKEN + "\n")
    pin = f'fingerprint = "{fingerprint}"\n' if fingerprint else ""
    path = tmp_path / "fleet.toml"
    path.write_text(f'[[device]]\nname = "kiosk-1"\nurl = "{url}"\n{pin}token_file = "kiosk-1.token"\n')
    return path


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """As much of a bundle as the workstation reads: a zip with a manifest naming it."""
    path = tmp_path / "model.zip"
    manifest = {"model_id": "poses", "version": "9.0.0", "sha256": hashlib.sha256(b"model").hexdigest()}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        archive.writestr("model.skops", b"model")
    return path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Two key pairs for the name kiosk-1.local: the real kiosk's and an impostor's."""
    folder = tmp_path_factory.mktemp("certificates")
    pairs = {}
    for name in ("kiosk", "impostor"):
        key_pem, cert_pem = make_self_signed("kiosk-1", ["kiosk-1.local", "127.0.0.1"])
        (folder / f"{name}.key").write_bytes(key_pem)
        (folder / f"{name}.crt").write_bytes(cert_pem)
        pairs[name] = (folder / f"{name}.key", folder / f"{name}.crt")
    return pairs


def pinned(certificates: dict[str, tuple[Path, Path]], name: str) -> str:
    return fingerprint(certificates[name][1].read_bytes())


STATUS = json.dumps({"model": {"id": "poses", "version": "1.0.0"}, "uptime_s": 61}).encode()


# --------------------------------------------------------------------------- pinning


@pytest.mark.parametrize("command", ["push", "status"])
def test_an_impostor_with_another_certificate_never_receives_the_token(
    tmp_path: Path,
    bundle: Path,
    certificates: dict[str, tuple[Path, Path]],
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    with FakeKiosk(json_answer(STATUS), tls=certificates["impostor"]) as impostor:
        fleet = fleet_file(tmp_path, f"https://127.0.0.1:{impostor.port}", pinned(certificates, "kiosk"))
        args = [str(bundle)] if command == "push" else []
        status = provisioning([command, *args, "--fleet", str(fleet)])
    out = capsys.readouterr().out

    assert status == 1, out
    row = out.splitlines()[1]
    assert row.split()[:2] == ["kiosk-1", "untrusted" if command == "push" else "untrusted:"], out
    assert f"{pinned(certificates, 'impostor')[:16]}… is not the pinned" in row
    assert impostor.connections == 1, "the handshake happened, so the check was made"
    assert bytes(impostor.received) == b"", "not a byte of the request, so no token"


def test_the_pinned_kiosk_gets_the_request_with_its_token(
    tmp_path: Path, certificates: dict[str, tuple[Path, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    """The control for the test above: the same fake, pinned right, receives the token."""
    with FakeKiosk(json_answer(STATUS), tls=certificates["kiosk"]) as kiosk:
        fleet = fleet_file(tmp_path, f"https://127.0.0.1:{kiosk.port}", pinned(certificates, "kiosk"))
        status = provisioning(["status", "--fleet", str(fleet)])
    out = capsys.readouterr().out

    assert status == 0, out
    assert out.splitlines()[1].split()[:3] == ["kiosk-1", "poses", "1.0.0"], out
    assert f"Authorization: Bearer {TOKEN}\r\n".encode() in kiosk.received


@pytest.mark.parametrize("command", ["push", "status"])
def test_plain_http_beyond_loopback_is_refused_before_connecting(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    address = network_address()
    with FakeKiosk(json_answer(STATUS), host=address) as listener:
        fleet = fleet_file(tmp_path, f"http://{address}:{listener.port}")
        args = [str(bundle)] if command == "push" else []
        refused = provisioning([command, *args, "--fleet", str(fleet)])
        err = capsys.readouterr().err
        assert listener.connections == 0, "refused without a connection"

        # the control: the same listener is reached, token included, once --insecure says so
        allowed = provisioning(["status", "--fleet", str(fleet), "--insecure"])
    out = capsys.readouterr().out

    assert refused == 2 and err.count("\n") == 1, err
    assert f"device kiosk-1: http://{address}:{listener.port} is plain HTTP beyond this machine" in err
    assert "or give --insecure" in err
    assert allowed == 0, out
    assert listener.connections == 1 and f"Bearer {TOKEN}".encode() in listener.received


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.1.1", "localhost", "[::1]"])
def test_plain_http_on_loopback_needs_no_flag(tmp_path: Path, host: str) -> None:
    if host == "[::1]" and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with FakeKiosk(json_answer(STATUS), host=host.strip("[]")) as kiosk:
        status = provisioning(["status", "--fleet", str(fleet_file(tmp_path, f"http://{host}:{kiosk.port}"))])
    assert status == 0 and kiosk.connections == 1


# --------------------------------------------------------------------------- hostile answers


HOSTILE_ANSWERS = {
    "a JSON array": (json_answer(b"[1, 2, 3]"), "the answer is a JSON array, not an object"),
    "HTML": (json_answer(b"<html>kiosk</html>", "text/html"), "the answer is not JSON"),
    "nested too deep": (json_answer(b"[" * 100_000), "the answer is not JSON"),
    "a number of 5000 digits": (json_answer(b"9" * 5000), "the answer is not JSON"),
    "64 MiB": (endless_answer, f"the answer is larger than {MAX_ANSWER_BYTES // 1024} KiB"),
}


@pytest.mark.parametrize("command", ["push", "status"])
@pytest.mark.parametrize("kind", HOSTILE_ANSWERS)
def test_a_status_outside_the_api_is_one_line_saying_what_is_wrong(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str], command: str, kind: str
) -> None:
    answer, expected = HOSTILE_ANSWERS[kind]
    with FakeKiosk(answer) as kiosk:
        args = [str(bundle)] if command == "push" else []
        status = provisioning(
            [command, *args, "--fleet", str(fleet_file(tmp_path, f"http://127.0.0.1:{kiosk.port}"))]
        )
    captured = capsys.readouterr()

    assert status == 1, captured
    header, row, *more = captured.out.splitlines()
    assert not more, captured.out
    assert row.split(maxsplit=2)[1] == ("failed" if command == "push" else "bad"), row
    assert f"GET /api/status: {expected}" in row
    assert kiosk.connections == 1, "an answer outside the API is not retried"
    assert "Traceback" not in captured.err


ESCAPES = "\x1b[2J\x1b]0;owned\x07\r\u202e"
"""Clear the screen, set the terminal's title, return, reverse the text's direction."""


def test_escape_sequences_and_absurd_values_in_a_status_are_shown_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = {
        "model": {"id": f"poses{ESCAPES}", "version": "x" * 5000},
        "mqtt": ["not", "an", "object"],
        "stages": {"pose": "fast"},
        "camera": {"state": f"running\n{ESCAPES}"},
        "uptime_s": float("inf"),
    }
    with FakeKiosk(json_answer(json.dumps(status).encode())) as kiosk:
        code = provisioning(
            ["status", "--fleet", str(fleet_file(tmp_path, f"http://127.0.0.1:{kiosk.port}"))]
        )
    out = capsys.readouterr().out

    assert code == 0, out
    header, row = out.splitlines()
    assert all(character.isprintable() for character in row), repr(row)
    assert "poses\\x1b[2J\\x1b]0;owned\\x07\\r\\u202e" in row
    assert "running\\n\\x1b[2J" in row
    assert len(row) < 3 * MAX_CELL, "a 5000-character version is cut"
    assert row.split()[-1] == "-", "an infinite uptime is not shown"


def test_escape_sequences_in_a_refusal_are_shown_escaped(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(connection: socket.socket) -> None:
        body = json.dumps({"error": f"no{ESCAPES}"}).encode()
        head = f"HTTP/1.1 403 Forbidden\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        connection.sendall(head.encode() + body)

    with FakeKiosk(refuse) as kiosk:
        code = provisioning(
            ["push", str(bundle), "--fleet", str(fleet_file(tmp_path, f"http://127.0.0.1:{kiosk.port}"))]
        )
    captured = capsys.readouterr()

    assert code == 1
    for line in captured.out.splitlines() + captured.err.splitlines():
        assert all(character.isprintable() for character in line), repr(line)
    assert "unauthorized  no\\x1b[2J" in captured.out
