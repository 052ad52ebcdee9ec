"""The kiosk's HTTP face (DESIGN.md §6): status page, live view, JSON API, health, metrics, models.

:func:`create_app` builds a Flask app that only *reads* the :class:`~device.status.StatusBoard`
(and, for model management, calls a :class:`ModelCatalog`), so the pipeline never waits on a
browser. :class:`WebServer` runs it under waitress in one named thread with an explicit
``stop()``, because the daemon's shutdown must be ordered and bounded (STYLE.md principle 6).

Routes: ``/`` the status page; ``/frame.jpg`` and ``/stream.mjpg`` the live view with the
skeleton; ``/api/status`` the status snapshot; ``/healthz`` (200 only while frames flow and a model
is loaded); ``/metrics`` Prometheus text; ``GET /api/models``; ``POST /api/models[?force=1]`` (a
bundle as the body or as the multipart file field ``bundle``); ``POST
/api/models/<version>/activate[?force=1]``; ``/api/openapi.json`` the OpenAPI 3 description of
all of these (``device/openapi.json``). Errors under ``/api/`` are JSON ``{"error": …}``, and so
are the refusals waitress makes itself (a body over the upload limit, a malformed request).

The two POSTs need ``Authorization: Bearer <token>``. Only the token's SHA-256 is held and it is
compared in constant time; without a configured token they are disabled (403), so a kiosk on an
open network cannot be handed a model by whoever finds it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from flask import Flask, Response, abort, jsonify, render_template, request
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server
from waitress.task import ErrorTask
from werkzeug.exceptions import HTTPException

from device.overlay import draw_view, encode_jpeg
from device.status import LiveView, StatusBoard

log = logging.getLogger(__name__)

STREAMS_EXTENSION = "movement_edge.streams"
"""Key of the app's :class:`LiveStreams` in ``app.extensions`` (``WebServer.stop`` ends them)."""

FRAME_MAX_AGE_S = 5.0
"""``/healthz`` fails when the newest camera frame is older than this."""

_STREAM_INTERVAL_S = 0.1  # at most 10 parts per second per viewer
_STREAM_HEARTBEAT_S = 1.0  # resend an unchanged frame this often, so a gone viewer is noticed
_BOUNDARY = "frame"
_NO_STORE = {"Cache-Control": "no-store"}
_STATUS_MAX_AGE_S = 0.25
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_WORKER_STOP_TIMEOUT_S = 5.0
_SWEEP_INTERVAL_S = 0.5  # how often the serving loop looks for overdue requests
# waitress buffers up to 16 MB per connection by default: for a viewer on a slow link that is a
# live view minutes behind. Above this the stream's worker waits, then sends the newest frame.
_OUTPUT_BUFFER_BYTES = 512 * 1024
_QUANTILES = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))
OPENAPI = Path(__file__).with_name("openapi.json")
"""The OpenAPI 3 description of the HTTP API, served at ``/api/openapi.json``."""
_COUNTER_HELP = {
    "frames_captured": "Frames read from the source",
    "frames_dropped": "Frames skipped because the pipeline was busy",
    "frames_processed": "Frames that went through pose estimation",
    "frames_without_person": "Processed frames in which nobody was found",
    "classifications": "Windows classified",
    "source_reopens": "Times the frame source was reopened after a failure",
    "files_skipped": "Playlist files skipped because they could not be played",
    "frames_undecodable": "Frames a video's header announced that did not decode",
    "outbox_errors": "Classifications and activity events the outbox could not store",
    "activity_events": "Activity events published (start, rep, hold, end)",
}
_TRUE, _FALSE = frozenset({"1", "true", "yes"}), frozenset({"", "0", "false", "no"})
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Everything the page needs comes from the kiosk itself; nothing may be framed or injected.
    "Content-Security-Policy": "default-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
}


