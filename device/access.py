"""Who may look at the kiosk and who may change it (DESIGN.md §6, issue 14 item 1).

A kiosk in a clinic films patients, so whenever its server listens beyond loopback everything
but ``/healthz`` (and the login page with its static files) needs a credential:

* the **viewer token** lets a person or a script look: a browser logs in once at ``/login`` and
  gets a session cookie; scripts and Prometheus send ``Authorization: Bearer <token>``;
* the **device token** changes models (``POST``\\s, always by header, never by cookie, so no
  other web page can make a browser send it: that is the CSRF defence) and may also look.

Only SHA-256 hashes of the tokens are held, and a presented token is hashed before a
constant-time comparison, so neither its content nor its length leaks through timing. Failed
logins are rate-limited per client address (per /64 network for IPv6, since one host holds a
whole /64). A session is a random id in Flask's signed cookie (a key made at start) and in a
bounded table on the kiosk, so that logging out really ends it (a signed cookie alone stays valid
wherever it was copied to) and a restart logs everybody out, which is also how a changed viewer
token takes effect. A session lasts ``session_hours`` from the login, however busy it is, and
the cookie is ``HttpOnly``, ``SameSite=Strict`` and, over HTTPS, ``Secure`` with the ``__Host-``
prefix (no sub-domain or plain-HTTP page can set or read it).

The ``Host`` header is checked on every request, loopback included: DNS rebinding lets a web
page anybody on the network opens talk to ``127.0.0.1`` or to the kiosk under the attacker's own
host name, and the ``Host`` header is where that name shows. A request passes when its host
(port stripped, case-insensitive) is one of ``allowed_hosts``, or is the IP address the client
connected to (what a browser sends when a user types the kiosk's address, which no rebinding can
produce), so a kiosk reached by a DHCP address needs no configuration for it.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import ipaddress
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from flask import Flask, Response, jsonify, redirect, render_template, request, session
from flask.sessions import SecureCookieSessionInterface

from device.config import HttpSection

ACCESS_EXTENSION = "movement_edge.access"
"""Key of the app's :class:`AccessPolicy` in ``app.extensions`` (the server's body gate reads it)."""

LOCAL_ADDRESS = "movement_edge.local_address"
"""WSGI environ key: the IP address the client connected to (set by the server)."""

DEVICE_TOKEN_ATTRIBUTE = "movement_edge_device_token_required"
"""Set on views that need the device token, so the server can refuse their bodies unread."""

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
Role = Literal["viewer", "device"]

NO_DEVICE_TOKEN = "model management is disabled: no HTTP token is configured (http.token)"
BEARER_REQUIRED = "a valid 'Authorization: Bearer <token>' header is required"
BEARER_CHALLENGE = 'Bearer realm="movement-edge"'
_PUBLIC_ENDPOINTS = frozenset({"healthz", "login", "login_form", "logout", "static"})
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_LOGIN_FAILURES = 5  # per client address and window: a typing error or two, not a dictionary
_LOGIN_WINDOW_S = 60.0
_TRACKED_CLIENTS = 1024  # the throttle's memory is bounded too
_SESSIONS = 256  # beyond this many logins the oldest session ends


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _same_hash(token: str, expected: str | None) -> bool:
    # Hashing first makes the comparison constant-time in the token and its length.
    return expected is not None and hmac.compare_digest(token_sha256(token), expected)


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive), or None."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def host_name(host_header: str) -> str:
    """The host of a ``Host`` header: port and IPv6 brackets removed, lower case, no trailing dot."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:  # name:port or v4:port (a bare IPv6 address has several colons)
        host = host.partition(":")[0]
    return host.rstrip(".")


def _same_address(host: str, local_address: str | None) -> bool:
    if not local_address:
        return False
    try:
        local = ipaddress.ip_address(local_address)
        named = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(local, "ipv4_mapped", None)  # a dual-stack socket reports v4 peers as ::ffff:a.b.c.d
    return named in (local, mapped)


