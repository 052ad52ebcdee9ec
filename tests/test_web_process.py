"""The web face in a process of its own (device/web_process.py): what the daemon's board says is
what its page says, model changes and live viewers reach the daemon, and it ends with the daemon.

Real processes over real HTTP on 127.0.0.1: a :class:`~device.web_process.WebProcess` serving a
real :class:`~device.status.StatusBoard` and test_web's real minimal model catalog; the daemon's
own use of it runs in tests/test_daemon.py, tests/test_hostile_http.py and tests/test_api_schema.py.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from conftest import eventually
from test_daemon import Notifications, _child, _write_toml, device_config, notifications  # noqa: F401
from test_web import TOKEN, Catalog, fetch, fetch_json, frame, prediction  # noqa: F401  (frame: a fixture)

from device.config import ConfigError, parse_config
from device.status import STAGES, LiveView, ModelInfo, StatusBoard
from device.web_process import FRESH_S, CpuBudget, WebProcess
from trainer.recipes import PoseBundle

AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = ModelInfo("movement", "1.2.0", "ab" * 32, "sklearn", ("squat", "stand"), 30)


def kiosk_config(tmp_path: Path, *, privacy: bool = False, http: dict[str, Any] | None = None) -> Any:
    return parse_config(
        {
            "device": {"id": "kiosk-web", "state_dir": str(tmp_path / "state"), "privacy": privacy},
            "source": {"kind": "file", "paths": [str(tmp_path / "none.mp4")]},
            "http": {"port": 0, "token": TOKEN, **(http or {})},
        },
        env={},
    )


def running_board(device_id: str = "kiosk-web", *, privacy: bool = False) -> StatusBoard:
    """A board as a running daemon fills it, on the real clock (the web process reads its own)."""
    board = StatusBoard(device_id, privacy=privacy)
    board.set_camera("running", source="squats.mp4")
    board.set_model(MODEL)
    for stage in STAGES:
        board.record_stage(stage, 0.02)
    board.count("frames_processed", 11)
    board.add_prediction(prediction("squat", 0.87))
    return board


@pytest.fixture
def start_web(tmp_path: Path) -> Iterator[Callable[..., WebProcess]]:
    """Start web processes; each is stopped afterwards and must then be gone."""
    started: list[WebProcess] = []

    def start(board: StatusBoard, catalog: Any = None, **config: Any) -> WebProcess:
        web = WebProcess(kiosk_config(tmp_path, **config), board, catalog or Catalog())
        started.append(web)
        web.start()
        return web

    yield start
    for web in started:
        web.stop()
        assert not web.running


def url(web: WebProcess, path: str) -> str:
    return f"http://127.0.0.1:{web.port}{path}"


def test_the_board_exported_is_the_board_restored() -> None:
    """Everything but the live view crosses, including the bundle's read-only display names."""
    board = running_board()
    board.set_model(
        MODEL.__class__(**{**MODEL.__dict__, "label_names": MappingProxyType({"squat": "Squat"})})
    )
    copy = StatusBoard("other")
    copy.restore(board.export())
    ours, theirs = board.snapshot(), copy.snapshot()
    for key in ("device_id", "camera", "counters", "model", "recent", "latency_ms", "started_at"):
        assert theirs[key] == ours[key], key
    assert copy.model is not None and copy.model.display_name("squat") == "Squat"
    assert copy.view is None


class Clocks:
    """Wall and CPU time advanced by the test, and the waits the budget asked for."""

    def __init__(self) -> None:
        self.wall, self.cpu = 100.0, 5.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.wall += seconds


def test_the_cpu_budget_makes_requests_wait_only_while_over_it() -> None:
    clocks = Clocks()
    budget = CpuBudget(0.25, clock=lambda: clocks.wall, cpu=lambda: clocks.cpu, sleep=clocks.sleep)
    clocks.wall, clocks.cpu = clocks.wall + 1.0, clocks.cpu + 0.125  # an eighth of a core: within
    budget.wait()
    assert clocks.slept == []
    clocks.wall, clocks.cpu = clocks.wall + 0.5, clocks.cpu + 0.5  # a burst: 0.5 s of CPU in 0.5 s
    budget.wait()
    budget.wait()
    assert clocks.slept == [1.0, 0.5]  # waits of at most a period, until 0.5 s is a quarter of the time
    budget.wait()
    assert clocks.slept == [1.0, 0.5]
    clocks.wall += 10.0  # quiet time earns no credit for the next burst
    budget.wait()
    clocks.wall, clocks.cpu = clocks.wall + 0.25, clocks.cpu + 0.25
    budget.wait()
    assert clocks.slept == [1.0, 0.5, 0.75]
    with pytest.raises(ValueError, match="share"):
        CpuBudget(0)


