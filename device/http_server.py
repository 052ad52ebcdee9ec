"""The kiosk's HTTP(S) server: waitress in one named thread, hardened against hostile clients.

waitress reads requests in one event loop and runs the app in a pool of worker threads. What a
hostile or broken client can exhaust is therefore connections, worker threads, and memory for
request bodies and unsent answers; each is bounded here (:class:`ConnectionLimits`):

* **Connections**: one client address holds at most ``per_client``; when ``total`` are open, the
  connection idle the longest makes room (idle connections from a few addresses cannot lock
  everyone out); a request must arrive within ``grace_s`` plus one second per ``min_rate`` bytes.
* **Slow readers** (issue 14 item 6): a connection's unsent output is bounded (``output_bytes``).
  A worker writing a live stream waits while the client is behind, but a connection whose output
  has not moved for ``write_timeout_s`` is closed, which frees its worker. A client that pipelines
  requests without reading the answers holds no worker at all: its next request is *parked*
  until its output drains, and the worker goes back to the pool. Live streams are fewer than the
  workers (checked at start), so ``/healthz`` always finds one.
* **Request bodies** (item 7): waitress buffers a whole body before the app sees the request, so
  the token check of the app alone came too late (396 MB held by one client without a token).
  Here the headers decide, before a byte of the body is read: the ``Host`` header, the device
  token for views that need it (marked by :func:`device.access.require_device_token`, so a new
  route is covered without a list to keep up to date), the size (the upload limit for those
  views, 64 KiB for anything else, e.g. the login form), and room in the budget of all bodies in
  flight (``bodies_bytes``; by default twice the upload limit: two full uploads at once, the
  third is told to retry, 503). Refusals are the API's JSON errors.

**HTTPS** (item 2). waitress has no TLS. The choices were another server, or TLS inside
waitress's own connections. cheroot (CherryPy's server) has TLS but holds a thread per
connection, so slow clients would be back to exhausting threads; gunicorn forks workers and cannot
share the daemon's in-process status board; uvicorn serves ASGI. So :class:`_TlsChannel`
terminates TLS in the event loop with :class:`ssl.MemoryBIO` pairs, as asyncio's own TLS transport
does: raw bytes from the socket go into the TLS object, decrypted bytes into waitress's parser;
answers are encrypted into a bounded buffer that the loop sends. Nothing ever blocks on a
handshake, a client that stops half-way is closed like any slow request, and every protection
above applies unchanged (it sits in the common base class). No ``SSLSocket`` is used because a
non-blocking one has awkward retry rules (``SSLWantWrite`` must be retried with the same buffer)
and hides decrypted bytes in ``pending()``, which a poll loop never sees.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from flask import Flask
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer, create_server
from waitress.task import ErrorTask, WSGITask
from waitress.utilities import Error
from werkzeug.exceptions import HTTPException

from device.access import (
    ACCESS_EXTENSION,
    BEARER_CHALLENGE,
    DEVICE_TOKEN_ATTRIBUTE,
    LOCAL_ADDRESS,
    AccessPolicy,
)
from device.certificates import CertificateError, server_context
from device.config import ConfigError, HttpSection
from device.web import SECURITY_HEADERS, STREAMS_EXTENSION, LiveStreams

log = logging.getLogger(__name__)

_WORKER_STOP_TIMEOUT_S = 5.0
_SWEEP_INTERVAL_S = 0.5  # how often the serving loop looks for overdue requests and stalled answers
_SMALL_BODY_BYTES = 64 * 1024  # a body for anything but an upload (the login form is ~100 bytes)
_DEFAULT_UPLOAD_BYTES = 64 * 1024 * 1024
_TLS_PLAIN_BYTES = 64 * 1024  # plaintext encrypted per send; keeps the encrypted buffer small
_TLS_CIPHER_BYTES = 128 * 1024  # encrypted bytes waiting for the socket, at most (plus one write)
_TLS_READ_BYTES = 64 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client may take of the server, so slow or greedy clients cannot starve the others.

    ``per_client`` stays high because the load benchmark keeps 50 busy connections from one
    address; a slow request is closed after ``grace_s`` plus one second per ``min_rate`` bytes (a
    slowloris that dribbles headers is closed; a 64 MB upload at 100 KB/s is not); an idle
    connection after ``idle_s``; an answer nobody reads after ``write_timeout_s``. Each
    connection keeps at most ``output_bytes`` of unsent answers, in the server and again in the
    kernel's send buffer: for a viewer on a slow link more would be a live view minutes behind.
    ``bodies_bytes`` bounds all request bodies in flight together (None: twice the app's upload
    limit).
    """

    total: int = 256
    per_client: int = 64
    grace_s: float = 10.0
    min_rate: float = 16 * 1024
    idle_s: float = 30.0
    write_timeout_s: float = 10.0
    output_bytes: int = 512 * 1024
    bodies_bytes: int | None = None


