"""The web app (DESIGN.md §6) over real HTTP on 127.0.0.1, and its page in a real headless Chromium.

The status board is fed with a real frame of squats.mp4 and that frame's reference keypoints, so
the live view is drawn exactly as on a kiosk; only the clock is manual, so rates are exact.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
from conftest import eventually
from flask import Flask
from playwright.sync_api import Browser, Page, expect, sync_playwright
from prometheus_client.parser import text_string_to_metric_families
from tls_files import TlsFiles

from device.access import AccessPolicy
from device.capture import Capture
from device.config import CaptureSection, UrlSource
from device.http_server import WebServer
from device.keypoints import JOINT_INDEX, VISIBILITY
from device.overlay import BONES, draw_view
from device.prediction import Prediction
from device.status import STAGES, LiveView, ModelInfo, StatusBoard
from device.web import OPENAPI, PRIVACY_REFUSAL, STREAMS_EXTENSION, LiveStreams, create_app

FRAME = 24  # 0-based frame of squats.mp4, the whole body in view
TOKEN = "s3cret-device-token"
TOKEN_SHA256 = hashlib.sha256(TOKEN.encode()).hexdigest()
DEVICE_TOKEN = AccessPolicy(device_sha256=TOKEN_SHA256)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# No proxy from the environment may stand between the tests and 127.0.0.1.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ManualClock:
    """The board's monotonic clock, advanced by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def prediction(label: str, confidence: float) -> Prediction:
    other = "stand" if label != "stand" else "squat"
    return Prediction(
        ts=time.time(),
        label=label,
        confidence=confidence,
        probabilities=((label, confidence), (other, round(1 - confidence, 6))),
        first_frame=1,
        last_frame=FRAME + 1,
        start_ts_ms=0.0,
        end_ts_ms=FRAME * 200.0,
        model_id="movement",
        model_version="1.2.0",
        latency_ms=42.5,
    )


MODEL = ModelInfo(
    model_id="movement",
    version="1.2.0",
    sha256="ab" * 32,
    runtime="sklearn",
    labels=("squat", "stand"),
    window=30,
)


@pytest.fixture(scope="module")
def frame(data_dir: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(data_dir / "videos" / "squats.mp4"))
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, FRAME)
        ok, image = capture.read()
    finally:
        capture.release()
    assert ok, "squats.mp4 did not decode"
    image.setflags(write=False)
    return image


@pytest.fixture
def view(frame: np.ndarray, squats_reference: np.ndarray) -> LiveView:
    return LiveView(
        image=frame, points=squats_reference[FRAME], prediction=prediction("squat", 0.87), frame_number=FRAME
    )


@pytest.fixture
def board(view: LiveView) -> StatusBoard:
    """A board as a running daemon fills it: 10 fps in every stage, one result, MQTT up."""
    clock = ManualClock()
    status = StatusBoard("kiosk-test", clock=clock)
    status.set_camera("running", source="squats.mp4")
    status.set_model(MODEL)
    status.set_mqtt(enabled=True, connected=True, broker="127.0.0.1:1883")
    status.set_outbox(depth=3, dropped=1)
    status.set_person_present(True)
    for _ in range(11):
        clock.now += 0.1
        for stage in STAGES:
            status.record_stage(stage, 0.02)
    status.count("frames_captured", 11)
    status.count("frames_processed", 11)
    status.count("frames_dropped", 2)
    assert view.prediction is not None
    status.add_prediction(view.prediction)
    status.set_view(view)
    return status


@dataclass
class Served:
    app: Flask
    server: WebServer
    url: str


@pytest.fixture
def serve(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[..., Served]]:
    """Start ``create_app(status, **options)`` on a free loopback port; everything stops afterwards.

    Afterwards no server or worker thread may be left, and nothing may have been logged at error
    level: waitress logs what goes wrong in its workers (a failed request, a shutdown race)
    instead of raising it into the test.
    """
    started: list[WebServer] = []
    threads_before = set(threading.enumerate())

    def start(status: StatusBoard, tls: TlsFiles | None = None, **options: Any) -> Served:
        app = create_app(status, **options)
        server = WebServer(app, "127.0.0.1", 0, tls=None if tls is None else tls.server())
        server.start()
        started.append(server)
        return Served(app, server, server.url)

    yield start
    for server in started:
        server.stop()
        assert not server.running
    left = [
        t.name for t in set(threading.enumerate()) - threads_before if t.name.startswith(("http", "waitress"))
    ]
    assert left == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


class Catalog:
    """A real, minimal model store: a bundle is JSON ``{"version": …}``; versions must exist to activate."""

    def __init__(self) -> None:
        self.versions = {"1.2.0": True}
        self.calls: list[tuple[str, Any, bool]] = []

    def list(self) -> list[dict[str, Any]]:
        return [{"version": v, "active": active} for v, active in self.versions.items()]

    def install(self, data: bytes, force: bool) -> dict[str, Any]:
        self.calls.append(("install", data, force))
        try:
            version = json.loads(data)["version"]
        except (ValueError, KeyError) as exc:
            raise ValueError(f"not a model bundle ({exc})") from None
        self.versions[version] = False
        return {"version": version, "installed": True}

    def activate(self, version: str, force: bool) -> dict[str, Any]:
        self.calls.append(("activate", version, force))
        if version not in self.versions:
            raise ValueError(f"no installed model version {version!r}")
        self.versions = {v: v == version for v in self.versions}
        return {"version": version, "active": True}


