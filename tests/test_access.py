"""Who may look at the kiosk and who may change it (issue 14 item 1), over real HTTP and HTTPS.

The app runs with the policy a kiosk beyond loopback gets (a login required, a viewer and a device
token), served on 127.0.0.1 because a test machine has no other address to offer; the policy, not
the bind address, is what is under test here, and :func:`AccessPolicy.from_config` (tested below
with the config rules) is what derives it from ``[http]``. Cookies are checked over HTTPS with a
real certificate, where their ``Secure`` flag and ``__Host-`` name apply.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tls_files import TlsFiles

from device.__main__ import main
from device.access import AccessPolicy, LoginThrottle, Sessions, host_name
from device.config import SECRET_ENV, ConfigError, parse_config
from device.http_server import WebServer, tls_context
from device.sources import VideoFileSource
from device.status import LiveView, ModelInfo, StatusBoard
from device.web import create_app

VIEWER, DEVICE = "viewer-token-0123456789", "device-token-0123456789"
POLICY = AccessPolicy(
    device_sha256=hashlib.sha256(DEVICE.encode()).hexdigest(),
    viewer_sha256=hashlib.sha256(VIEWER.encode()).hexdigest(),
    login_required=True,
)
MODEL = ModelInfo("movement", "1.2.0", "ab" * 32, "sklearn", ("squat", "stand"), 1)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        assert self.headers["Content-Type"].startswith("application/json"), self
        return json.loads(self.body)


@dataclass
class Kiosk:
    """A served app and a client for it, keeping a browser's one cookie when asked to."""

    server: WebServer
    tls: TlsFiles | None
    host: str = ""
    cookie: str | None = None

    def call(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> Answer:
        port = self.server.port
        connection = (
            http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            if self.tls is None
            else http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=self.tls.client())
        )
        sent = {"Host": self.host or f"127.0.0.1:{port}", **(headers or {})}
        if self.cookie:
            sent.setdefault("Cookie", self.cookie)
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            body = response.read(200_000)  # a stream never ends: its start is enough
            return Answer(response.status, response.headers, body)
        finally:
            connection.close()

    def login(self, token: str, next_path: str = "/") -> Answer:
        form = f"token={token}&next={next_path}".encode()
        answer = self.call("POST", "/login", {"Content-Type": "application/x-www-form-urlencoded"}, form)
        if set_cookie := answer.headers["Set-Cookie"]:
            self.cookie = set_cookie.split(";")[0]
        return answer