class _Refusal(Error):
    """A request refused from its headers; becomes a JSON error like waitress's own."""

    def __init__(self, code: int, reason: str, body: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(body)
        self.code, self.reason, self.headers = code, reason, headers


class _JsonErrorTask(ErrorTask):
    """waitress's own refusals (413 over the upload limit, 400 for a malformed request, 431 …) and
    the gate's, as the API's JSON errors, so a client never has to parse a plain-text page."""

    def execute(self) -> None:
        error = self.request.error
        body = json.dumps({"error": f"{error.reason}: {error.body}"}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend(
            [("Content-Type", "application/json"), *SECURITY_HEADERS.items(), *getattr(error, "headers", ())]
        )
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Task(WSGITask):
    """The app's request, with the address the client connected to (for the ``Host`` check)."""

    def get_environment(self) -> dict[str, Any]:
        environ = super().get_environment()
        environ[LOCAL_ADDRESS] = self.channel.local_address
        return environ


class _BodyBudget:
    """Bytes all request bodies in flight may take together; taken at the headers, given back at the end."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self.held = 0

    def take(self, size: int) -> bool:
        with self._lock:
            if self.held + size > self.limit:
                return False
            self.held += size
            return True

    def give_back(self, size: int) -> None:
        with self._lock:
            self.held -= size


class _BodyGate:
    """Decides from a request's headers whether its body may be read, and how much of it."""

    def __init__(self, app: Flask, upload_bytes: int, budget: _BodyBudget) -> None:
        self._policy: AccessPolicy = app.extensions.get(ACCESS_EXTENSION) or AccessPolicy()
        self._routes = app.url_map.bind("localhost")
        self._views = app.view_functions
        self._upload_bytes = upload_bytes
        self.budget = budget

    def _needs_device_token(self, method: str, path: str) -> bool:
        if path.startswith("/"):
            path = "/" + path.lstrip("/")  # as waitress hands it to the app
        try:
            endpoint, _ = self._routes.match(path, method)
        except HTTPException:  # not found, wrong method, a redirect: not an upload
            return False
        return bool(getattr(self._views.get(str(endpoint)), DEVICE_TOKEN_ATTRIBUTE, False))

    def admit(self, request: HTTPRequestParser, local_address: str) -> tuple[int, _Refusal | None]:
        """``(bytes reserved, None)`` when the body may come, else ``(0, why not)``."""
        headers = request.headers
        if not self._policy.host_allowed(headers.get("HOST"), local_address):
            body = "this kiosk does not answer to that host name (http.allowed_hosts)"
            return 0, _Refusal(421, "Misdirected Request", body)
        limit = _SMALL_BODY_BYTES
        if self._needs_device_token(request.command, request.path):
            refusal = self._policy.device_refusal(headers.get("AUTHORIZATION", ""))
            if refusal is not None:
                code, message = refusal
                challenge = (("WWW-Authenticate", BEARER_CHALLENGE),) if code == 401 else ()
                return 0, _Refusal(code, "Unauthorized" if code == 401 else "Forbidden", message, challenge)
            limit = self._upload_bytes
        size = limit if request.chunked else request.content_length
        if size > limit:
            return 0, _Refusal(413, "Request Entity Too Large", f"exceeds max_body of {limit}")
        if not self.budget.take(size):
            body = f"uploads in flight use all {self.budget.limit} bytes this kiosk allows; retry shortly"
            return 0, _Refusal(503, "Service Unavailable", body, (("Retry-After", "5"),))
        return size, None


class _GatedRequest(HTTPRequestParser):
    """waitress's request parser, stopping after the headers until the gate lets the body come."""

    def __init__(self, adj: Any, channel: _GuardedChannel) -> None:
        super().__init__(adj)
        self._channel = channel
        self._gated = False
        self._limit = 0
        self._held = 0

    def received(self, data: bytes) -> int:
        consumed = super().received(data)
        if self.headers_finished and not self._gated:
            self._gated = True
            if not self.completed:  # a body follows: decide before reading a byte of it
                self._held, refusal = self._channel.gate.admit(self, self._channel.local_address)
                self._limit = self._held
                if refusal is not None:
                    self.error, self.completed = refusal, True
                    self.expect_continue = False  # no "100 Continue": the body is not wanted
                    return len(data)  # whatever came with the headers is dropped unread
        elif self.chunked and not self.completed and self.body_bytes_received > self._limit:
            self.error = _Refusal(413, "Request Entity Too Large", f"exceeds max_body of {self._limit}")
            self.completed = True
        return consumed

    def release(self) -> None:
        """Give the body's share of the budget back (idempotent)."""
        held, self._held = self._held, 0
        if held:
            self._channel.gate.budget.give_back(held)

    def close(self) -> None:
        super().close()
        self.release()


def _local_address(sock: Any) -> str:
    try:
        return str(ipaddress.ip_address(sock.getsockname()[0].partition("%")[0]))
    except (OSError, ValueError, IndexError):  # a unix socket, or already closed
        return ""


class _GuardedChannel(HTTPChannel):
    """A waitress connection that keeps to its :class:`ConnectionLimits`."""

    error_task_class = _JsonErrorTask
    task_class = _Task
    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    gate: ClassVar[_BodyGate]

    def __init__(self, server: BaseWSGIServer, sock: Any, addr: Any, adj: Any, map: Any = None) -> None:
        self.request_began: float | None = None
        self.request_bytes = 0
        self.progress_at = time.monotonic()  # last byte read or sent, or when output began waiting
        self.parked = False  # the next request waits for the output to drain
        self._writing = False
        self.local_address = _local_address(sock)
        # The kernel's share of unsent output is bounded too: its autotuning grows a connection's
        # send buffer up to 4 MB (tcp_wmem), i.e. 40 s of a live stream queued for a slow viewer.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.limits.output_bytes)
        super().__init__(server, sock, addr, adj, map)
        self.parser_class = functools.partial(_GatedRequest, channel=self)
        self._admit()

    @property
    def client(self) -> str:
        return str(self.addr[0] if isinstance(self.addr, tuple) else self.addr)

    @property
    def output_pending(self) -> int:
        return self.total_outbufs_len

    @property
    def idle(self) -> bool:
        waiting = self.request is not None or self.requests or self.output_pending
        return not waiting and self.request_began is None

    def _admit(self) -> None:
        """On accept: turn away an address over its share; when full, close the longest idle one."""
        channels = [c for c in self._map.values() if isinstance(c, _GuardedChannel)]
        if sum(1 for c in channels if c.client == self.client) > self.limits.per_client:
            log.warning("refused a connection: %s already holds %d", self.client, self.limits.per_client)
            self.close()
        elif len(channels) > self.limits.total:
            idle = [c for c in channels if c is not self and c.idle]
            if not idle:
                log.warning("refused a connection: all %d are busy", self.limits.total)
                self.close()
                return
            victim = min(idle, key=lambda c: c.progress_at)
            log.info("closed the longest idle connection to make room", extra={"client": victim.client})
            victim.handle_close()

    def received(self, data: bytes) -> bool:
        if data:
            self.progress_at = time.monotonic()
        if data and self.request is None:
            self.request_began, self.request_bytes = time.monotonic(), 0
        self.request_bytes += len(data)
        result = super().received(data)
        if self.request is None:  # complete (or refused): nothing is being waited for
            self.request_began = None
        return result

    def send(self, data: bytes, do_close: bool = True) -> int:
        sent = super().send(data, do_close)
        if sent:
            self.progress_at = time.monotonic()
        return sent

    def write_soon(self, data: bytes) -> int:
        if data and not self.output_pending:
            self.progress_at = time.monotonic()  # the client's time to read this starts now
        self._writing = True
        try:
            return super().write_soon(data)
        finally:
            self._writing = False

    def _flush_outbufs_below_high_watermark(self) -> None:
        # A task writing its answer waits for the client (bounded by write_timeout_s). Between two
        # pipelined requests waitress would wait too, holding a worker for a client that does not
        # read: instead the next service() parks.
        if self._writing:
            super()._flush_outbufs_below_high_watermark()

    def service(self) -> None:
        if self.output_pending > self.limits.output_bytes // 2:
            self.parked = True  # before the trigger: the loop then sees it and resumes us
            self.server.pull_trigger()
            return
        super().service()

    def writable(self) -> bool:
        return bool(super().writable()) or self.parked

    def handle_write(self) -> None:
        if self.parked:
            self._flush_exception(self._flush_some_if_lockable)
            if self.output_pending <= self.limits.output_bytes // 2:
                self.parked = False
                if self.connected:
                    self.server.add_task(self)
        super().handle_write()

    def handle_close(self) -> None:
        for request in [self.request, *list(self.requests)]:
            if isinstance(request, _GatedRequest):
                request.release()  # a parked or half-received body will never be read now
        super().handle_close()

    def overdue(self, now: float) -> bool:
        """A request still arriving after its grace plus what its bytes so far bought.

        Not while a response is being made: waitress reads no further until it is sent.
        """
        if self.request_began is None or self.requests:
            return False
        return now - self.request_began > self.limits.grace_s + self.request_bytes / self.limits.min_rate

    def stalled(self, now: float) -> bool:
        """Output waiting that the client has not taken a byte of for ``write_timeout_s``."""
        return self.output_pending > 0 and now - self.progress_at > self.limits.write_timeout_s


class _TlsChannel(_GuardedChannel):
    """A :class:`_GuardedChannel` speaking TLS through memory BIOs (see the module docstring).

    Lock order: waitress's ``outbuf_lock`` (held by a worker flushing) before ``_tls_lock``;
    nothing is called with ``_tls_lock`` held that could take another lock.
    """

    tls_context: ClassVar[ssl.SSLContext]

    def __init__(self, server: BaseWSGIServer, sock: Any, addr: Any, adj: Any, map: Any = None) -> None:
        self._tls_lock = threading.Lock()
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = self.tls_context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._cipher = bytearray()  # encrypted, not yet taken by the socket
        self.handshaken = False
        super().__init__(server, sock, addr, adj, map)

    @property
    def output_pending(self) -> int:
        return self.total_outbufs_len + len(self._cipher)

    def handle_read(self) -> None:
        try:
            raw = wasyncore.dispatcher.recv(self, self.adj.recv_bytes)
        except OSError:
            self.handle_close()
            return
        if not raw:
            return  # the client closed; recv() has closed this side too
        now = time.monotonic()
        self.progress_at = now
        if not self.handshaken:  # the handshake is part of the first request's arrival
            if self.request_began is None:
                self.request_began, self.request_bytes = now, 0
            self.request_bytes += len(raw)
        try:
            plain, ended = self._decrypt(raw)
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS failed", extra={"client": self.client, "reason": str(exc)})
            self.handle_close()
            return
        if plain:
            self.last_activity = time.time()
            self.received(plain)
        if ended:
            self.handle_close()

    def _decrypt(self, raw: bytes) -> tuple[bytes, bool]:
        """Feed ``raw`` to TLS: ``(application bytes, whether the client said close_notify)``."""
        with self._tls_lock:
            self._incoming.write(raw)
            try:
                if not self.handshaken:
                    try:
                        self._tls.do_handshake()
                    except ssl.SSLWantReadError:
                        return b"", False
                    self.handshaken = True
                    self.request_began = None
                plain = bytearray()
                # Read until TLS wants more: a poll loop never learns of bytes TLS already holds.
                while True:
                    try:
                        chunk = self._tls.read(_TLS_READ_BYTES)
                    except ssl.SSLWantReadError:
                        return bytes(plain), False
                    except ssl.SSLZeroReturnError:
                        return bytes(plain), True
                    if not chunk:
                        return bytes(plain), True
                    plain += chunk
            finally:
                self._cipher += self._outgoing.read()  # handshake records, alerts, session tickets
                self._push_cipher()

    def _push_cipher(self) -> None:
        """Send encrypted bytes as far as the socket takes them (``_tls_lock`` held)."""
        while self._cipher and self.socket is not None:
            try:
                sent = self.socket.send(self._cipher[:_TLS_CIPHER_BYTES])
            except BlockingIOError:
                return
            if not sent:
                return
            del self._cipher[:sent]
            self.progress_at = time.monotonic()

    def send(self, data: bytes, do_close: bool = True) -> int:
        """Encrypt what fits in the bounded buffer; 0 means "try later", as for a full socket.

        A peer that went away, or TLS already shut down because the connection is closing (a
        worker may still be writing a stream's next part), ends the connection quietly, as
        waitress's own ``send`` treats a disconnected plain socket; other socket errors go up to
        waitress, which logs them and closes the connection.
        """
        with self._tls_lock:
            try:
                self._push_cipher()
                if not self.handshaken or len(self._cipher) >= _TLS_CIPHER_BYTES:
                    return 0
                accepted = self._tls.write(data[:_TLS_PLAIN_BYTES])
                self._cipher += self._outgoing.read()
                self._push_cipher()
            except ssl.SSLError:
                self.will_close = True
                return 0
            except OSError as exc:
                if exc.errno not in wasyncore._DISCONNECTED:
                    raise
                self.will_close = True
                return 0
        return accepted

    def writable(self) -> bool:
        return super().writable() or bool(self._cipher)

    def handle_write(self) -> None:
        try:
            with self._tls_lock:
                self._push_cipher()
        except OSError:
            self.handle_close()
            return
        if self._cipher and (self.will_close or (self.close_when_flushed and not self.total_outbufs_len)):
            return  # the answer's last records are still on their way: close once they are out
        super().handle_write()

    def handle_close(self) -> None:
        if self.handshaken and self.socket is not None:
            with self._tls_lock, contextlib.suppress(ssl.SSLError, OSError):
                self._tls.unwrap()  # close_notify, sent if the socket takes it at once
            with self._tls_lock, contextlib.suppress(OSError):
                self._cipher += self._outgoing.read()
                self._push_cipher()
        super().handle_close()


def tls_context(http: HttpSection) -> ssl.SSLContext | None:
    """The HTTPS context ``[http]`` asks for (None: plain HTTP); a :class:`ConfigError` naming the
    key when a file is unusable, so the daemon stops at start with one line, not a traceback."""
    if not http.enabled or http.tls_cert is None or http.tls_key is None:
        return None
    try:
        return server_context(http.tls_cert, http.tls_key)
    except CertificateError as exc:
        raise ConfigError(f"http.tls_{exc.which} {exc.path}: {exc.reason}") from None


class WebServer:
    """Serves a WSGI app with waitress in one named daemon thread, with an explicit ``stop()``.

    waitress's ``run()`` returns only once every connection is gone, which an open MJPEG viewer
    or a keep-alive connection prevents. So the thread drives waitress's event loop itself, one
    poll at a time, and on ``stop()`` closes every connection from that same thread (the loop is
    not thread-safe), after the app's live streams were told to end, then stops the workers.
    With ``tls`` (an :class:`ssl.SSLContext`, see :func:`device.certificates.server_context`) it
    serves HTTPS only.
    """

    def __init__(
        self,
        app: Flask,
        bind: str,
        port: int,
        *,
        threads: int = 8,
        limits: ConnectionLimits | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            # A host name may resolve to several addresses, i.e. several sockets and ports.
            raise ValueError(
                f"bind must be an IP address such as 127.0.0.1 or 0.0.0.0, got {bind!r}"
            ) from None
        streams = app.extensions.get(STREAMS_EXTENSION)
        if isinstance(streams, LiveStreams) and streams.limit >= threads:
            # each viewer holds a worker: with as many viewers as workers, /healthz would wait
            raise ValueError(f"max_streams ({streams.limit}) must be below the worker threads ({threads})")
        self.app = app
        self.bind = bind
        self.port = port
        """The bound port once started (the free port picked when 0 was asked for)."""
        self._threads = threads
        self.limits = limits or ConnectionLimits()
        self.tls = tls
        self._map: dict[int, Any] = {}
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def running(self) -> bool:
        """True while the serving thread is alive (between ``start()`` and the end of ``stop()``)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def connections(self) -> int:
        """Client connections open now."""
        return sum(1 for c in list(self._map.values()) if isinstance(c, _GuardedChannel))

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self) -> None:
        """Bind and serve; raises ``OSError`` at once when the port cannot be bound."""
        if self._server is not None:
            raise RuntimeError("the web server was already started")
        upload = self.app.config.get("MAX_CONTENT_LENGTH") or _DEFAULT_UPLOAD_BYTES
        server = create_server(
            self.app,
            map=self._map,
            host=self.bind,
            port=self.port,
            threads=self._threads,
            ident="movement-edge",
            url_scheme="https" if self.tls else "http",
            outbuf_high_watermark=self.limits.output_bytes,
            # the map also holds the listening socket and the trigger; beyond ``total`` the
            # channels themselves make room (see _GuardedChannel._admit), so waitress never stops
            # accepting
            connection_limit=self.limits.total + 3,
            channel_timeout=self.limits.idle_s,
            cleanup_interval=min(self.limits.idle_s, _SWEEP_INTERVAL_S),
            # The upload limit at the transport too: waitress refuses an oversized body from its
            # headers instead of spooling it to disk first (its own default allows 1 GB).
            max_request_body_size=upload + 1,
        )
        gate = _BodyGate(self.app, upload, _BodyBudget(self.limits.bodies_bytes or 2 * upload))
        # This server's limits on every connection it accepts (a class per server, as waitress
        # constructs channels itself from ``channel_class``).
        attributes: dict[str, Any] = {"limits": self.limits, "gate": gate}
        if self.tls is not None:
            attributes["tls_context"] = self.tls
        base = _GuardedChannel if self.tls is None else _TlsChannel
        server.channel_class = type("Channel", (base,), attributes)
        self._server = server
        self.port = int(server.effective_port)
        self._thread = threading.Thread(target=self._serve, args=(server,), name="http", daemon=True)
        self._thread.start()
        log.info("web server on %s", self.url)

    def stop(self, timeout_s: float = 10.0) -> None:
        """End live streams, close every connection, stop the workers; idempotent.

        The app's live streams stay closed afterwards: a new server needs a new app.
        """
        if self._server is None or self._thread is None:
            return
        if not self._stopping.is_set():
            streams = self.app.extensions.get(STREAMS_EXTENSION)
            if isinstance(streams, LiveStreams):
                streams.closing.set()
            self._stopping.set()
            with contextlib.suppress(OSError):  # the loop already ended and closed its trigger
                self._server.pull_trigger()  # wake the poll at once
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("the web server thread did not stop within %.1f s", timeout_s)

    def _serve(self, server: BaseWSGIServer) -> None:
        swept = time.monotonic()
        try:
            while not self._stopping.is_set():
                wasyncore.loop(
                    timeout=min(server.adj.asyncore_loop_timeout, _SWEEP_INTERVAL_S),
                    use_poll=server.adj.asyncore_use_poll,
                    map=self._map,
                    count=1,
                )
                now = time.monotonic()
                if now - swept >= _SWEEP_INTERVAL_S:
                    self._close_overdue(now)
                    swept = now
        finally:
            # Connections first: a worker writing to one gets ClientDisconnected at once instead of
            # waiting for a loop that no longer runs. The trigger stays open until the workers are
            # gone, because each of them pulls it when its task ends.
            for channel in [c for c in self._map.values() if isinstance(c, HTTPChannel)]:
                channel.handle_close()
            server.task_dispatcher.shutdown(timeout=_WORKER_STOP_TIMEOUT_S)
            server.close()  # the listening socket and the trigger
            self._map.clear()

    def _close_overdue(self, now: float) -> None:
        """Close connections whose request is too slow in coming, or whose answer nobody takes.

        From the loop's own thread; closing also wakes a worker waiting to write to it.
        """
        for channel in [c for c in self._map.values() if isinstance(c, _GuardedChannel)]:
            if channel.overdue(now):
                extra = {"client": channel.client, "bytes": channel.request_bytes}
                log.warning("closed a slow connection", extra=extra)
                channel.handle_close()
            elif channel.stalled(now):
                log.warning(
                    "closed a connection that does not read its answers",
                    extra={"client": channel.client, "unsent_bytes": channel.output_pending},
                )
                channel.handle_close()