def fetch(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, bytes]:
    """Status, headers and body of one request; error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _HTTP.open(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def fetch_json(url: str, **kwargs: Any) -> tuple[int, Any]:
    status, headers, body = fetch(url, **kwargs)
    assert headers["Content-Type"].startswith("application/json"), (
        status,
        headers["Content-Type"],
        body[:200],
    )
    return status, json.loads(body)


# --------------------------------------------------------------------------- status and monitoring


def test_api_status_reports_the_board(board: StatusBoard, serve: Callable[..., Served]) -> None:
    status, snap = fetch_json(serve(board).url + "/api/status")
    assert status == 200
    assert snap["device_id"] == "kiosk-test"
    assert snap["current"]["label"] == "squat"
    assert snap["current"]["confidence"] == pytest.approx(0.87)
    assert snap["model"]["version"] == "1.2.0"
    assert list(snap["stages"]) == list(STAGES)  # pipeline order, not alphabetical
    assert snap["stages"]["pose"]["fps"] == pytest.approx(10.0)
    assert snap["stages"]["pose"]["p50_ms"] == pytest.approx(20.0)
    assert snap["counters"]["frames_dropped"] == 2
    assert snap["mqtt"]["connected"] is True
    assert snap["outbox"] == {"depth": 3, "dropped": 1}
    assert snap["frames_flowing"] is True


def test_api_status_shows_state_changes_at_once_and_counters_within_a_moment(
    board: StatusBoard, serve: Callable[..., Served]
) -> None:
    url = serve(board).url + "/api/status"
    before = fetch_json(url)[1]
    board.count("frames_processed", 5)  # fast-moving numbers may come from a body a moment old …
    board.set_camera("reconnecting", detail="camera lost")  # … a change of state never does
    _, after = fetch_json(url)
    assert after["camera"] == {"state": "reconnecting", "source": "squats.mp4", "detail": "camera lost"}
    assert after["counters"]["frames_processed"] == before["counters"]["frames_processed"] + 5
    board.count("frames_processed", 1)
    expected = before["counters"]["frames_processed"] + 6
    eventually(lambda: fetch_json(url)[1]["counters"]["frames_processed"] == expected, 5, "the new count")


@pytest.mark.parametrize(
    ("frames", "model", "reasons"),
    [
        (True, True, None),
        (True, False, ["no model loaded"]),
        (False, False, ["no frame processed in the last 5 s", "no model loaded"]),
    ],
)
def test_healthz_needs_frames_and_a_model(
    serve: Callable[..., Served], frames: bool, model: bool, reasons: list[str] | None
) -> None:
    status = StatusBoard("kiosk-test")
    if frames:
        status.record_stage("pose", 0.01)  # a frame got through pose
    if model:
        status.set_model(MODEL)
    code, body = fetch_json(serve(status).url + "/healthz")
    if reasons is None:
        assert (code, body) == (200, {"ok": True})
    else:
        assert code == 503
        assert body["ok"] is False
        assert body["reasons"] == reasons


def test_metrics_are_prometheus_text(board: StatusBoard, serve: Callable[..., Served]) -> None:
    url = serve(board).url + "/metrics"
    status, headers, body = fetch(url)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    assert {
        "movement_edge_stage_fps",
        "movement_edge_stage_duration_seconds",
        "movement_edge_classification_latency_seconds",
        "movement_edge_frames_captured",
        "movement_edge_frames_dropped",
        "movement_edge_frames_processed",
        "movement_edge_classifications",
        "movement_edge_outbox_depth",
        "movement_edge_outbox_dropped",
        "movement_edge_mqtt_connected",
        "movement_edge_uptime_seconds",
        "movement_edge_model_info",  # an info metric is a gauge in the 0.0.4 text format
    } <= set(families)

    def value(family: str, **labels: str) -> float:
        (sample,) = (s for s in families[family].samples if labels.items() <= s.labels.items())
        return sample.value

    assert families["movement_edge_frames_captured"].type == "counter"
    assert value("movement_edge_frames_captured") == 11
    assert value("movement_edge_classifications") == 1
    assert value("movement_edge_stage_fps", stage="capture") == pytest.approx(10.0)
    assert value("movement_edge_stage_duration_seconds", stage="pose", quantile="0.95") == pytest.approx(0.02)
    assert value("movement_edge_classification_latency_seconds", quantile="0.5") == pytest.approx(0.0425)
    assert value("movement_edge_outbox_depth") == 3
    assert value("movement_edge_mqtt_connected") == 1
    assert value("movement_edge_model_info", id="movement", version="1.2.0") == 1
    # a counter per label: how the day divides up between the model's labels
    board.add_prediction(prediction("stand", 0.7))
    board.add_prediction(prediction("stand", 0.8))
    families = {family.name: family for family in text_string_to_metric_families(fetch(url)[2].decode())}
    assert value("movement_edge_classifications_by_label", label="squat") == 1
    assert value("movement_edge_classifications_by_label", label="stand") == 2


def test_each_app_has_its_own_registry(board: StatusBoard, serve: Callable[..., Served]) -> None:
    """Two apps in one process (as here) would clash in prometheus-client's global registry."""
    first, second = serve(board), serve(StatusBoard("other"))
    assert b"movement_edge_model_info{" in fetch(first.url + "/metrics")[2]
    assert b"movement_edge_model_info{" not in fetch(second.url + "/metrics")[2]


# --------------------------------------------------------------------------- live view


def bone_difference(drawn: np.ndarray, raw: np.ndarray, points: np.ndarray, bone: tuple[str, str]) -> float:
    """Mean colour change between two images along the middle of a bone."""
    a, b = (points[JOINT_INDEX[name], :2] for name in bone)
    samples = [np.round(a + t * (b - a)).astype(int) for t in np.linspace(0.3, 0.7, 9)]
    return float(
        np.mean([np.abs(drawn[y, x].astype(int) - raw[y, x].astype(int)).mean() for x, y in samples])
    )