@pytest.fixture(scope="module")
def camera_frame(data_dir: Path) -> np.ndarray:
    with VideoFileSource(data_dir / "videos" / "squats.mp4") as video:
        return next(iter(video)).image


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles.make(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def kiosk(camera_frame: np.ndarray) -> Iterator[Callable[..., Kiosk]]:
    """A healthy kiosk's app (frames, a model) with ``policy``, over HTTPS with ``tls``; stopped after."""
    started: list[WebServer] = []

    def start(policy: AccessPolicy = POLICY, tls: TlsFiles | None = None) -> Kiosk:
        board = StatusBoard("kiosk-test")
        board.set_model(MODEL)
        board.record_stage("pose", 0.02)
        board.set_view(LiveView(camera_frame, None, None, 1))
        server = WebServer(create_app(board, access_policy=policy), "127.0.0.1", 0, tls=tls and tls.server())
        server.start()
        started.append(server)
        return Kiosk(server, tls)

    yield start
    for server in started:
        server.stop()


# --------------------------------------------------------------------------- the Host header


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("Kiosk-3.LOCAL", "kiosk-3.local"),
        ("kiosk-3.local:8443", "kiosk-3.local"),
        ("kiosk-3.local.", "kiosk-3.local"),
        ("[::1]:8080", "::1"),
        ("[::1]", "::1"),
        ("10.0.0.7:443", "10.0.0.7"),
        ("fe80::1", "fe80::1"),
    ],
)
def test_host_names_are_compared_without_port_case_brackets_or_final_dot(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(
    ("header", "local", "allowed"),
    [
        ("localhost:8080", "127.0.0.1", True),
        ("kiosk-3.local", "10.0.0.7", True),  # listed
        ("10.0.0.7:8443", "10.0.0.7", True),  # the address the client connected to
        ("10.0.0.7", "::ffff:10.0.0.7", True),  # the same, on a dual-stack socket
        ("10.0.0.8", "10.0.0.7", False),  # another address
        ("rebind.attacker.example", "127.0.0.1", False),  # DNS rebinding: the attacker's name
        ("kiosk-3.local.attacker.example", "10.0.0.7", False),
        ("", "127.0.0.1", False),
        (None, "127.0.0.1", False),
    ],
)
def test_a_host_passes_by_name_or_as_the_address_connected_to(
    header: str | None, local: str, allowed: bool
) -> None:
    policy = AccessPolicy(allowed_hosts=("localhost", "Kiosk-3.local"))
    assert policy.host_allowed(header, local) is allowed


@pytest.mark.parametrize("path", ["/", "/healthz", "/api/status", "/frame.jpg", "/metrics", "/login"])
def test_a_foreign_host_name_is_refused_on_loopback_too(kiosk: Callable[..., Kiosk], path: str) -> None:
    """A page on ``rebind.attacker.example`` whose name now resolves to 127.0.0.1 reads nothing."""
    served = kiosk(AccessPolicy())  # loopback: no login
    served.host = "rebind.attacker.example"
    answer = served.call("GET", path)
    assert answer.status == 421 and "allowed_hosts" in answer.json()["error"]
    served.host = "127.0.0.2"  # an IP literal that is not the address connected to
    assert served.call("GET", path).status == 421
    served.host = "LOCALHOST"
    assert served.call("GET", path).status in (200, 303)


def test_a_foreign_host_name_is_refused_before_a_body_is_read(kiosk: Callable[..., Kiosk]) -> None:
    served = kiosk()
    served.host = "rebind.attacker.example"
    headers = {"Authorization": f"Bearer {DEVICE}", "Content-Type": "application/zip"}
    answer = served.call("POST", "/api/models", headers, b"x" * 100_000)
    assert answer.status == 421 and answer.json()["error"]


# --------------------------------------------------------------------------- beyond loopback

PROTECTED = [
    "/api/status",
    "/metrics",
    "/frame.jpg",
    "/stream.mjpg",
    "/api/models",
    "/api/pose",
    "/api/openapi.json",
]


@pytest.mark.parametrize("path", PROTECTED)
def test_beyond_loopback_looking_needs_a_credential(kiosk: Callable[..., Kiosk], path: str) -> None:
    """Without one, scripts get a 401 that says how to authenticate; with either token, the answer."""
    served = kiosk()
    refused = served.call("GET", path)
    assert refused.status == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert "/login" in refused.json()["error"]
    assert served.call("GET", path, {"Authorization": "Bearer not-a-token"}).status == 401
    for token in (VIEWER, DEVICE):  # the device token may look too
        assert served.call("GET", path, {"Authorization": f"Bearer {token}"}).status == 200, token


def test_beyond_loopback_the_health_check_and_the_login_page_stay_open(kiosk: Callable[..., Kiosk]) -> None:
    served = kiosk()
    assert served.call("GET", "/healthz").json() == {"ok": True}
    login = served.call("GET", "/login")
    assert login.status == 200 and b'name="token"' in login.body
    assert served.call("GET", "/static/status.css").status == 200
    page = served.call("GET", "/")  # a browser opening the page is sent to the login
    assert (page.status, page.headers["Location"]) == (303, "/login?next=/")
    navigation = served.call("GET", "/metrics", {"Sec-Fetch-Dest": "document"})
    assert (navigation.status, navigation.headers["Location"]) == (303, "/login?next=/metrics")


def test_the_viewer_token_cannot_change_models(kiosk: Callable[..., Kiosk]) -> None:
    served = kiosk()
    for path in ("/api/models", "/api/models/1.2.0/activate"):
        answer = served.call("POST", path, {"Authorization": f"Bearer {VIEWER}"}, b"bundle")
        assert answer.status == 401, path
    served.login(VIEWER)  # nor does a login: changes need the device token in a header
    assert served.call("POST", "/api/models/1.2.0/activate").status == 401
    # the device token gets through to the app (which has no model store here)
    assert (
        served.call("POST", "/api/models/1.2.0/activate", {"Authorization": f"Bearer {DEVICE}"}).status == 501
    )


# --------------------------------------------------------------------------- browser sessions


def cookie_attributes(set_cookie: str) -> dict[str, str]:
    parts = [part.strip() for part in set_cookie.split(";")]
    return {k.lower(): v for k, _, v in (part.partition("=") for part in parts[1:])}


def test_a_browser_logs_in_and_out_over_https(kiosk: Callable[..., Kiosk], tls_files: TlsFiles) -> None:
    served = kiosk(POLICY, tls_files)
    wrong = served.login("not-the-token")
    assert wrong.status == 401 and b"not right" in wrong.body and served.cookie is None
    answer = served.login(VIEWER, "/api/status")
    assert (answer.status, answer.headers["Location"]) == (303, "/api/status")
    assert served.cookie is not None and served.cookie.startswith("__Host-movement-edge=")
    attributes = cookie_attributes(answer.headers["Set-Cookie"])
    assert {"secure", "httponly"} <= set(attributes) and attributes["samesite"] == "Strict"
    assert attributes["path"] == "/" and "domain" not in attributes
    assert served.call("GET", "/api/status").json()["device_id"] == "kiosk-test"
    assert served.call("GET", "/").status == 200
    logged_in = served.cookie
    assert served.call("POST", "/logout").headers["Location"] == "/login"
    served.cookie = logged_in  # a copy of the cookie is worth nothing after the logout
    assert served.call("GET", "/api/status").status == 401


def test_without_https_the_cookie_is_not_marked_secure(kiosk: Callable[..., Kiosk]) -> None:
    served = kiosk()
    answer = served.login(DEVICE)  # the device token logs a browser in too
    assert answer.status == 303 and served.cookie is not None
    assert served.cookie.startswith("movement-edge=")
    assert "secure" not in cookie_attributes(answer.headers["Set-Cookie"])


def test_a_session_ends_after_its_hours() -> None:
    clock = [0.0]
    sessions = Sessions(hours=12, clock=lambda: clock[0])
    sid = sessions.begin()
    clock[0] = 12 * 3600 - 1
    assert sessions.valid(sid)
    clock[0] = 12 * 3600
    assert not sessions.valid(sid)
    assert not sessions.valid(None) and not sessions.valid(["list"])


@pytest.mark.parametrize(
    ("target", "landing"),
    [
        ("/api/status?x=1", "/api/status?x=1"),
        ("//attacker.example/x", "/"),
        ("https://attacker.example/", "/"),
        ("/\\attacker.example", "/"),
        ("", "/"),
    ],
)
def test_a_login_only_leads_to_a_page_of_the_kiosk(
    kiosk: Callable[..., Kiosk], target: str, landing: str
) -> None:
    answer = kiosk().login(VIEWER, target.replace("?", "%3F").replace("&", "%26"))
    assert (answer.status, answer.headers["Location"]) == (303, landing)


def test_failed_logins_are_limited_per_address(kiosk: Callable[..., Kiosk]) -> None:
    """Five wrong tokens from an address, then even the right one waits; other addresses do not."""
    served = kiosk()
    statuses = [served.login(f"guess-{n}").status for n in range(5)]
    blocked = served.login(VIEWER)
    assert statuses == [401] * 5
    assert blocked.status == 429 and int(blocked.headers["Retry-After"]) > 0 and served.cookie is None
    wait = blocked.headers["Retry-After"]
    print(f"login throttle: 5 wrong tokens got 401, the 6th attempt (right token) 429, retry in {wait} s")


def test_the_login_throttle_forgets_after_its_window_and_counts_ipv6_per_network() -> None:
    clock = [100.0]
    throttle = LoginThrottle(limit=2, window_s=60, clock=lambda: clock[0])
    throttle.failed("2001:db8::1")
    throttle.failed("2001:db8::2")  # the same /64
    assert throttle.retry_after_s("2001:db8::3") == pytest.approx(60)
    assert throttle.retry_after_s("2001:db8:0:1::1") == 0  # another network
    clock[0] += 60
    assert throttle.retry_after_s("2001:db8::3") == 0
    throttle.failed("10.0.0.9")
    throttle.succeeded("::ffff:10.0.0.9")  # the same client seen on a dual-stack socket
    throttle.failed("10.0.0.9")
    assert throttle.retry_after_s("10.0.0.9") == 0


# --------------------------------------------------------------------------- configuration


def http_config(tls: TlsFiles | None = None, **http: Any) -> dict[str, Any]:
    files = {} if tls is None else {"tls_cert": str(tls.cert), "tls_key": str(tls.key)}
    return {"source": {"kind": "camera"}, "http": {**files, **http}}


@pytest.mark.parametrize(
    ("http", "message"),
    [
        (
            {"bind": "0.0.0.0"},
            "http.bind 0.0.0.0 listens beyond loopback, so it needs http.tls_cert and http.tls_key, "
            "http.viewer_token (or $MOVEMENT_EDGE_HTTP_VIEWER_TOKEN), "
            "http.token (or $MOVEMENT_EDGE_HTTP_TOKEN)",
        ),
        ({"bind": "::", "tls_cert": "c.pem", "tls_key": "k.pem", "token": DEVICE}, "needs http.viewer_token"),
        (
            {"bind": "192.168.1.40", "tls_cert": "c.pem", "tls_key": "k.pem", "viewer_token": VIEWER},
            "needs http.token",
        ),
        ({"tls_cert": "c.pem"}, "http.tls_key is required"),
        ({"tls_key": "k.pem"}, "http.tls_cert is required"),
        ({"token": DEVICE, "viewer_token": DEVICE}, "http.viewer_token must differ from http.token"),
        ({"allowed_hosts": ["https://kiosk.local"]}, "not a host name or IP address"),
        ({"allowed_hosts": []}, "http.allowed_hosts"),
        ({"viewer_token": "short"}, "http.viewer_token: String should have at least 16 characters"),
    ],
)
def test_each_http_rule_is_one_line_naming_the_key(http: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"source": {"kind": "camera"}, "http": http}, "kiosk.toml", env={})
    assert message in str(error.value) and "\n" not in str(error.value)
    assert "short" not in str(error.value)  # a secret is never echoed


