"""The kiosk's HTTP face (DESIGN.md §6): status page, live view, JSON API, health, metrics, models.

:func:`create_app` builds a Flask app that only *reads* the :class:`~device.status.StatusBoard`
(and, for model management, calls a :class:`ModelCatalog`), so the pipeline never waits on a
browser. :class:`device.http_server.WebServer` serves it (HTTP or HTTPS) and keeps hostile
clients in check, in a process of its own beside the daemon's (:mod:`device.web_process`);
:mod:`device.access` decides who may look and who may change.

Routes: ``/`` the status page; ``/frame.jpg`` and ``/stream.mjpg`` the live view with the
skeleton; ``/api/status`` the status snapshot; ``/healthz`` (200 only while frames flow, a model
is loaded and storage works); ``/metrics`` Prometheus text; ``GET /api/models``; ``POST
/api/models[?force=1]`` (a bundle as the body or as the multipart file field ``bundle``); ``POST
/api/models/<version>/activate[?force=1]``; ``POST /api/keys/revocations`` (a signed key
revocation list, :mod:`device.model.revocation`); ``/api/openapi.json`` the OpenAPI 3 description of
all of these (``device/openapi.json``); ``/login`` and ``/logout`` (:mod:`device.access`).
Errors under ``/api/`` and of the live view are JSON ``{"error": …}``, and so are the refusals the
server makes itself (a body over the upload limit, a malformed request).

The POSTs need the device token as ``Authorization: Bearer <token>``; without a configured token
they are disabled (403), so a kiosk on an open network cannot be handed a model by whoever finds
it. Beyond loopback everything else but ``/healthz`` needs the viewer token or a login. In privacy
mode (``device.privacy``) no camera image is served at all: the frame endpoints answer 404.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from flask import Flask, Response, abort, jsonify, render_template, request
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from werkzeug.exceptions import HTTPException

from device import access
from device.access import AccessPolicy
from device.access import json_error as _error
from device.model.revocation import MAX_LIST_SIZE
from device.overlay import BONE_PAIRS, draw_view, encode_jpeg
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
PRIVACY_REFUSAL = "privacy mode: no camera image leaves the device"
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
    "storage_failures": "Times the outbox became unusable (results then held in memory)",
    "mqtt_ack_timeouts": "Times the broker connection was given up for a missing acknowledgement",
}
_TRUE, _FALSE = frozenset({"1", "true", "yes"}), frozenset({"", "0", "false", "no"})
_LIVE_VIEW = frozenset({"/frame.jpg", "/stream.mjpg"})  # their errors are JSON, as the API's
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Everything the page needs comes from the kiosk itself; nothing may be framed or injected,
    # and forms (login, logout) post only to the kiosk.
    "Content-Security-Policy": "default-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'",
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

    def revoke_keys(self, data: bytes) -> dict[str, Any]: ...


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

    def __init__(self, banner: bool) -> None:
        self._banner = banner
        self._lock = threading.Lock()
        self._view: LiveView | None = None
        self._jpeg = b""

    def of(self, view: LiveView) -> bytes:
        with self._lock:
            if view is not self._view:
                self._jpeg = encode_jpeg(draw_view(view, banner=self._banner))
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
        for quantile, key in _QUANTILES:
            if snap["latency_ms"][key] is not None:  # None before the first classification
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
        per_label = CounterMetricFamily(
            "movement_edge_classifications_by_label",
            "Classifications per label since start (the model's labels, as in the MQTT payloads)",
            labels=["label"],
        )
        for label, value in sorted(self._status.label_counts().items()):
            per_label.add_metric([label], value)
        yield per_label
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


def _flag(name: str, default: bool = False) -> bool:
    """A boolean query parameter (``?force=1``); anything unclear is a 400, not a silent False."""
    value = request.args.get(name, "1" if default else "").strip().lower()
    if value not in _TRUE | _FALSE:
        abort(400, f"{name} must be one of 1/true/yes or 0/false/no, got {value!r}")
    return value in _TRUE


def create_app(
    status: StatusBoard,
    *,
    access_policy: AccessPolicy | None = None,
    max_upload_mb: float = 64,
    models: ModelCatalog | None = None,
    device_name: str = "",
    max_streams: int = 4,
    streams: LiveStreams | None = None,
) -> Flask:
    """The web app over ``status``; nothing happens until a request arrives.

    ``access_policy`` holds the token hashes and host names (default: loopback, no device token,
    so model management is disabled), ``device_name`` the title of the page (default: the device
    id), ``max_streams`` the number of concurrent MJPEG viewers (the page falls back to polling
    ``/frame.jpg`` beyond it); ``streams`` a bound kept elsewhere instead (the web process's
    viewers are counted in the daemon, :mod:`device.web_process`).
    """
    policy = access_policy or AccessPolicy()
    if max_upload_mb <= 0 or max_streams < 1:
        raise ValueError("max_upload_mb must be positive and max_streams at least 1")
    app = Flask(__name__)  # templates/ and static/ beside this module
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the pipeline stage order
    # "/api/models/a%2F/activate" must be a 404, not an HTML 308 redirect an API client cannot use.
    app.url_map.merge_slashes = False
    streams = streams or LiveStreams(max_streams)
    app.extensions[STREAMS_EXTENSION] = streams
    title = device_name or status.device_id
    access.install(app, policy, title)
    _add_pages(app, status, streams, title, policy)
    _add_monitoring(app, status)
    _add_models(app, status, models, access.require_device_token(policy))
    description = OPENAPI.read_bytes()

    @app.get("/api/openapi.json")
    def openapi() -> Response:
        return Response(description, mimetype="application/json")

    _add_error_handling(app)
    return app


def _add_pages(
    app: Flask, status: StatusBoard, streams: LiveStreams, title: str, policy: AccessPolicy
) -> None:
    # ?banner=0: the skeletons without the label banner; the status page shows the label beside
    # the picture, from the same status it shows everything else from, so the two never disagree.
    pictures = {True: _LiveJpeg(banner=True), False: _LiveJpeg(banner=False)}

    @app.get("/")
    def index() -> str:
        # The page renders from the embedded snapshot at once, then refreshes it from /api/status.
        return render_template(
            "index.html",
            title=title,
            device_id=status.device_id,
            snapshot=status.snapshot(),
            logout=policy.login_required,
        )

    def refusal() -> Response | None:
        """Why no picture can be sent now (as JSON: an image element or a script asked)."""
        if status.privacy:
            return _error(404, PRIVACY_REFUSAL)
        if status.view is None:
            return _error(503, "no camera frame yet")
        return None

    @app.get("/frame.jpg")
    def frame() -> Response:
        view = status.view
        if (refused := refusal()) is not None or view is None:
            return refused or _error(503, "no camera frame yet")
        return Response(pictures[_flag("banner", True)].of(view), mimetype="image/jpeg", headers=_NO_STORE)

    @app.get("/stream.mjpg")
    def stream() -> Response:
        if (refused := refusal()) is not None:
            return refused
        live = pictures[_flag("banner", True)]
        if not streams.acquire():
            return _error(503, f"all {streams.limit} live streams are in use; poll /frame.jpg instead")
        response = Response(
            _mjpeg(status, live, streams.closing),
            content_type=f"multipart/x-mixed-replace; boundary={_BOUNDARY}",
            headers=_NO_STORE,
        )
        # Runs when the WSGI server closes the response, even if the generator never started.
        response.call_on_close(streams.release)
        return response

    @app.get("/api/pose")
    def pose() -> Response:
        """Everyone's keypoints in the newest frame: the privacy-mode page draws them on a blank
        canvas, and a dashboard can draw them without ever receiving a camera image."""
        view = status.view
        if view is None:
            abort(503, "no camera frame yet")
        body = {**view.pose(), "bones": BONE_PAIRS}
        return Response(app.json.dumps(body), mimetype="application/json", headers=_NO_STORE)


class _StatusBody:
    """The ``/api/status`` body, shared by every request for up to ``max_age_s``.

    A snapshot computes percentiles over thousands of samples and serializes them. Measured with 50
    clients polling back to back (``python -m benchmarks load``) when the app still ran in the
    daemon's interpreter, building one per request cut the pipeline to 0.15x its frame rate; in
    the web process (:mod:`device.web_process`) it would spend the CPU budget. One body per
    quarter second serves any number of pollers; a change of camera, model, MQTT or presence state
    (:attr:`StatusBoard.changes`) makes a new one at once, so only the fast-moving numbers can be
    up to ``max_age_s`` old.
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
        reasons = status.health_reasons(FRAME_MAX_AGE_S)  # frames, model, storage
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

    @app.post("/api/keys/revocations")
    @guard
    def revoke_keys() -> Response:
        """A signed key revocation list (``python -m trainer revoke-key``); 422 when refused."""
        store = catalog()
        if request.content_length is not None and request.content_length > MAX_LIST_SIZE:
            abort(413, f"the list is {request.content_length} bytes; the limit is {MAX_LIST_SIZE}")
        data = request.get_data(cache=False)
        if not data:
            abort(400, "empty body: send the signed revocation list (python -m trainer revoke-key)")
        return changed(lambda: store.revoke_keys(data), 200)


def _add_error_handling(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response | HTTPException:
        """JSON for API clients and the live view's programs (404, 405, 413, 500 …); the ordinary
        HTML page elsewhere."""
        if not request.path.startswith("/api/") and request.path not in _LIVE_VIEW:
            return exc
        response = exc.get_response()  # keeps headers such as Allow on a 405
        response.set_data(json.dumps({"error": exc.description}))
        response.content_type = "application/json"
        return response

    @app.after_request
    def security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response