class ModelCatalog(Protocol):
    """The model store as the web API drives it; the daemon provides the implementation.

    ``install`` and ``activate`` raise :class:`ValueError` with a human message when they refuse
    (bad signature, unknown version, incompatible features); the running model must then stay
    active. Calls are serialized by the web app.
    """

    def list(self) -> list[dict[str, Any]]: ...

    def install(self, data: bytes, force: bool) -> dict[str, Any]: ...

    def activate(self, version: str, force: bool) -> dict[str, Any]: ...


class LiveStreams:
    """Bounds the MJPEG viewers and ends them all when the server stops.

    Each viewer holds a waitress worker thread for as long as it watches, so without a bound a
    few open browser tabs would leave no thread for ``/api/status`` or ``/healthz``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._active = 0

    @property
    def active(self) -> int:
        with self._lock:
            return self._active

    def acquire(self) -> bool:
        with self._lock:
            if self._active >= self.limit or self.closing.is_set():
                return False
            self._active += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._active -= 1


class _LiveJpeg:
    """The drawn and encoded newest view, shared by every viewer.

    Keyed by the view object's identity (a new :class:`LiveView` is set for each frame), so ten
    viewers of the same frame cost one drawing and one encoding, and none when nobody watches.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._view: LiveView | None = None
        self._jpeg = b""

    def of(self, view: LiveView) -> bytes:
        with self._lock:
            if view is not self._view:
                self._jpeg = encode_jpeg(draw_view(view))
                self._view = view
            return self._jpeg


def _mjpeg(status: StatusBoard, live: _LiveJpeg, closing: threading.Event) -> Iterator[bytes]:
    """``multipart/x-mixed-replace`` parts: each new view, at most 10 per second.

    A client that went away is noticed when a write fails (waitress then closes this generator),
    hence the heartbeat resend of an unchanged frame; ``closing`` ends it when the server stops.
    """
    sent: LiveView | None = None
    sent_at = 0.0
    while not closing.is_set():
        view = status.view
        now = time.monotonic()
        if view is not None and (view is not sent or now - sent_at >= _STREAM_HEARTBEAT_S):
            jpeg = live.of(view)
            head = f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
            yield head.encode("ascii") + jpeg + b"\r\n"
            sent, sent_at = view, now
        closing.wait(_STREAM_INTERVAL_S)


class _StatusCollector:
    """Prometheus metrics made from one ``status.snapshot()`` at scrape time.

    Reading the snapshot (rather than keeping prometheus-client metric objects up to date in the
    pipeline) keeps ``/metrics`` consistent with ``/api/status`` and costs nothing between scrapes.
    """

    def __init__(self, status: StatusBoard) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        snap = self._status.snapshot()
        fps = GaugeMetricFamily(
            "movement_edge_stage_fps",
            "Runs per second of each pipeline stage over the last 10 s",
            labels=["stage"],
        )
        duration = GaugeMetricFamily(
            "movement_edge_stage_duration_seconds",
            "Run time of each pipeline stage over its recent runs, by quantile",
            labels=["stage", "quantile"],
        )
        for stage, summary in snap["stages"].items():
            fps.add_metric([stage], summary["fps"])
            for quantile, key in _QUANTILES:
                if summary[f"{key}_ms"] is not None:
                    duration.add_metric([stage, quantile], summary[f"{key}_ms"] / 1000)
        latency = GaugeMetricFamily(
            "movement_edge_classification_latency_seconds",
            "From a window's last frame being captured to its classification, by quantile",
            labels=["quantile"],
        )
        for quantile, key in _QUANTILES if snap["latency_ms"] else ():
            latency.add_metric([quantile], snap["latency_ms"][key] / 1000)
        yield from (fps, duration, latency)
        for name, value in snap["counters"].items():
            help_text = _COUNTER_HELP.get(name, f"Status counter {name}")
            yield CounterMetricFamily(f"movement_edge_{name}", help_text, value=value)
        events = CounterMetricFamily(
            "movement_edge_activity_events",
            "Activity events per activity and type: reps counts repetitions, end counts sets",
            labels=["activity", "type"],
        )
        for (activity, kind), value in sorted(self._status.activity_counts().items()):
            events.add_metric([activity, kind], value)
        yield events
        yield CounterMetricFamily(
            "movement_edge_outbox_dropped",
            "Results dropped because the outbox was full",
            value=snap["outbox"]["dropped"],
        )
        gauges = {
            "outbox_depth": ("Results waiting in the outbox for the broker", snap["outbox"]["depth"]),
            "mqtt_connected": ("1 while the MQTT broker connection is up", snap["mqtt"]["connected"]),
            "uptime_seconds": ("Seconds since the daemon started", snap["uptime_s"]),
            "frames_flowing": ("1 while camera frames arrive", snap["frames_flowing"]),
            "person_present": ("1 while a person is in view", snap["person_present"]),
            "model_loaded": ("1 while a model is active", snap["model"] is not None),
        }
        for name, (help_text, value) in gauges.items():
            yield GaugeMetricFamily(f"movement_edge_{name}", help_text, value=float(value))
        yield InfoMetricFamily(
            "movement_edge_camera", "State of the frame source", value={"state": snap["camera"]["state"]}
        )
        if snap["model"] is not None:
            model = snap["model"]
            yield InfoMetricFamily(
                "movement_edge_model",
                "The active model",
                value={key: str(model[key]) for key in ("id", "version", "runtime", "status")},
            )