def test_beyond_loopback_the_policy_requires_a_login_and_https(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    env = {SECRET_ENV["http_viewer_token"]: VIEWER, SECRET_ENV["http_token"]: DEVICE}
    config = parse_config(http_config(tls_files, bind="0.0.0.0"), env=env)
    policy = AccessPolicy.from_config(config.http)
    assert policy.login_required
    assert policy.role(VIEWER) == "viewer" and policy.role(DEVICE) == "device"
    assert tls_context(config.http) is not None
    loopback = AccessPolicy.from_config(parse_config(http_config(), env={}).http)
    assert not loopback.login_required and loopback.allowed_hosts == ("localhost", "127.0.0.1", "::1")


def test_the_viewer_token_comes_from_a_systemd_credential(tmp_path: Path) -> None:
    (tmp_path / "http_viewer_token").write_text(VIEWER + "\n")
    config = parse_config(http_config(), env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert config.http.viewer_hash == hashlib.sha256(VIEWER.encode()).hexdigest()


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    lines = [
        f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
        for section, keys in data.items()
    ]
    path = tmp_path / "kiosk.toml"
    path.write_text("\n".join(lines))
    return path


def test_check_config_names_an_unusable_certificate_and_never_prints_the_viewer_token(
    tmp_path: Path, tls_files: TlsFiles, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV["http_viewer_token"], VIEWER)
    (tmp_path / "state").mkdir()
    config = http_config(tls_files, token=DEVICE)
    config["device"] = {"state_dir": str(tmp_path / "state")}
    config["source"] = {"kind": "file", "paths": [str(tmp_path / "missing.mp4")]}
    assert main(["check-config", "--offline", str(write_config(tmp_path, config))]) == 0
    assert VIEWER not in capsys.readouterr().out
    other_key = TlsFiles.make(tmp_path)  # a key that is not the certificate's
    config["http"]["tls_key"] = str(other_key.key)
    config["source"] = {"kind": "camera", "device": 0}
    main(["check-config", str(write_config(tmp_path, config))])
    errors = [line for line in capsys.readouterr().err.splitlines() if "http.tls" in line]
    assert errors == [
        f"device check-config: error: {tmp_path / 'kiosk.toml'}: http.tls_key {other_key.key}: "
        f"is not the key of the certificate {tls_files.cert}"
    ]


@pytest.mark.parametrize("broken", ["cert", "key"])
def test_the_daemon_does_not_start_on_an_unusable_certificate(
    tmp_path: Path, tls_files: TlsFiles, broken: str
) -> None:
    (tmp_path / "garbage.pem").write_text("not a PEM file\n")
    config = http_config(tls_files, **{f"tls_{broken}": str(tmp_path / "garbage.pem")})
    with pytest.raises(ConfigError, match=f"http.tls_{broken} {tmp_path / 'garbage.pem'}: not a PEM"):
        tls_context(parse_config(config, env={}).http)
