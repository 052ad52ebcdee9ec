"""The kiosk's web face in a process of its own, so the pipeline does not pay for the page (issue 18).

In the daemon's process the web workers shared one interpreter, and its GIL, with the pipeline.
With 50 clients polling ``/api/status`` back to back (``python -m benchmarks load``) the daemon
used less than one core in all, three quarters of it in the web threads, and the pipeline kept
0.4-0.59x its frame rate; a shorter GIL switch interval (5, 1, 0.2 ms) did not change that,
because clients polling back to back always have a request ready to take the interpreter. In a
process of its own the web face costs the pipeline only CPU time, but all it can take: without a
bound the same load left the pipeline 0.27x (the web process used a core, wrk and the pipeline
shared the other). So the web process keeps to a CPU budget (:class:`CpuBudget`,
:data:`CPU_SHARE` of one core): a flood of requests waits, the pipeline does not. A lower
priority (``nice``) would be the other way, but the kiosk's unit refuses ``setpriority``.

**The daemon side**, :class:`WebProcess`, starts ``python -m device.web_process`` with one end
of a Unix socket pair and then, from two threads of its own:

* answers the calls of the web process: its :class:`~device.status.StatusBoard`
  (:meth:`~device.status.StatusBoard.export`, everything but the live view) and the newest
  :class:`~device.status.LiveView`, which a request fetches when the web process's copy is
  older than :data:`FRESH_S` (and every status body and metrics scrape afresh), so every route
  reads what it read before, and the percentiles and JSON of ``/api/status`` are computed over
  there; the model catalog (list, install, activate, revoke keys); and the live-stream bound,
  whose count stays in the daemon (``WebProcess.app``'s :class:`~device.web.LiveStreams`);
* pushes the newest live view every :data:`VIEW_INTERVAL_S` while somebody watches the live
  stream. Nothing else crosses while nobody asks: pushing the board ten times a second cost the
  one-core kiosk 3 ms of CPU per frame (half in each process) for a page nobody looked at.

**The web process** builds the same app (:func:`device.web.create_app`) over its copy of the
board and serves it with the same :class:`~device.http_server.WebServer` (TLS, slow-client and
body limits, access policy), so every route answers as it did; only a flood of requests is
slowed, by the budget. It ends when the daemon closes its end of the socket (or dies), or on
SIGTERM/SIGINT.

What crosses the socket is data, never code, either way: the daemon sends the board, views and
settings encoded by :mod:`device.wire` (JSON and raw array buffers, only the classes it names);
the web process, the one facing the network, sends a JSON header line and raw bytes (a bundle, a
revocation list).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from flask import Flask

from device.access import AccessPolicy
from device.config import Config, ConfigError, HttpSection
from device.status import BOARD_WIRE, LiveView, StatusBoard
from device.web import STREAMS_EXTENSION, LiveStreams, ModelCatalog, create_app

log = logging.getLogger(__name__)

FRESH_S = 0.1
"""A request finds the web process's copy of the board and live view at most this old: an older
one is fetched from the daemon first (:meth:`_BoardCopy.refresh`)."""
FETCH_TIMEOUT_S = 1.0
"""How long a request waits for a fresh board before it is answered from the last copy (a
daemon too busy to answer, or a hung one: ``/healthz`` then says so from the copy's age)."""
VIEW_INTERVAL_S = 0.05
"""While somebody watches the live stream, a new live view reaches it this often: twice the
stream's 10 parts/s, so each part finds a newer frame than the last (at the same rate, one in a
few would find none)."""
CPU_SHARE = 0.1
"""The web process's CPU budget, a share of one core (:class:`CpuBudget`). Measured with 50
clients polling ``/api/status`` back to back (``python -m benchmarks load``, other work loading
the two cores): about 55 answers a second (p50 0.9 s, none failed), what 50 status pages polling
once a second ask for, and the pipeline kept 0.94-1.04x its frame rate. A fifth of a core
answered 130-160 a second but left the pipeline 0.79-0.89x."""
_CHANGING_CALLS = frozenset({"install", "activate", "revoke"})
"""Calls that change the board: their answer waits for the board it changed to reach the web
process, so ``/api/status`` right after a refused upload already says ``rejected``."""
_START_TIMEOUT_S = 60.0  # importing Flask, OpenCV and the app, and binding
_STOP_TIMEOUT_S = 10.0


class CpuBudget:
    """Keeps this process within ``share`` of one core by making requests wait their turn.

    Needs no privilege, unlike a lower priority (the kiosk's unit refuses ``setpriority``: its
    ``SystemCallFilter=`` drops ``@resources``), and holds whatever else runs: before a request,
    if the process used more CPU time since the period began than ``share`` of the time passed,
    the request waits until it has not. A period ends once it is within budget and at least
    ``period_s`` long, so quiet time earns no credit for a later burst.
    """

    def __init__(
        self,
        share: float,
        period_s: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.process_time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.share, self.period_s = share, period_s
        self._clock, self._cpu, self._sleep = clock, cpu, sleep
        self._lock = threading.Lock()
        self._began, self._used_before = clock(), cpu()

    def wait(self) -> None:
        """Wait while the process is over budget (a ``before_request`` hook: returns nothing)."""
        with self._lock:
            now, used = self._clock(), self._cpu() - self._used_before
            elapsed = now - self._began
            pause = used / self.share - elapsed
            if pause <= 0 and elapsed >= self.period_s:
                self._began, self._used_before = now, self._cpu()
        if pause > 0:
            self._sleep(min(pause, self.period_s))


@dataclass(frozen=True)
class WebSettings:
    """What the web process needs of the daemon's configuration."""

    http: HttpSection
    device_id: str
    device_name: str
    privacy: bool
    log_level: str
    max_streams: int


_WIRE = BOARD_WIRE.extended(WebSettings, HttpSection)
"""The daemon's messages to the web process: the board, views and settings as data, no code."""


def _message(kind: str, payload: bytes = b"", **fields: Any) -> bytes:
    """A message from the web process: one JSON line, then the raw payload."""
    return json.dumps({"kind": kind, **fields}).encode() + b"\n" + payload


def _parse(message: bytes) -> tuple[dict[str, Any], bytes]:
    header, _, payload = message.partition(b"\n")
    fields = json.loads(header)
    if not isinstance(fields, dict) or not isinstance(fields.get("kind"), str):
        raise ValueError("a message from the web process without a kind")
    return fields, payload


class WebProcess:
    """The web face in a child process, fed from ``status`` and answering with ``models``.

    ``app`` is the same app over this process's own board and catalog, never served here: an
    in-process WSGI caller (the schema tests) reaches the API without a socket, and its live
    streams are the bound the web process's viewers are counted against.
    """

    def __init__(self, config: Config, status: StatusBoard, models: ModelCatalog) -> None:
        self.status = status
        self.models = models
        self.app: Flask = create_app(
            status,
            access_policy=AccessPolicy.from_config(config.http),
            max_upload_mb=config.http.max_upload_mb,
            models=models,
            device_name=config.device.name,
        )
        self.streams: LiveStreams = self.app.extensions[STREAMS_EXTENSION]
        device = config.device
        self.settings = WebSettings(
            config.http, device.id, device.name, device.privacy, device.log_level, self.streams.limit
        )
        self.port: int | None = None
        """The bound port once started (the free port picked when 0 was asked for)."""
        self._socket: socket.socket | None = None
        self._link: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The web process's id while it runs."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the web process and wait until it serves; raises :class:`OSError` when it cannot
        bind (as :meth:`device.http_server.WebServer.start` does) and :class:`ConfigError` for an
        unusable certificate."""
        ours, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "device.web_process", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
            )
        self._socket = ours
        self._link = Connection(os.dup(ours.fileno()))
        # the board and the view come first: the first request already finds them
        self._send(("start", self.settings, self.status.export(), self.status.view))
        if not self._link.poll(_START_TIMEOUT_S):
            self.stop()
            raise OSError(f"the web process did not start within {_START_TIMEOUT_S:.0f} s")
        try:
            fields, _ = _parse(self._link.recv_bytes())
        except (EOFError, OSError, ValueError):
            self.stop()
            raise OSError("the web process ended before it served (see its log above)") from None
        if fields["kind"] != "ready":
            self.stop()
            error = ConfigError if fields.get("config") else OSError
            raise error(str(fields.get("error")))
        self.port = int(fields["port"])
        for name, target in (("web-push", self._push), ("web-calls", self._answer_calls)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("web process started", extra={"pid": self._process.pid, "port": self.port})

    def stop(self) -> None:
        """End the live streams, close the socket (the web process then stops), wait for it; idempotent."""
        self.streams.closing.set()
        self._stop.set()
        if self._socket is not None:  # wakes this side's reader too, which a close would not
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
        process, self._process = self._process, None
        if process is not None:
            try:
                process.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("the web process did not stop within %.0f s; killed", _STOP_TIMEOUT_S)
                process.kill()
                process.wait(_STOP_TIMEOUT_S)
        for thread in self._threads:
            thread.join(_STOP_TIMEOUT_S)
        with self._send_lock:
            if self._link is not None:
                self._link.close()
            if self._socket is not None:
                self._socket.close()

    def _send(self, message: tuple[Any, ...]) -> bool:
        """Send one message (:data:`_WIRE`); False once the link is gone."""
        with self._send_lock:
            return self._write(message)

    def _send_board(self, with_view: bool = False) -> bool:
        """The board as it is now (and the live view), exported under the send lock: boards reach
        the web process in the order they were taken, so a call's answer, sent after the board it
        changed or asked for, is never followed by an older one (the page would show the previous
        model state again)."""
        with self._send_lock:
            view = self.status.view if with_view else None
            sent = self._write(("board", self.status.export()))
            return sent and (view is None or self._write(("view", view)))

    def _write(self, message: tuple[Any, ...]) -> bool:
        if self._link is None or self._link.closed:
            return False
        try:
            self._link.send_bytes(_WIRE.encode(message))
        except (OSError, ValueError):
            return False
        return True

    def _push(self) -> None:
        """While somebody watches the live stream, the live view every :data:`VIEW_INTERVAL_S`
        when it changed."""
        sent: LiveView | None = None
        while not self._stop.wait(VIEW_INTERVAL_S):
            view = self.status.view
            if view is not None and view is not sent and self.streams.active:
                if not self._send(("view", view)):
                    return
                sent = view

    def _answer_calls(self) -> None:
        """Read the web process's calls; each runs in a thread of its own (an install takes
        seconds, and a viewer arriving meanwhile must not wait for it)."""
        assert self._link is not None
        while not self._stop.is_set():
            try:
                fields, payload = _parse(self._link.recv_bytes())
            except (EOFError, OSError):
                if not self._stop.is_set():
                    log.error("the web process ended; the watchdog is no longer fed, so systemd restarts us")
                return
            except ValueError as exc:
                log.error("unreadable message from the web process", extra={"reason": str(exc)})
                continue
            call = threading.Thread(target=self._answer, args=(fields, payload), name="web-call", daemon=True)
            call.start()

    def _answer(self, fields: dict[str, Any], payload: bytes) -> None:
        if fields["kind"] == "board":  # the board and view go as pushes, in order; then the answer
            self._send_board(with_view=True)
            self._send(("reply", fields.get("id"), "ok", None))
            return
        force = bool(fields.get("force"))
        calls: dict[str, Callable[[], Any]] = {
            "list": self.models.list,
            "install": lambda: self.models.install(payload, force=force),
            "activate": lambda: self.models.activate(str(fields.get("version")), force=force),
            "revoke": lambda: self.models.revoke_keys(payload),
            "stream": self.streams.acquire,
            "unstream": self.streams.release,
        }
        call = calls.get(fields["kind"])
        try:
            if call is None:
                raise RuntimeError(f"unknown call {fields['kind']!r}")
            reply: tuple[Any, ...] = ("reply", fields.get("id"), "ok", call())
        except ValueError as exc:  # refused (HTTP 422), the running model stays
            reply = ("reply", fields.get("id"), "refused", str(exc))
        except Exception:  # a bug: logged here, a 500 over there
            log.exception("web call failed", extra={"call": fields["kind"]})
            reply = ("reply", fields.get("id"), "failed", "internal error")
        if fields["kind"] in _CHANGING_CALLS:  # whatever the outcome: a refusal is on the board too
            self._send_board()
        self._send(reply)


# ---------------------------------------------------------------------- the web process


class _Daemon:
    """The web process's end of the socket: the daemon's pushes in, calls out."""

    def __init__(self, link: Connection, board: StatusBoard, gone: threading.Event) -> None:
        self._link, self._board, self._gone = link, board, gone
        self._send_lock = threading.Lock()
        self._pending: dict[int, Future[Any]] = {}
        self._ids = itertools.count()
        self._ready = threading.Event()  # no call may reach the daemon before "ready" does

    def ready(self, port: int) -> None:
        """Tell the daemon the port served; from now on calls go out."""
        self.send("ready", port=port)
        self._ready.set()

    def send(self, kind: str, payload: bytes = b"", **fields: Any) -> None:
        with self._send_lock:
            self._link.send_bytes(_message(kind, payload, **fields))

    def call(self, kind: str, payload: bytes = b"", timeout: float | None = None, **fields: Any) -> Any:
        """Ask the daemon and wait for its answer; a refusal is a :class:`ValueError` (HTTP 422),
        no answer within ``timeout`` seconds a :class:`TimeoutError`."""
        future: Future[Any] = Future()
        call_id = next(self._ids)
        self._pending[call_id] = future
        try:
            self._ready.wait()
            if self._gone.is_set():
                raise RuntimeError("the daemon is gone")
            self.send(kind, payload, id=call_id, **fields)
            return future.result(timeout)
        finally:
            self._pending.pop(call_id, None)

    def receive(self) -> None:
        """Apply the daemon's pushes and hand answers to their callers until the socket closes."""
        try:
            while True:
                message = _WIRE.decode(self._link.recv_bytes())
                if message[0] == "board":
                    self._board.restore(message[1])
                elif message[0] == "view":
                    self._board.set_view(message[1])
                elif message[0] == "reply":
                    _, call_id, outcome, value = message
                    future = self._pending.get(call_id)
                    if future is None:
                        continue
                    if outcome == "ok":
                        future.set_result(value)
                    else:
                        future.set_exception((ValueError if outcome == "refused" else RuntimeError)(value))
        except (EOFError, OSError):
            pass
        finally:
            self._gone.set()
            for future in list(self._pending.values()):
                if not future.done():
                    future.set_exception(RuntimeError("the daemon is gone"))


class _BoardCopy(StatusBoard):
    """The daemon's board and live view as the web process sees them: fetched before a request
    when older than :data:`FRESH_S`, and afresh for each :meth:`snapshot` (a status body, a
    metrics scrape, the page), which is then as current as one taken in the daemon
    (``/api/status`` reuses it for a quarter second)."""

    def __init__(self, *args: Any, fetch: Callable[[], object], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fetch = fetch
        self._fetching = threading.Lock()  # one fetch at a time; the requests meanwhile wait for it
        self._fetched_at = -math.inf

    def refresh(self, max_age_s: float = FRESH_S) -> None:
        """Have the daemon push its board and view unless the copy is younger than ``max_age_s``; when
        the daemon is gone or does not answer in time, the copy stays as it was."""
        with self._fetching:
            if time.monotonic() - self._fetched_at < max_age_s:
                return
            asked = time.monotonic()
            try:
                self._fetch()  # the daemon's answer follows the board and view it pushed
            except (RuntimeError, TimeoutError):
                return
            self._fetched_at = asked

    def snapshot(self) -> dict[str, Any]:
        self.refresh(0.0)
        return super().snapshot()


class _RemoteCatalog:
    """:class:`~device.web.ModelCatalog` answered by the daemon."""

    def __init__(self, daemon: _Daemon) -> None:
        self._daemon = daemon

    def list(self) -> list[dict[str, Any]]:
        return self._daemon.call("list")

    def install(self, data: bytes, force: bool) -> dict[str, Any]:
        return self._daemon.call("install", data, force=force)

    def activate(self, version: str, force: bool) -> dict[str, Any]:
        return self._daemon.call("activate", version=version, force=force)

    def revoke_keys(self, data: bytes) -> dict[str, Any]:
        return self._daemon.call("revoke", data)


class _RemoteStreams(LiveStreams):
    """The live-stream bound, counted in the daemon (``WebProcess.streams``)."""

    def __init__(self, limit: int, daemon: _Daemon) -> None:
        super().__init__(limit)
        self._daemon = daemon

    def acquire(self) -> bool:
        return not self.closing.is_set() and bool(self._daemon.call("stream"))

    def release(self) -> None:
        with contextlib.suppress(RuntimeError):  # the daemon is gone: nothing left to count
            self._daemon.call("unstream")


def serve(link: Connection) -> int:
    """The web process: the daemon's settings first, then serve until the daemon goes."""
    from device import logs
    from device.http_server import WebServer, tls_context

    kind, settings, exported, view = _WIRE.decode(link.recv_bytes())
    if kind != "start" or not isinstance(settings, WebSettings):
        print("device.web_process: the daemon's first message was not its settings", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    gone = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: gone.set())
    board = _BoardCopy(
        settings.device_id,
        privacy=settings.privacy,
        fetch=lambda: daemon.call("board", timeout=FETCH_TIMEOUT_S),  # the link, made next
    )
    board.restore(exported)
    if view is not None:
        board.set_view(view)
    daemon = _Daemon(link, board, gone)
    http = settings.http
    app = create_app(
        board,
        access_policy=AccessPolicy.from_config(http),
        max_upload_mb=http.max_upload_mb,
        models=_RemoteCatalog(daemon),
        device_name=settings.device_name,
        streams=_RemoteStreams(settings.max_streams, daemon),
    )
    app.before_request(CpuBudget(CPU_SHARE).wait)
    app.before_request(board.refresh)
    try:
        server = WebServer(app, str(http.bind), http.port, tls=tls_context(http))
        server.start()
    except ConfigError as exc:
        daemon.send("error", error=str(exc), config=True)
        return 1
    except OSError as exc:
        daemon.send("error", error=f"http {http.bind}:{http.port}: {exc.strerror or exc}")
        return 1
    receiver = threading.Thread(target=daemon.receive, name="daemon-link", daemon=True)
    receiver.start()
    daemon.ready(server.port)
    while not gone.wait(1.0):  # a timeout keeps the main thread responsive to signals
        pass
    server.stop()
    link.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m device.web_process FD (started by the daemon, not by hand)", file=sys.stderr)
        return 2
    return serve(Connection(int(args[0])))


if __name__ == "__main__":
    # Run the imported module, not this ``__main__`` copy: ``serve`` checks the settings against
    # ``device.web_process.WebSettings``, the class the wire decodes them as.
    from device.web_process import main as web_process_main

    raise SystemExit(web_process_main())