def _error(status_code: int, message: str, **extra: Any) -> Response:
    response = jsonify({"error": message, **extra})
    response.status_code = status_code
    return response


def _flag(name: str) -> bool:
    """A boolean query parameter (``?force=1``); anything unclear is a 400, not a silent False."""
    value = request.args.get(name, "").strip().lower()
    if value not in _TRUE | _FALSE:
        abort(400, f"{name} must be one of 1/true/yes or 0/false/no, got {value!r}")
    return value in _TRUE


def _bearer_guard(token_sha256: str | None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator refusing a request unless it carries the token whose SHA-256 is given."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if token_sha256 is None:
                return _error(403, "model management is disabled: no HTTP token is configured (http.token)")
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            digest = hashlib.sha256(token.strip().encode()).hexdigest()
            # Hashing first makes the comparison constant-time in the token and its length.
            if scheme.lower() != "bearer" or not hmac.compare_digest(digest, token_sha256):
                response = _error(401, "a valid 'Authorization: Bearer <token>' header is required")
                response.headers["WWW-Authenticate"] = 'Bearer realm="movement-edge"'
                return response
            return view(*args, **kwargs)

        return guarded

    return decorate


def create_app(
    status: StatusBoard,
    *,
    token_sha256: str | None = None,
    max_upload_mb: float = 64,
    models: ModelCatalog | None = None,
    device_name: str = "",
    max_streams: int = 4,
) -> Flask:
    """The web app over ``status``; nothing happens until a request arrives.

    ``token_sha256`` is the hex SHA-256 of the bearer token (None disables model management),
    ``device_name`` the title of the page (default: the device id), ``max_streams`` the number of
    concurrent MJPEG viewers (the page falls back to polling ``/frame.jpg`` beyond it).
    """
    if token_sha256 is not None and not _SHA256_HEX.fullmatch(token_sha256):
        raise ValueError("token_sha256 must be the 64 lowercase hex digits of the token's SHA-256")
    if max_upload_mb <= 0 or max_streams < 1:
        raise ValueError("max_upload_mb must be positive and max_streams at least 1")
    app = Flask(__name__)  # templates/ and static/ beside this module
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the pipeline stage order
    # "/api/models/a%2F/activate" must be a 404, not an HTML 308 redirect an API client cannot use.
    app.url_map.merge_slashes = False
    streams = LiveStreams(max_streams)
    app.extensions[STREAMS_EXTENSION] = streams
    _add_pages(app, status, streams, device_name or status.device_id)
    _add_monitoring(app, status)
    _add_models(app, status, models, _bearer_guard(token_sha256))
    description = OPENAPI.read_bytes()

    @app.get("/api/openapi.json")
    def openapi() -> Response:
        return Response(description, mimetype="application/json")

    _add_error_handling(app)
    return app


def _add_pages(app: Flask, status: StatusBoard, streams: LiveStreams, title: str) -> None:
    live = _LiveJpeg()

    @app.get("/")
    def index() -> str:
        # The page renders from the embedded snapshot at once, then refreshes it from /api/status.
        return render_template(
            "index.html", title=title, device_id=status.device_id, snapshot=status.snapshot()
        )

    @app.get("/frame.jpg")
    def frame() -> Response:
        view = status.view
        if view is None:
            abort(503, "no camera frame yet")
        return Response(live.of(view), mimetype="image/jpeg", headers=_NO_STORE)

    @app.get("/stream.mjpg")
    def stream() -> Response:
        if status.view is None:
            abort(503, "no camera frame yet")
        if not streams.acquire():
            abort(503, f"all {streams.limit} live streams are in use; poll /frame.jpg instead")
        response = Response(
            _mjpeg(status, live, streams.closing),
            content_type=f"multipart/x-mixed-replace; boundary={_BOUNDARY}",
            headers=_NO_STORE,
        )
        # Runs when the WSGI server closes the response, even if the generator never started.
        response.call_on_close(streams.release)
        return response


class _StatusBody:
    """The ``/api/status`` body, shared by every request for up to ``max_age_s``.

    A snapshot computes percentiles over thousands of samples and serializes them, in the same
    interpreter (and under the same GIL) as the pipeline. Measured with 50 clients polling back to
    back (``python -m benchmarks load``), building one per request cut the pipeline to 0.15x its
    frame rate. One body per quarter second serves any number of pollers; a change of camera,
    model, MQTT or presence state (:attr:`StatusBoard.changes`) makes a new one at once, so only the
    fast-moving numbers can be up to ``max_age_s`` old.
    """

    def __init__(self, app: Flask, status: StatusBoard, max_age_s: float = _STATUS_MAX_AGE_S) -> None:
        self._app, self._status, self._max_age_s = app, status, max_age_s
        self._lock = threading.Lock()  # one request builds; concurrent ones wait and reuse it
        self._body = b""
        self._built_at = -float("inf")
        self._changes = -1

    def get(self) -> bytes:
        with self._lock:
            now, changes = time.monotonic(), self._status.changes
            if now - self._built_at >= self._max_age_s or changes != self._changes:
                self._body = self._app.json.dumps(self._status.snapshot()).encode()
                self._built_at, self._changes = now, changes
            return self._body


def _add_monitoring(app: Flask, status: StatusBoard) -> None:
    # A registry of its own: several apps (tests, or a restart in-process) must not clash in the
    # global one, and the process-wide default collectors are not what this device reports.
    registry = CollectorRegistry()
    registry.register(_StatusCollector(status))

    body = _StatusBody(app, status)

    @app.get("/api/status")
    def api_status() -> Response:
        return Response(body.get(), mimetype="application/json", headers=_NO_STORE)

    @app.get("/healthz")
    def healthz() -> Response:
        reasons = []
        if not status.frames_flowing(FRAME_MAX_AGE_S):
            reasons.append(f"no frame processed in the last {FRAME_MAX_AGE_S:g} s")
        if status.model is None:
            reasons.append("no model loaded")
        if reasons:
            return _error(503, "; ".join(reasons), ok=False, reasons=reasons)
        return jsonify({"ok": True})

    @app.get("/metrics")
    def metrics() -> Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encoder(registry), content_type=content_type)