@dataclass(frozen=True)
class AccessPolicy:
    """The credentials and host names one web app accepts (only hashes of the tokens)."""

    device_sha256: str | None = None
    viewer_sha256: str | None = None
    login_required: bool = False
    allowed_hosts: tuple[str, ...] = DEFAULT_HOSTS
    session_hours: float = 12.0

    def __post_init__(self) -> None:
        for name in ("device_sha256", "viewer_sha256"):
            value = getattr(self, name)
            if value is not None and not _SHA256_HEX.fullmatch(value):
                raise ValueError(f"{name} must be the 64 lowercase hex digits of the token's SHA-256")
        if self.login_required and self.viewer_sha256 is None and self.device_sha256 is None:
            raise ValueError("login_required needs a viewer or device token: nobody could log in")
        object.__setattr__(self, "allowed_hosts", tuple(host_name(h) for h in self.allowed_hosts))

    @classmethod
    def from_config(cls, http: HttpSection) -> AccessPolicy:
        """Beyond loopback a login is required (config validation made sure it is possible)."""
        return cls(
            device_sha256=http.token_hash,
            viewer_sha256=http.viewer_hash,
            login_required=not http.bind.is_loopback,
            allowed_hosts=tuple(http.allowed_hosts),
            session_hours=http.session_hours,
        )

    def host_allowed(self, host_header: str | None, local_address: str | None) -> bool:
        if not host_header:  # HTTP/1.1 requires it; every browser sends it
            return False
        host = host_name(host_header)
        return host in self.allowed_hosts or _same_address(host, local_address)

    def role(self, token: str) -> Role | None:
        """What a presented token may do: change (``device``), look (``viewer``), or nothing."""
        if _same_hash(token, self.device_sha256):
            return "device"
        if _same_hash(token, self.viewer_sha256):
            return "viewer"
        return None

    def device_refusal(self, authorization: str) -> tuple[int, str] | None:
        """Why a change with this ``Authorization`` header is refused (status, message), or None."""
        if self.device_sha256 is None:
            return 403, NO_DEVICE_TOKEN
        token = bearer_token(authorization)
        if token is None or self.role(token) != "device":
            return 401, BEARER_REQUIRED
        return None


class LoginThrottle:
    """At most ``limit`` failed logins per client network in any ``window_s`` seconds.

    Counted per address (an IPv6 client per /64): a global count would let one attacker lock
    everybody out, and a client holds a whole /64. Once over the limit every login from there is
    refused, right or wrong, until the oldest failure leaves the window.
    """

    def __init__(
        self,
        limit: int = _LOGIN_FAILURES,
        window_s: float = _LOGIN_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window_s, self._clock = limit, window_s, clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    @staticmethod
    def network(address: str) -> str:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:  # an IPv4 client on a dual-stack socket
                return str(ip.ipv4_mapped)
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip)

    def retry_after_s(self, address: str) -> float:
        """0 when a login may be tried now, else the seconds until one may."""
        now = self._clock()
        with self._lock:
            failures = self._failures.get(self.network(address))
            if failures is None:
                return 0.0
            while failures and now - failures[0] >= self.window_s:
                failures.popleft()
            if len(failures) < self.limit:
                return 0.0
            return self.window_s - (now - failures[0])

    def failed(self, address: str) -> None:
        key = self.network(address)
        with self._lock:
            self._failures.setdefault(key, deque(maxlen=self.limit)).append(self._clock())
            self._failures.move_to_end(key)
            while len(self._failures) > _TRACKED_CLIENTS:
                self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(self.network(address), None)