def test_frame_jpg_shows_the_skeleton(
    board: StatusBoard, serve: Callable[..., Served], frame: np.ndarray, squats_reference: np.ndarray
) -> None:
    status, headers, body = fetch(serve(board).url + "/frame.jpg")
    assert status == 200
    assert headers["Content-Type"] == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == frame.shape  # 720 wide: below the 960 px bound, not scaled
    points = squats_reference[FRAME]
    assert bone_difference(image, frame, points, ("left_hip", "left_knee")) > 60
    assert bone_difference(image, frame, points, ("right_shoulder", "right_elbow")) > 60
    # Far from the person the picture is the camera's (up to JPEG noise).
    assert np.abs(image[1100:, :150].astype(int) - frame[1100:, :150].astype(int)).mean() < 4


def test_the_pages_picture_has_no_banner_to_disagree_with_its_headline(
    board: StatusBoard, serve: Callable[..., Served], frame: np.ndarray, squats_reference: np.ndarray
) -> None:
    """The status page asks for ``banner=0``: the label is shown beside the picture, from the
    same status as the headline, so picture and headline can never say different things."""
    url = serve(board).url
    with_banner = cv2.imdecode(np.frombuffer(fetch(url + "/frame.jpg")[2], np.uint8), cv2.IMREAD_COLOR)
    plain = cv2.imdecode(np.frombuffer(fetch(url + "/frame.jpg?banner=0")[2], np.uint8), cv2.IMREAD_COLOR)
    top = slice(0, 40)  # the banner's strip, darkened, with the label written on it
    assert np.abs(with_banner[top].astype(int) - frame[top].astype(int)).mean() > 20
    assert np.abs(plain[top].astype(int) - frame[top].astype(int)).mean() < 4
    points = squats_reference[FRAME]
    assert bone_difference(plain, frame, points, ("left_hip", "left_knee")) > 60  # the skeleton stays
    assert fetch(url + "/frame.jpg?banner=maybe")[0] == 400


def test_frame_jpg_is_503_before_the_first_frame(serve: Callable[..., Served]) -> None:
    served = serve(StatusBoard("kiosk-test"))
    assert fetch(served.url + "/frame.jpg")[0] == 503
    assert fetch(served.url + "/stream.mjpg")[0] == 503


def test_overlay_scales_and_skips_hidden_joints(view: LiveView) -> None:
    small = draw_view(view, max_width=360)
    assert small.shape == (640, 360, 3)
    assert not view.image.flags.writeable  # drawn on a copy, never on the shared frame
    hidden = view.points.copy()
    hidden[:, VISIBILITY] = 0.3
    unlabelled = draw_view(replace(view, points=hidden))
    banner = 90  # the label strip at the top
    assert np.array_equal(unlabelled[banner:], view.image[banner:])
    assert len(BONES) == 35


def read_part(response: http.client.HTTPResponse) -> bytes:
    """One JPEG of a ``multipart/x-mixed-replace; boundary=frame`` body."""
    assert response.readline() == b"--frame\r\n"
    headers = {}
    while (line := response.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    assert headers["content-type"] == "image/jpeg"
    jpeg = response.read(int(headers["content-length"]))
    assert response.read(2) == b"\r\n"
    return jpeg


def open_stream(served: Served) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    connection = http.client.HTTPConnection("127.0.0.1", served.server.port, timeout=10)
    connection.request("GET", "/stream.mjpg")
    response = connection.getresponse()
    assert response.status == 200
    assert response.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=frame"
    return connection, response


def wait_for(condition: Callable[[], bool], timeout: float, tick: Callable[[], None] = lambda: None) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        tick()
        time.sleep(0.05)
    return True


def test_stream_sends_new_frames_and_ends_when_the_viewer_leaves(
    board: StatusBoard, view: LiveView, serve: Callable[..., Served]
) -> None:
    served = serve(board)
    streams: LiveStreams = served.app.extensions[STREAMS_EXTENSION]
    connection, response = open_stream(served)
    first = read_part(response)
    board.set_view(replace(view, frame_number=FRAME + 1))  # the camera delivers the next frame
    second = read_part(response)
    for jpeg in (first, second):
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == view.image.shape
    assert streams.active == 1
    response.close()
    connection.close()
    # The server notices the viewer is gone when its next writes fail; frames keep coming meanwhile.
    frames = iter(range(FRAME + 2, FRAME + 1000))
    assert wait_for(
        lambda: streams.active == 0, 5.0, lambda: board.set_view(replace(view, frame_number=next(frames)))
    )


def test_stop_ends_an_open_stream_promptly(board: StatusBoard, serve: Callable[..., Served]) -> None:
    served = serve(board)
    connection, response = open_stream(served)
    read_part(response)
    served.server.stop()  # returns (bounded by its own timeout) with the viewer still connected
    assert not served.server.running
    assert served.app.extensions[STREAMS_EXTENSION].active == 0
    connection.close()


def test_streams_are_bounded(board: StatusBoard, serve: Callable[..., Served]) -> None:
    served = serve(board, max_streams=1)
    connection, response = open_stream(served)
    read_part(response)
    status, body = fetch_json(served.url + "/api/status")  # the API stays responsive meanwhile
    assert status == 200
    assert fetch(served.url + "/stream.mjpg")[0] == 503
    connection.close()


# --------------------------------------------------------------------------- model management

AUTH = {"Authorization": f"Bearer {TOKEN}"}
BUNDLE = json.dumps({"version": "1.3.0"}).encode()


@pytest.mark.parametrize(
    ("path", "headers", "code"),
    [
        ("/api/models", {}, 401),
        ("/api/models", {"Authorization": "Bearer wrong-token"}, 401),
        ("/api/models", {"Authorization": f"Basic {TOKEN}"}, 401),
        ("/api/models/1.2.0/activate", {}, 401),
        ("/api/models/1.2.0/activate", {"Authorization": "Bearer wrong-token"}, 401),
    ],
)
def test_mutating_endpoints_need_the_token(
    board: StatusBoard, serve: Callable[..., Served], path: str, headers: dict[str, str], code: int
) -> None:
    catalog = Catalog()
    served = serve(board, access_policy=DEVICE_TOKEN, models=catalog)
    status, response_headers, body = fetch(served.url + path, method="POST", body=BUNDLE, headers=headers)
    assert status == code
    assert response_headers["WWW-Authenticate"].startswith("Bearer")
    assert "error" in json.loads(body)
    assert catalog.calls == []


def test_upload_and_activate_with_the_token(board: StatusBoard, serve: Callable[..., Served]) -> None:
    catalog = Catalog()
    served = serve(board, access_policy=DEVICE_TOKEN, models=catalog)
    raw = fetch_json(served.url + "/api/models?force=1", method="POST", body=BUNDLE, headers=AUTH)
    assert raw == (201, {"version": "1.3.0", "installed": True})
    boundary = "bundle-boundary"
    second = json.dumps({"version": "1.4.0"}).encode()
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="bundle"; filename="m.bundle"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + second
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    assert fetch_json(served.url + "/api/models", method="POST", body=multipart, headers=headers)[0] == 201
    activated = fetch_json(served.url + "/api/models/1.3.0/activate", method="POST", body=b"", headers=AUTH)
    assert activated == (200, {"version": "1.3.0", "active": True})
    assert catalog.calls == [
        ("install", BUNDLE, True),
        ("install", second, False),
        ("activate", "1.3.0", False),
    ]
    listed = fetch_json(served.url + "/api/models")[1]
    assert {"version": "1.3.0", "active": True} in listed


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/api/models", b"not json", "not a model bundle"),
        ("/api/models/9.9.9/activate", b"", "no installed model version '9.9.9'"),
    ],
)
def test_refusals_of_the_catalog_are_422(
    board: StatusBoard, serve: Callable[..., Served], path: str, body: bytes, message: str
) -> None:
    served = serve(board, access_policy=DEVICE_TOKEN, models=Catalog())
    status, error = fetch_json(served.url + path, method="POST", body=body, headers=AUTH)
    assert status == 422
    assert message in error["error"]