def test_the_page_runs_in_a_process_of_its_own(
    start_web: Callable[..., WebProcess],
) -> None:
    board = running_board()
    web = start_web(board)
    assert web.pid is not None and web.pid != os.getpid()
    status, snap = fetch_json(url(web, "/api/status"))
    assert status == 200
    assert snap["device_id"] == "kiosk-web"
    assert snap["model"]["version"] == "1.2.0"
    assert snap["current"]["label"] == "squat"
    assert fetch(url(web, "/healthz"))[0] == 200  # a frame through pose just now, a model


def test_what_the_daemon_records_reaches_the_page(start_web: Callable[..., WebProcess]) -> None:
    board = running_board()
    web = start_web(board)
    board.count("frames_processed", 5)
    board.set_camera("reconnecting", detail="camera lost")
    eventually(
        lambda: fetch_json(url(web, "/api/status"))[1]["counters"]["frames_processed"] == 16, 10, "the count"
    )
    assert fetch_json(url(web, "/api/status"))[1]["camera"]["state"] == "reconnecting"


def test_a_status_body_is_built_from_the_daemons_board_as_it_is_then(
    start_web: Callable[..., WebProcess],
) -> None:
    """Not from the copy pushed up to a tenth of a second before: the first body after a change."""
    board = running_board()
    web = start_web(board)
    board.count("frames_processed", 5)
    board.add_prediction(prediction("stand", 0.9))
    snap = fetch_json(url(web, "/api/status"))[1]
    assert snap["counters"]["frames_processed"] == 16
    assert snap["counters"]["classifications"] == 2 and snap["current"]["label"] == "stand"


def test_a_request_finds_the_daemons_newest_frame_and_health_without_a_push(
    start_web: Callable[..., WebProcess], squats_reference: np.ndarray
) -> None:
    """Nothing crosses to the web process while nobody asks; a request that finds its copy older
    than :data:`FRESH_S` has the daemon send its board and view first, so the first answer after
    a change (once the copy is that old) already has it."""
    board = running_board()
    web = start_web(board)
    size = (1280, 720)
    for frame_number in (24, 25):
        board.set_view(LiveView(None, squats_reference[frame_number], None, frame_number, size=size))
        board.record_stage("pose", 0.02)  # a frame through pose: healthy
        time.sleep(FRESH_S)  # the copy is at least this old now (the answer does not depend on speed)
        status, pose = fetch_json(url(web, "/api/pose"))
        assert (status, pose["frame"]) == (200, frame_number)
    storage = {"ok": False, "mode": "memory", "detail": "read-only file system", "memory": {"depth": 3}}
    board.set_storage(storage)
    time.sleep(FRESH_S)
    status, _, body = fetch(url(web, "/healthz"))
    assert status == 503 and b"read-only file system" in body


class StuckBoard(StatusBoard):
    """A daemon's board whose export waits while ``stuck`` is set: a daemon too busy to answer.
    (The events are the class's: everything on the instance goes to the web process.)"""

    stuck = threading.Event()
    released = threading.Event()

    def export(self) -> bytes:
        if self.stuck.is_set():
            self.released.wait(30)
        return super().export()


def test_a_daemon_that_does_not_answer_leaves_the_page_answering_from_its_last_copy(
    start_web: Callable[..., WebProcess],
) -> None:
    board = StuckBoard("kiosk-web")
    board.set_model(MODEL)
    board.record_stage("pose", 0.02)
    web = start_web(board)
    time.sleep(FRESH_S)  # the copy is old enough to be fetched again
    board.stuck.set()
    try:
        status, _, body = fetch(url(web, "/healthz"))  # waits a second for the board, then the copy
    finally:
        board.released.set()
        board.stuck.clear()
    assert status == 200, body  # the copy it had: a model, a frame through pose a moment ago


def test_model_changes_are_made_by_the_daemons_catalog(start_web: Callable[..., WebProcess]) -> None:
    """Uploads, activations and refusals cross to the daemon and back with their statuses."""
    catalog = Catalog()
    web = start_web(running_board(), catalog)
    bundle = json.dumps({"version": "2.0.0"}).encode()
    status, body = fetch_json(url(web, "/api/models?force=1"), method="POST", body=bundle, headers=AUTH)
    assert (status, body) == (201, {"version": "2.0.0", "installed": True})
    assert catalog.calls == [("install", bundle, True)]  # the bytes as sent, in this process
    status, body = fetch_json(url(web, "/api/models/2.0.0/activate"), method="POST", headers=AUTH)
    assert (status, body) == (200, {"version": "2.0.0", "active": True})
    status, body = fetch_json(url(web, "/api/models/9.9.9/activate"), method="POST", headers=AUTH)
    assert (status, body) == (422, {"error": "no installed model version '9.9.9'"})
    status, body = fetch_json(url(web, "/api/models"), method="POST", body=b"not a bundle", headers=AUTH)
    assert status == 422 and body["error"].startswith("not a model bundle")
    assert fetch_json(url(web, "/api/models"))[1] == [
        {"version": "1.2.0", "active": False},
        {"version": "2.0.0", "active": True},
    ]
    status, _ = fetch_json(url(web, "/api/models"), method="POST", body=bundle)  # no token: not even asked
    assert status == 401 and len(catalog.calls) == 4