class Sessions:
    """The browser sessions in force: random ids with their end, the oldest dropped beyond a bound."""

    def __init__(self, hours: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._lifetime_s, self._clock = hours * 3600, clock
        self._lock = threading.Lock()
        self._ends: OrderedDict[str, float] = OrderedDict()

    def begin(self) -> str:
        sid = secrets.token_urlsafe(24)
        with self._lock:
            self._ends[sid] = self._clock() + self._lifetime_s
            while len(self._ends) > _SESSIONS:
                self._ends.popitem(last=False)
        return sid

    def valid(self, sid: Any) -> bool:
        with self._lock:
            end = self._ends.get(sid) if isinstance(sid, str) else None
            if end is not None and end <= self._clock():
                del self._ends[sid]
                end = None
        return end is not None

    def end(self, sid: Any) -> None:
        with self._lock:
            if isinstance(sid, str):
                self._ends.pop(sid, None)


def require_device_token(policy: AccessPolicy) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator refusing a request unless its ``Authorization`` header carries the device token.

    The view is marked (:data:`DEVICE_TOKEN_ATTRIBUTE`) so that the server refuses such a
    request from its headers, before reading a byte of its body.
    """

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            refusal = policy.device_refusal(request.headers.get("Authorization", ""))
            if refusal is not None:
                return json_error(*refusal)
            return view(*args, **kwargs)

        setattr(guarded, DEVICE_TOKEN_ATTRIBUTE, True)
        return guarded

    return decorate


def json_error(status_code: int, message: str, **extra: Any) -> Response:
    """The API's error shape, ``{"error": message, ...}``; a 401 says which scheme it wants."""
    response = jsonify({"error": message, **extra})
    response.status_code = status_code
    if status_code == 401:
        response.headers["WWW-Authenticate"] = BEARER_CHALLENGE
    return response


def _safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this kiosk only (never ``//evil`` or a URL)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")) and "\\" not in target:
        return target
    return "/"


def _is_navigation() -> bool:
    """A browser opening a page (rather than a script or an image asking): it gets the login page."""
    return request.method == "GET" and (
        request.path == "/" or request.headers.get("Sec-Fetch-Dest") == "document"
    )


class _SessionCookies(SecureCookieSessionInterface):
    """Flask's signed cookie, ``Secure`` and ``__Host-`` named whenever it travels over HTTPS."""

    def get_cookie_name(self, app: Flask) -> str:
        return "__Host-movement-edge" if request.is_secure else "movement-edge"

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure


def install(app: Flask, policy: AccessPolicy, title: str) -> None:
    """Host checks, viewer authentication, ``/login`` and ``/logout`` on ``app``."""
    throttle = LoginThrottle()
    sessions = Sessions(policy.session_hours)
    app.extensions[ACCESS_EXTENSION] = policy
    app.secret_key = secrets.token_bytes(32)  # per process: a restart ends every session
    app.session_interface = _SessionCookies()
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_REFRESH_EACH_REQUEST=False,
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(hours=policy.session_hours),
    )

    @app.before_request
    def check_access() -> Response | None:
        if not policy.host_allowed(request.headers.get("Host"), request.environ.get(LOCAL_ADDRESS)):
            return json_error(421, "this kiosk does not answer to that host name (http.allowed_hosts)")
        if not policy.login_required or request.endpoint in _PUBLIC_ENDPOINTS:
            return None
        authorization = request.headers.get("Authorization")
        if authorization is not None:  # a script: its header decides, whatever cookie it has
            token = bearer_token(authorization)
            return None if token is not None and policy.role(token) else json_error(401, BEARER_REQUIRED)
        if sessions.valid(session.get("sid")):
            return None
        if _is_navigation():
            return redirect(f"/login?next={quote(request.full_path.rstrip('?'), safe='/')}", 303)
        return json_error(401, "log in at /login or send 'Authorization: Bearer <viewer token>'")

    def form(error: str = "", status_code: int = 200) -> Response:
        page = render_template("login.html", title=title, error=error, next=request.values.get("next", "/"))
        return Response(page, status=status_code, mimetype="text/html")

    @app.get("/login")
    def login_form() -> Response:
        if not policy.login_required:
            return redirect("/", 303)  # on loopback there is nothing to log in to
        return form()

    @app.post("/login")
    def login() -> Response:
        if not policy.login_required:
            return redirect("/", 303)
        client = request.remote_addr or ""
        wait_s = throttle.retry_after_s(client)
        if wait_s > 0:
            response = form(f"Too many failed attempts: try again in {wait_s:.0f} s.", 429)
            response.headers["Retry-After"] = str(int(wait_s) + 1)
            return response
        if policy.role(request.form.get("token", "")) is None:
            throttle.failed(client)
            return form("That token is not right.", 401)
        throttle.succeeded(client)
        sessions.end(session.get("sid"))
        session.clear()
        session.permanent = True  # the cookie expires session_hours after this login
        session["sid"] = sessions.begin()
        return redirect(_safe_next(request.form.get("next")), 303)

    @app.post("/logout")
    def logout() -> Response:
        sessions.end(session.get("sid"))
        session.clear()
        return redirect("/login" if policy.login_required else "/", 303)