def test_oversized_upload_is_413(board: StatusBoard, serve: Callable[..., Served]) -> None:
    catalog = Catalog()
    served = serve(board, access_policy=DEVICE_TOKEN, models=catalog, max_upload_mb=0.01)
    too_big = b"x" * (11 * 1024)
    assert fetch(served.url + "/api/models", method="POST", body=too_big, headers=AUTH)[0] == 413
    # The app refuses from the header on its own too (behind any WSGI server), as JSON.
    response = served.app.test_client().post("/api/models", data=too_big, headers=AUTH)
    assert response.status_code == 413
    assert "limit" in response.get_json()["error"]
    assert catalog.calls == []


def test_without_a_token_model_management_is_disabled(
    board: StatusBoard, serve: Callable[..., Served]
) -> None:
    catalog = Catalog()
    served = serve(board, models=catalog)
    for path in ("/api/models", "/api/models/1.2.0/activate"):
        status, error = fetch_json(served.url + path, method="POST", body=BUNDLE, headers=AUTH)
        assert status == 403
        assert "no HTTP token" in error["error"]
    assert catalog.calls == []


def test_without_a_catalog(board: StatusBoard, serve: Callable[..., Served]) -> None:
    served = serve(board, access_policy=DEVICE_TOKEN)
    status, listed = fetch_json(served.url + "/api/models")
    assert status == 200
    assert [(m["id"], m["version"], m["active"]) for m in listed] == [("movement", "1.2.0", True)]
    assert fetch_json(served.url + "/api/models", method="POST", body=BUNDLE, headers=AUTH)[0] == 501