def part_of(stream: http.client.HTTPResponse) -> bytes:
    """The next JPEG of an MJPEG stream."""
    while not (line := stream.readline()).startswith(b"Content-Length:"):
        assert line, "the stream ended"
    stream.readline()
    return stream.read(int(line.split(b":")[1]))


def test_live_viewers_are_counted_in_the_daemon(
    start_web: Callable[..., WebProcess],
    frame: np.ndarray,  # noqa: F811  (the fixture imported from test_web)
) -> None:
    board = running_board()
    board.set_view(LiveView(frame, None, None, 1))
    web = start_web(board)
    viewers = []
    for _ in range(web.streams.limit):
        connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
        connection.request("GET", "/stream.mjpg")
        response = connection.getresponse()
        viewers.append(response)  # kept: a response collected closes its socket, and the viewer leaves
        assert response.status == 200
        assert part_of(response).startswith(b"\xff\xd8")  # a JPEG
    assert web.streams.active == web.streams.limit
    status, body = fetch_json(url(web, "/stream.mjpg"))
    assert status == 503 and "live streams are in use" in body["error"]
    for response in viewers:
        response.close()
    eventually(lambda: web.streams.active == 0, 30, "the viewers released")


def test_privacy_mode_serves_no_picture_from_the_web_process(
    start_web: Callable[..., WebProcess], squats_reference: np.ndarray
) -> None:
    board = running_board(privacy=True)
    board.set_view(LiveView(None, squats_reference[24], None, 24, size=(720, 1280)))
    web = start_web(board, privacy=True)
    eventually(lambda: fetch(url(web, "/api/pose"))[0] == 200, 10, "the keypoints")
    for path in ("/frame.jpg", "/stream.mjpg"):
        assert fetch(url(web, path))[0] == 404


def test_a_port_in_use_stops_the_start_with_one_line(
    tmp_path: Path, start_web: Callable[..., WebProcess]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"http 127.0.0.1:{port}: "):
            start_web(running_board(), http={"port": port})


def test_an_unusable_certificate_is_a_config_error(
    tmp_path: Path, start_web: Callable[..., WebProcess]
) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    tls = {"tls_cert": str(tmp_path / "cert.pem"), "tls_key": str(tmp_path / "key.pem")}
    with pytest.raises(ConfigError, match="http.tls_"):
        start_web(running_board(), http=tls)


def test_the_web_process_ends_with_the_daemons_end_of_the_socket(
    start_web: Callable[..., WebProcess],
) -> None:
    web = start_web(running_board())
    port = web.port
    web.stop()
    assert not web.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def web_process_of(daemon_pid: int) -> int:
    """The daemon's child serving its page."""
    children = Path(f"/proc/{daemon_pid}/task/{daemon_pid}/children").read_text().split()
    return next(int(c) for c in children if b"device.web_process" in Path(f"/proc/{c}/cmdline").read_bytes())


def gone(pid: int) -> bool:
    """Ended: reaped, or a zombie waiting to be."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_web_process_that_ended_stops_the_watchdog(
    tmp_path: Path,
    pose_model: PoseBundle,
    data_dir: Path,
    notifications: Notifications,  # noqa: F811  (the fixture imported from test_daemon)
) -> None:
    """systemd then restarts the kiosk, page and all, as it does a hung pipeline."""
    config = device_config(
        tmp_path, pose_model, data_dir / "videos" / "dance.mp4", 1, pace="realtime", loop=True
    )
    config["mqtt"] = {"enabled": False}
    daemon = _child(
        _write_toml(tmp_path / "device.toml", config),
        NOTIFY_SOCKET=str(notifications.path),
        WATCHDOG_USEC="2000000",
    )
    try:
        eventually(lambda: notifications.count("WATCHDOG=1") >= 1, 60, "the watchdog fed")
        web = web_process_of(daemon.pid)
        os.kill(web, signal.SIGKILL)
        eventually(lambda: gone(web), 30, "the web process ended")
        seen = len(notifications.read())

        def statuses() -> list[int]:
            """Where the status lines since the end of the web process are."""
            return [
                i for i, line in enumerate(notifications.read()) if i >= seen and line.startswith("STATUS=")
            ]

        eventually(lambda: len(statuses()) >= 3, 30, "three more rounds of housekeeping")
        # a round under way when the process ended may still feed it; none after that
        assert "WATCHDOG=1" not in notifications.read()[statuses()[0] + 1 :]
        assert daemon.poll() is None  # the daemon itself runs on until systemd acts
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    finally:
        daemon.kill()