def _add_models(
    app: Flask,
    status: StatusBoard,
    models: ModelCatalog | None,
    guard: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> None:
    change = threading.Lock()  # one model change at a time, whatever the catalog does itself

    def catalog() -> ModelCatalog:
        if models is None:
            abort(501, "this device has no model store; models are set in its configuration")
        return models

    def changed(call: Callable[[], dict[str, Any]], status_code: int) -> Response:
        try:
            with change:
                result = call()
        except ValueError as exc:  # refused; the catalog keeps the previous model running
            return _error(422, str(exc))
        response = jsonify(result)
        response.status_code = status_code
        return response

    @app.get("/api/models")
    def list_models() -> Response:
        if models is not None:
            return jsonify(models.list())
        active = status.snapshot()["model"]
        return jsonify([] if active is None else [{**active, "active": True}])

    @app.post("/api/models")
    @guard
    def upload_model() -> Response:
        store = catalog()
        force = _flag("force")
        limit = app.config["MAX_CONTENT_LENGTH"]
        if request.content_length is not None and request.content_length > limit:
            # Refuse from the header, before a byte of the body is read.
            abort(
                413,
                f"the upload is {request.content_length} bytes; the limit is {limit} (http.max_upload_mb)",
            )
        if request.mimetype == "multipart/form-data":
            upload = request.files.get("bundle")
            if upload is None:
                abort(400, "a multipart upload needs the bundle in a file field named 'bundle'")
            data = upload.read()
        else:
            data = request.get_data(cache=False)
        if not data:
            abort(400, "empty upload: send the bundle as the body or as a multipart file field 'bundle'")
        return changed(lambda: store.install(data, force=force), 201)

    @app.post("/api/models/<version>/activate")
    @guard
    def activate_model(version: str) -> Response:
        store = catalog()
        force = _flag("force")
        return changed(lambda: store.activate(version, force=force), 200)


def _add_error_handling(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response | HTTPException:
        """JSON for API clients (404, 405, 413, 500 …); the ordinary HTML page elsewhere."""
        if not request.path.startswith("/api/"):
            return exc
        response = exc.get_response()  # keeps headers such as Allow on a 405
        response.set_data(json.dumps({"error": exc.description}))
        response.content_type = "application/json"
        return response

    @app.after_request
    def security_headers(response: Response) -> Response:
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client may take of the server, so slow or greedy clients cannot starve the others.

    waitress reads requests in its event loop, not in worker threads, so clients that send byte by
    byte or sit idle hold no worker; what they can exhaust is ``connection_limit`` (beyond it
    waitress stops accepting, and ``/healthz`` hangs for everyone). So one client address may hold
    at most ``per_client`` connections (the load benchmark keeps 50 busy ones), a request must
    arrive within ``grace_s`` plus one second per ``min_rate`` bytes (a slowloris that dribbles
    headers is closed; a 64 MB upload at 100 KB/s is not), and an idle connection is closed after
    ``idle_s``.
    """

    total: int = 256
    per_client: int = 64
    grace_s: float = 10.0
    min_rate: float = 16 * 1024
    idle_s: float = 30.0


class _JsonErrorTask(ErrorTask):
    """waitress's own refusals (413 over the upload limit, 400 for a malformed request, 431 …) as
    the API's JSON errors, so a client never has to parse waitress's plain-text page."""

    def execute(self) -> None:
        error = self.request.error
        body = json.dumps({"error": f"{error.reason}: {error.body}"}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend([("Content-Type", "application/json"), *_SECURITY_HEADERS.items()])
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _GuardedChannel(HTTPChannel):
    """A waitress connection that knows when its request began and refuses to crowd out others."""

    error_task_class = _JsonErrorTask
    limits: ClassVar[ConnectionLimits] = ConnectionLimits()

    def __init__(self, server: BaseWSGIServer, sock: Any, addr: Any, adj: Any, map: Any = None) -> None:
        super().__init__(server, sock, addr, adj, map)
        self.request_began: float | None = None
        self.request_bytes = 0
        client = self.client
        same = sum(1 for c in self._map.values() if isinstance(c, _GuardedChannel) and c.client == client)
        if same > self.limits.per_client:
            log.warning("refused a connection: %s already holds %d", client, self.limits.per_client)
            self.close()

    @property
    def client(self) -> str:
        return str(self.addr[0] if isinstance(self.addr, tuple) else self.addr)

    def received(self, data: bytes) -> bool:
        if data and self.request is None:
            self.request_began, self.request_bytes = time.monotonic(), 0
        self.request_bytes += len(data)
        result = super().received(data)
        if self.request is None:  # complete (or refused): nothing is being waited for
            self.request_began = None
        return result

    def overdue(self, now: float) -> bool:
        """A request still arriving after its grace plus what its bytes so far bought.

        Not while a response is being made: waitress reads no further until it is sent.
        """
        if self.request_began is None or self.requests:
            return False
        return now - self.request_began > self.limits.grace_s + self.request_bytes / self.limits.min_rate


class WebServer:
    """Serves a WSGI app with waitress in one named daemon thread, with an explicit ``stop()``.

    waitress's ``run()`` returns only once every connection is gone, which an open MJPEG viewer
    or a keep-alive connection prevents. So the thread drives waitress's event loop itself, one
    poll at a time, and on ``stop()`` closes every connection from that same thread (the loop is
    not thread-safe), after the app's live streams were told to end, then stops the workers.
    """

    def __init__(
        self, app: Flask, bind: str, port: int, *, threads: int = 8, limits: ConnectionLimits | None = None
    ) -> None:
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            # A host name may resolve to several addresses, i.e. several sockets and ports.
            raise ValueError(
                f"bind must be an IP address such as 127.0.0.1 or 0.0.0.0, got {bind!r}"
            ) from None
        self.app = app
        self.bind = bind
        self.port = port
        """The bound port once started (the free port picked when 0 was asked for)."""
        self._threads = threads
        self.limits = limits or ConnectionLimits()
        self._map: dict[int, Any] = {}
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def running(self) -> bool:
        """True while the serving thread is alive (between ``start()`` and the end of ``stop()``)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Bind and serve; raises ``OSError`` at once when the port cannot be bound."""
        if self._server is not None:
            raise RuntimeError("the web server was already started")
        limit = self.app.config.get("MAX_CONTENT_LENGTH")
        # The same upload limit at the transport: waitress refuses an oversized body from its
        # headers instead of spooling it to disk first (its own default allows 1 GB).
        extra = {} if limit is None else {"max_request_body_size": limit + 1}
        server = create_server(
            self.app,
            map=self._map,
            host=self.bind,
            port=self.port,
            threads=self._threads,
            ident="movement-edge",
            outbuf_high_watermark=_OUTPUT_BUFFER_BYTES,
            connection_limit=self.limits.total,
            channel_timeout=self.limits.idle_s,
            cleanup_interval=min(self.limits.idle_s, _SWEEP_INTERVAL_S),
            **extra,
        )
        # This server's limits on every connection it accepts (a class per server, as waitress
        # constructs channels itself from ``channel_class``).
        server.channel_class = type("Channel", (_GuardedChannel,), {"limits": self.limits})
        self._server = server
        self.port = int(server.effective_port)
        self._thread = threading.Thread(target=self._serve, args=(server,), name="http", daemon=True)
        self._thread.start()
        log.info("web server on http://%s:%d", self.bind, self.port)

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
        """Close connections whose request is too slow in coming (from the loop's own thread)."""
        for channel in [c for c in self._map.values() if isinstance(c, _GuardedChannel) and c.overdue(now)]:
            log.warning(
                "closed a slow connection",
                extra={"client": channel.client, "bytes": channel.request_bytes},
            )
            channel.handle_close()