MULTIPART_WITHOUT_BUNDLE = (
    b'--b\r\nContent-Disposition: form-data; name="other"; filename="x"\r\n\r\nx\r\n--b--\r\n',
    {"Content-Type": "multipart/form-data; boundary=b"},
)


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("GET", "/api/nothing-here", None, 404),
        ("GET", "/api/models/1.2.0/activate", None, 405),
        ("DELETE", "/api/status", None, 405),
        ("POST", "/api/models/1.2.0/activate?force=maybe", (b"", {}), 400),
        ("POST", "/api/models", (b"", {}), 400),
        ("POST", "/api/models", MULTIPART_WITHOUT_BUNDLE, 400),
    ],
)
def test_api_errors_are_json(
    board: StatusBoard,
    serve: Callable[..., Served],
    method: str,
    path: str,
    body: tuple[bytes, dict[str, str]] | None,
    code: int,
) -> None:
    catalog = Catalog()
    served = serve(board, access_policy=DEVICE_TOKEN, models=catalog)
    data, headers = body or (None, {})
    status, error = fetch_json(served.url + path, method=method, body=data, headers={**AUTH, **headers})
    assert status == code
    assert error["error"]
    assert catalog.calls == []


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: AccessPolicy(device_sha256=TOKEN), "64 lowercase hex digits"),
        (lambda: create_app(StatusBoard("k"), max_upload_mb=0), "max_upload_mb must be positive"),
        (lambda: create_app(StatusBoard("k"), max_streams=0), "max_streams at least 1"),
        (lambda: WebServer(create_app(StatusBoard("k")), "localhost", 0), "bind must be an IP address"),
    ],
)
def test_invalid_settings_are_refused(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


# --------------------------------------------------------------------------- the page in a browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, with everything that would reach the internet switched off."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Tab:
    """A page of a kiosk-sized window and what it did: URLs requested, script errors, console errors."""

    page: Page
    requested: list[str] = field(default_factory=list)
    script_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    watched = Tab(page)
    page.on("request", lambda request: watched.requested.append(request.url))
    page.on("pageerror", lambda error: watched.script_errors.append(str(error)))
    page.on(
        "console", lambda message: message.type == "error" and watched.console_errors.append(message.text)
    )
    yield watched
    page.close()
    assert watched.script_errors == []


# Functions, not expressions: Playwright evaluates a bare expression with eval(), which the
# page's Content-Security-Policy forbids.
LIVE_IMAGE_LOADED = "() => document.getElementById('live').naturalWidth > 0"
LIVE_IMAGE_POLLED = "() => document.getElementById('live').src.includes('/frame.jpg')"
LIVE_IMAGE_CHANGED = "(before) => document.getElementById('live').src !== before"


def test_status_page_in_chromium(
    board: StatusBoard, view: LiveView, serve: Callable[..., Served], tab: Tab, tmp_path: Path
) -> None:
    served = serve(board, device_name="Hall kiosk")
    page = tab.page
    page.goto(served.url + "/")
    expect(page.locator("h1")).to_have_text("Hall kiosk")
    expect(page.locator("#label")).to_have_text("squat")
    expect(page.locator("#confidence")).to_have_text("87%")
    expect(page.locator("#model-version")).to_have_text("1.2.0")
    expect(page.locator("#mqtt-state")).to_have_text("connected")
    expect(page.locator("#recent tr")).to_have_count(1)
    page.wait_for_function(LIVE_IMAGE_LOADED, timeout=5000)
    assert "/stream.mjpg" in page.locator("#live").get_attribute("src")

    standing = prediction("stand", 0.64)  # the daemon's next result, and the frame it came with
    board.add_prediction(standing)
    board.set_view(replace(view, prediction=standing, frame_number=FRAME + 1))
    expect(page.locator("#label")).to_have_text("stand", timeout=5000)
    expect(page.locator("#confidence")).to_have_text("64%")
    expect(page.locator("#recent tr")).to_have_count(2)
    page.screenshot(path=str(tmp_path / "status.png"))

    assert tab.console_errors == []
    assert all(url.startswith(served.url) for url in tab.requested), tab.requested  # nothing from outside
    png = (tmp_path / "status.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 10_000


def test_the_page_shows_the_repetition_counter_only_with_activities(
    board: StatusBoard, serve: Callable[..., Served], tab: Tab, tmp_path: Path
) -> None:
    served = serve(board)
    page = tab.page
    page.goto(served.url + "/")
    expect(page.locator("#label")).to_have_text("squat")
    expect(page.locator("#counter")).to_be_hidden()  # a model without activities: no counter
    rep = {
        "rep": 2,
        "duration_s": 2.1,
        "measures": {"angle.left_knee": {"min": 88.0, "max": 165.0, "range": 77.0}},
    }
    squat = {"kind": "phases", "set": 1, "in_set": True, "reps": 2, "hold_s": 0.0, "last_rep": rep}
    plank = {"kind": "hold", "set": 0, "in_set": False, "reps": 0, "hold_s": 0.0, "last_rep": None}
    state = {
        "person": 1,
        "current": "squat",
        "last_range": 77.0,
        "activities": {"squat": squat, "plank": plank},
    }
    board.set_activity(state)
    expect(page.locator("#counter-value")).to_have_text("2", timeout=5000)
    expect(page.locator("#counter-activity")).to_have_text("squat")
    expect(page.locator("#counter-set")).to_have_text("set 1")
    expect(page.locator("#counter-last")).to_contain_text("left_knee 88–165°")
    page.screenshot(path=str(tmp_path / "counter.png"))
    # the set ends: the count stays on show, and says the set ended
    board.set_activity(
        {**state, "current": None, "activities": {**state["activities"], "squat": {**squat, "in_set": False}}}
    )
    expect(page.locator("#counter-set")).to_have_text("set 1 (ended)", timeout=5000)
    expect(page.locator("#counter-value")).to_have_text("2")
    # a hold shows its seconds
    held = {**plank, "set": 1, "in_set": True, "hold_s": 12.4}
    board.set_activity({**state, "current": "plank", "activities": {"squat": squat, "plank": held}})
    expect(page.locator("#counter-value")).to_have_text("12 s", timeout=5000)
    assert tab.console_errors == []


def test_page_polls_frames_without_a_free_stream_and_shows_when_offline(
    board: StatusBoard, serve: Callable[..., Served], tab: Tab
) -> None:
    served = serve(board, max_streams=1)
    connection, response = open_stream(served)  # another viewer holds the only stream
    read_part(response)
    page = tab.page
    page.goto(served.url + "/")
    page.wait_for_function(LIVE_IMAGE_POLLED, timeout=5000)
    page.wait_for_function(LIVE_IMAGE_LOADED, timeout=5000)
    first = page.evaluate("() => document.getElementById('live').src")
    page.wait_for_function(LIVE_IMAGE_CHANGED, arg=first, timeout=3000)  # it keeps refreshing
    expect(page.locator("#conn")).to_have_text("live")
    served.server.stop()
    expect(page.locator("#conn")).to_have_text("offline", timeout=5000)
    connection.close()


def test_the_page_shows_everyone_and_whose_each_result_is(
    board: StatusBoard, serve: Callable[..., Served], tab: Tab
) -> None:
    squat = {"kind": "phases", "set": 1, "in_set": True, "reps": 2, "hold_s": 0.0, "last_rep": None}
    first = {"person": 1, "current": "squat", "last_range": None, "activities": {"squat": squat}}
    idle = {**squat, "set": 0, "reps": 0, "in_set": False}
    second = {"person": 2, "current": None, "last_range": None, "activities": {"squat": idle}}
    board.set_activity({**first, "people": [first, second]})
    board.add_prediction(replace(prediction("stand", 0.7), person=2, station="left mat"))
    served = serve(board)
    page = tab.page
    page.goto(served.url + "/")
    expect(page.locator("#people li")).to_have_text(["#1 squat 2", "#2 no activity"])
    expect(page.locator("#recent tr:first-child td:nth-child(3)")).to_have_text("#2 · left mat")
    expect(page.locator("#recent tr:nth-child(2) td:nth-child(3)")).to_have_text("#1")
    board.set_activity(first)  # one person: no list, the counter alone
    expect(page.locator("#people")).to_be_hidden(timeout=5000)
    assert tab.console_errors == []


# The line each character of an element's text is on, by the top of its box.
LINE_BREAKS = """(id) => {
  const tops = [];
  const walker = document.createTreeWalker(document.getElementById(id), NodeFilter.SHOW_TEXT);
  const range = document.createRange();
  let text = "";
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (let i = 0; i < node.length; i++) {
      range.setStart(node, i);
      range.setEnd(node, i + 1);
      tops.push(range.getBoundingClientRect().top);
      text += node.data[i];
    }
  }
  const breaks = [];
  for (let i = 1; i < tops.length; i++) if (tops[i] > tops[i - 1] + 1) breaks.push(text.slice(0, i));
  return { text, breaks };
}"""


def test_long_labels_wrap_between_words_and_values_stay_on_one_line(
    board: StatusBoard, serve: Callable[..., Served], browser: Browser
) -> None:
    long_label = "Traffic_BackStop_Extended_Variant"
    values = {"model-version": "2026.12.02-143501-a1b2c3d4e5", "mqtt-broker": "mqtt.clinic.example.org:8883"}
    board.set_model(replace(MODEL, version=values["model-version"], labels=(long_label, "stand")))
    board.add_prediction(prediction(long_label, 0.9))
    board.set_mqtt(enabled=True, connected=True, broker=values["mqtt-broker"])
    served = serve(board)
    page = browser.new_page(viewport={"width": 360, "height": 740})  # a phone
    try:
        page.goto(served.url + "/")
        expect(page.locator("#label")).to_have_text(long_label)
        label = page.evaluate(LINE_BREAKS, "label")
        assert label["text"] == long_label
        assert label["breaks"], "a label this long wraps on a phone"
        assert all(before.endswith("_") for before in label["breaks"]), label  # never mid-word
        for element, value in values.items():
            assert page.evaluate(LINE_BREAKS, element)["breaks"] == [], element  # cut with an ellipsis
            assert page.locator(f"#{element}").get_attribute("title") == value  # and shown in full on hover
    finally:
        page.close()


def test_details_are_for_the_technician_and_the_model_status_is_in_plain_words(
    board: StatusBoard, serve: Callable[..., Served], tab: Tab
) -> None:
    served = serve(board)
    page = tab.page
    page.goto(served.url + "/")
    expect(page.locator("#current-when")).to_contain_text("at ")
    for technical in ("#current-detail", "#stages", "#latency-p99", "#recent td.detail >> nth=0"):
        expect(page.locator(technical)).to_be_hidden()
    expect(page.locator("#model-status")).to_have_text("running 1.2.0")
    expect(page.locator("#model-hint")).to_be_hidden()
    page.locator("#details-toggle").click()
    expect(page.locator("#current-detail")).to_have_text(f" · frames 1–{FRAME + 1} · 43 ms")  # 42.5, rounded
    expect(page.locator("#latency-p99")).to_be_visible()
    page.reload()  # the choice is remembered
    expect(page.locator("#stages")).to_be_visible()
    # a refused push: the old model runs on, and the page says both
    board.mark_model("rejected", "signature does not match any trusted key")
    expect(page.locator("#model-status")).to_have_text(
        "running 1.2.0; refused a new model: signature does not match any trusted key", timeout=5000
    )
    assert tab.console_errors == []


def test_without_a_model_the_page_says_how_to_give_it_one(serve: Callable[..., Served], tab: Tab) -> None:
    served = serve(StatusBoard("kiosk-new"))
    page = tab.page
    page.goto(served.url + "/")
    expect(page.locator("#label")).to_have_text("no model yet")
    expect(page.locator("#model-hint")).to_be_visible()
    expect(page.locator("#model-hint")).to_contain_text("python -m provisioning push")
    assert tab.console_errors == []


def test_privacy_mode_draws_skeletons_without_any_camera_image(
    view: LiveView, frame: np.ndarray, serve: Callable[..., Served], tab: Tab
) -> None:
    status = StatusBoard("kiosk-private", privacy=True)
    status.set_model(MODEL)
    height, width = frame.shape[:2]
    status.set_view(replace(view, image=None, size=(width, height)))
    status.count("frames_processed")
    served = serve(status)
    page = tab.page
    page.goto(served.url + "/")
    expect(page.locator("#skeletons")).to_be_visible()
    expect(page.locator("#live")).to_be_hidden()
    expect(page.locator(".privacy-note")).to_contain_text("no camera image leaves this device")
    drawn = """() => {
      const c = document.getElementById('skeletons');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let lit = 0;
      for (let i = 0; i < d.length; i += 4) if (d[i] > 60 || d[i + 1] > 60 || d[i + 2] > 60) lit++;
      return [c.width, c.height, lit];
    }"""
    page.wait_for_function(f"() => ({drawn})()[2] > 500", timeout=5000)
    assert page.evaluate(drawn)[:2] == [width, height]
    assert not [url for url in tab.requested if "frame.jpg" in url or "stream.mjpg" in url], tab.requested
    assert any(url.endswith("/api/pose") for url in tab.requested)
    for path in ("/frame.jpg", "/stream.mjpg"):
        status_code, body = fetch_json(served.url + path)
        assert status_code == 404 and "privacy" in body["error"], (path, body)
    assert tab.console_errors == []


# --------------------------------------------------------------------------- every endpoint in every state


def openapi_schema(name: str) -> dict[str, Any]:
    """A component of ``device/openapi.json`` as JSON Schema (OpenAPI 3.0's ``nullable`` spelled out)."""

    def plain(node: Any) -> Any:
        if isinstance(node, list):
            return [plain(item) for item in node]
        if not isinstance(node, dict):
            return node
        converted = {key: plain(value) for key, value in node.items() if key != "nullable"}
        return {"anyOf": [converted, {"type": "null"}]} if node.get("nullable") else converted

    document = json.loads(OPENAPI.read_text())
    return {"$ref": f"#/components/schemas/{name}", "components": plain(document["components"])}


def fresh(board: StatusBoard, view: LiveView) -> None:
    """A kiosk just started: no model, no frame, no result, the camera still opening, no broker yet."""


def frames_without_a_model(board: StatusBoard, view: LiveView) -> None:
    board.set_camera("running", source="camera 0")
    board.record_stage("pose", 0.02)
    board.set_view(view)


def a_model_and_no_result_yet(board: StatusBoard, view: LiveView) -> None:
    frames_without_a_model(board, view)
    board.set_model(MODEL)


def camera_lost(board: StatusBoard, view: LiveView) -> None:
    """Classified for a while, then the camera went: the last frame stays, no new ones come."""
    board.set_model(MODEL)
    board.set_view(view)
    assert view.prediction is not None
    board.add_prediction(view.prediction)
    board.set_camera("reconnecting", source="camera 0", detail="no more frames; retrying in 4.0 s")


def no_broker(board: StatusBoard, view: LiveView) -> None:
    a_model_and_no_result_yet(board, view)
    assert view.prediction is not None
    board.add_prediction(view.prediction)
    board.set_mqtt(enabled=True, connected=False, broker="127.0.0.1:1883", detail="connection refused")
    board.set_outbox(depth=120, dropped=0)


@pytest.mark.parametrize(
    "state", [fresh, frames_without_a_model, a_model_and_no_result_yet, camera_lost, no_broker]
)
def test_every_endpoint_answers_in_every_state(
    serve: Callable[..., Served], view: LiveView, state: Callable[[StatusBoard, LiveView], None]
) -> None:
    """Each endpoint gives its described answer in each state a kiosk is in at some point.

    Before, ``/metrics`` was a 500 until the first classification (its latency percentiles were
    None), exactly when Prometheus starts scraping a new kiosk.
    """
    board = StatusBoard("kiosk-test")
    state(board, view)
    served = serve(board, models=Catalog())
    has_frame, healthy = board.view is not None, board.frames_flowing() and board.model is not None
    expected = {
        "/": (200, "text/html"),
        "/api/status": (200, "application/json"),
        "/healthz": (200 if healthy else 503, "application/json"),
        "/metrics": (200, "text/plain"),
        "/api/models": (200, "application/json"),
        "/api/pose": (200 if has_frame else 503, "application/json"),
        "/frame.jpg": (200, "image/jpeg") if has_frame else (503, "application/json"),
        "/stream.mjpg": (200, "multipart/x-mixed-replace") if has_frame else (503, "application/json"),
        "/api/openapi.json": (200, "application/json"),
    }
    answers = {}
    for path in expected:
        connection = http.client.HTTPConnection("127.0.0.1", served.server.port, timeout=10)
        connection.request("GET", path)
        response = connection.getresponse()
        content_type = response.headers["Content-Type"].split(";")[0]
        body = response.read(65536)  # a stream never ends: its first part is enough
        answers[path] = (response.status, content_type)
        if content_type == "application/json" and response.status >= 400:
            assert json.loads(body)["error"], path
        connection.close()
    assert answers == expected
    _, snapshot = fetch_json(served.url + "/api/status")
    jsonschema.validate(snapshot, openapi_schema("Status"), cls=jsonschema.Draft202012Validator)
    families = {f.name: f for f in text_string_to_metric_families(fetch(served.url + "/metrics")[2].decode())}
    assert families["movement_edge_model_loaded"].samples[0].value == (board.model is not None)
    latency = families["movement_edge_classification_latency_seconds"].samples
    assert len(latency) == (3 if snapshot["current"] else 0)  # no quantiles before the first result


# --------------------------------------------------------------------------- privacy and redaction


def test_in_privacy_mode_no_camera_image_is_served(
    serve: Callable[..., Served], view: LiveView
) -> None:
    board = StatusBoard("kiosk-test", privacy=True)
    board.set_view(replace(view, image=None, size=(720, 1280)))  # the daemon keeps no image
    served = serve(board)
    for path in ("/frame.jpg", "/stream.mjpg"):
        assert fetch_json(served.url + path) == (404, {"error": PRIVACY_REFUSAL}), path
    assert fetch_json(served.url + "/api/status")[1]["privacy"] is True
    status, pose = fetch_json(served.url + "/api/pose")
    assert status == 200 and len(pose["people"]) == 1  # the skeleton still leaves the device
    assert fetch(served.url + "/")[0] == 200


def test_camera_passwords_are_not_shown(serve: Callable[..., Served], frame: np.ndarray) -> None:
    """A real HTTP camera (another kiosk's MJPEG stream) named with a password in its user part and
    in its query: the status page and ``/api/status`` show where it is, never the password."""
    camera_board = StatusBoard("camera")
    camera_board.set_view(LiveView(frame, None, None, 1))
    camera = serve(camera_board)
    url = f"http://admin:hunter2@127.0.0.1:{camera.server.port}/stream.mjpg?channel=1&password=hunter2"
    board = StatusBoard("kiosk-test")
    capture = Capture(UrlSource(kind="url", url=url), CaptureSection(), board)
    capture.start()
    try:
        eventually(lambda: board.snapshot()["counters"]["frames_captured"] > 0, 20, "frames from the camera")
        served = serve(board)
        _, snapshot = fetch_json(served.url + "/api/status")
        page = fetch(served.url + "/")[2].decode()
    finally:
        capture.stop()
    shown = f"http://***@127.0.0.1:{camera.server.port}/stream.mjpg?channel=1&password=***"
    assert snapshot["camera"]["source"] == shown
    assert "hunter2" not in json.dumps(snapshot) and "hunter2" not in page


# --------------------------------------------------------------------------- HTTPS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles.make(tmp_path_factory.mktemp("tls"))


def test_the_kiosk_over_https(
    board: StatusBoard, view: LiveView, serve: Callable[..., Served], tls_files: TlsFiles
) -> None:
    """A real TLS client that trusts only the kiosk's certificate: the page, the status, a 1 MB
    upload and the live stream, all on one keep-alive connection where HTTP allows."""
    catalog = Catalog()
    served = serve(board, tls=tls_files, access_policy=DEVICE_TOKEN, models=catalog)
    assert served.url.startswith("https://")
    connection = http.client.HTTPSConnection("127.0.0.1", served.server.port, context=tls_files.client())
    connection.request("GET", "/")
    page = connection.getresponse()
    assert page.status == 200 and b"kiosk-test" in page.read()
    connection.request("GET", "/api/status")
    assert json.loads(connection.getresponse().read())["current"]["label"] == "squat"
    bundle = json.dumps({"version": "1.3.0", "padding": "x" * 2**20}).encode()
    headers = {**AUTH, "Content-Type": "application/zip"}
    connection.request("POST", "/api/models", body=bundle, headers=headers)
    upload = connection.getresponse()
    assert (upload.status, json.loads(upload.read())) == (201, {"version": "1.3.0", "installed": True})
    assert catalog.calls == [("install", bundle, False)]
    connection.request("GET", "/stream.mjpg")
    stream = connection.getresponse()
    assert stream.status == 200
    first = read_part(stream)
    board.set_view(replace(view, frame_number=FRAME + 1))
    second = read_part(stream)
    for jpeg in (first, second):
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == view.image.shape
    connection.close()


def test_https_refuses_plain_http(
    board: StatusBoard, serve: Callable[..., Served], tls_files: TlsFiles
) -> None:
    """An ``http://`` request to the HTTPS port gets no answer: the connection is closed."""
    served = serve(board, tls=tls_files)
    connection = http.client.HTTPConnection("127.0.0.1", served.server.port, timeout=10)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        connection.request("GET", "/api/status")
        connection.getresponse()
    connection.close()


def test_a_failing_card_is_on_the_page_in_plain_words(
    board: StatusBoard, serve: Callable[..., Served], tab: Tab
) -> None:
    from device.status import STORAGE_OFF

    board.set_storage({**STORAGE_OFF, "mode": "disk"})
    served = serve(board)
    page = tab.page
    page.goto(served.url + "/")
    expect(page.locator("#storage-state")).to_have_text("ok")
    expect(page.locator("#storage-detail")).to_have_text("")
    failing = {"ok": False, "mode": "memory", "detail": "the file system is read-only"}
    board.set_storage({**STORAGE_OFF, **failing})
    expect(page.locator("#storage-state")).to_have_text("failing", timeout=5000)
    expect(page.locator("#storage-detail")).to_have_text(
        "the file system is read-only: results are kept in memory and sent from there"
    )
    assert tab.console_errors == []


def test_a_browser_logs_in_over_https_and_sees_the_page(
    board: StatusBoard, serve: Callable[..., Served], browser: Browser, tls_files: TlsFiles
) -> None:
    """Chromium sent to the login form, logging in with the viewer token, landing on the live page;
    its cookie is HttpOnly, Secure and SameSite=Strict. (Chromium is told to accept the test's own
    certificate; the TLS clients above verify it.)"""
    viewer = "viewer-token-0123456789"
    policy = replace(
        DEVICE_TOKEN, viewer_sha256=hashlib.sha256(viewer.encode()).hexdigest(), login_required=True
    )
    served = serve(board, tls=tls_files, access_policy=policy)
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(served.url + "/")
        expect(page).to_have_url(served.url + "/login?next=/")
        page.fill("#token", "not-the-token")
        page.click("button[type=submit]")
        expect(page.locator("#login-error")).to_contain_text("not right")
        page.fill("#token", viewer)
        page.click("button[type=submit]")
        expect(page.locator("#label")).to_have_text("squat")
        page.wait_for_function(LIVE_IMAGE_LOADED, timeout=5000)
        (cookie,) = context.cookies()
        assert cookie["name"] == "__Host-movement-edge"
        assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
        page.click("form.logout button")
        expect(page).to_have_url(served.url + "/login")
        assert errors == []
    finally:
        context.close()
