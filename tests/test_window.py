"""The rolling window and the one-frame capture slot."""

from __future__ import annotations

import functools
import http.server
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import eventually

from device.capture import Capture, FrameSlot
from device.config import CameraSource, CaptureSection, FileSource, UrlSource
from device.keypoints import empty_points
from device.sources import Frame
from device.status import StatusBoard
from device.window import RollingWindow


def _points(value: float) -> np.ndarray:
    points = empty_points(1)[0]
    points[:, :2] = value
    return points


def test_windows_come_every_stride_frames_oldest_first() -> None:
    window = RollingWindow(size=4, stride=2)
    emitted = [window.push(n, n * 10.0, 0.0, _points(n)) for n in range(1, 10)]
    got = [(w.frame_numbers.tolist(), w.points[:, 0, 0].tolist()) for w in emitted if w is not None]
    assert got == [
        ([1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0]),
        ([3, 4, 5, 6], [3.0, 4.0, 5.0, 6.0]),
        ([5, 6, 7, 8], [5.0, 6.0, 7.0, 8.0]),
    ]
    last = next(w for w in reversed(emitted) if w is not None)
    assert last.timestamps_ms.tolist() == [50.0, 60.0, 70.0, 80.0]
    with pytest.raises(ValueError):
        last.points[0, 0, 0] = 1.0  # windows are immutable


@pytest.mark.parametrize(("policy", "expected"), [("skip", [1, 2, 4]), ("reset", None)])
def test_frames_without_a_person_skip_or_reset(policy: str, expected: list[int] | None) -> None:
    window = RollingWindow(size=3, stride=1, no_person=policy)
    window.push(1, 0, 0, _points(1))
    window.push(2, 0, 0, _points(2))
    assert window.push(3, 0, 0, None) is None
    result = window.push(4, 0, 0, _points(4))
    assert (None if result is None else result.frame_numbers.tolist()) == expected


def test_skipping_spans_short_gaps_but_a_window_long_absence_resets() -> None:
    window = RollingWindow(size=3, stride=1, no_person="skip")
    window.push(1, 0, 0, _points(1))
    window.push(2, 0, 0, _points(2))
    for frame in (3, 4):  # two missing frames: shorter than a window, spanned
        window.push(frame, 0, 0, None)
    spanned = window.push(5, 0, 0, _points(5))
    assert spanned is not None and spanned.frame_numbers.tolist() == [1, 2, 5]
    for frame in (6, 7, 8):  # a whole window without anyone: the next visit starts afresh
        window.push(frame, 0, 0, None)
    assert window.push(9, 0, 0, _points(9)) is None
    window.push(10, 0, 0, _points(10))
    fresh = window.push(11, 0, 0, _points(11))
    assert fresh is not None and fresh.frame_numbers.tolist() == [9, 10, 11]


def _frame(n: int) -> Frame:
    image = np.zeros((2, 2, 3), np.uint8)
    image.setflags(write=False)
    return Frame(image, n, n * 33.0, "test")


def test_the_slot_keeps_only_the_newest_frame_and_counts_the_rest() -> None:
    slot, stop = FrameSlot(), threading.Event()
    for n in range(1, 6):
        slot.put(_frame(n), stop)
    assert slot.get(0.1).frame_number == 5
    assert slot.dropped == 4
    assert slot.get(0.05) is None


def test_a_blocking_slot_loses_nothing() -> None:
    slot, stop = FrameSlot(block=True), threading.Event()
    received: list[int] = []

    def consume() -> None:
        while len(received) < 50:
            frame = slot.get(1.0)
            if frame is not None:
                received.append(frame.frame_number)

    consumer = threading.Thread(target=consume)
    consumer.start()
    for n in range(1, 51):
        slot.put(_frame(n), stop)
    consumer.join(10)
    assert received == list(range(1, 51)) and slot.dropped == 0


def test_a_video_that_ends_ends_the_capture_cleanly(data_dir: Path) -> None:
    status = StatusBoard("t")
    source = FileSource(kind="file", paths=[data_dir / "videos" / "squats.mp4"], pace="fast")
    capture = Capture(source, CaptureSection(), status)
    capture.start()
    frames: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        frame = capture.slot.get(0.2)
        if frame is not None:
            frames.append(frame.frame_number)
        elif capture.ended.is_set():
            break
    capture.stop()
    assert frames == list(range(1, 66))
    snapshot = status.snapshot()
    assert snapshot["camera"]["state"] == "ended"
    assert snapshot["counters"]["frames_captured"] == 65


def test_a_missing_camera_is_retried_with_backoff_not_a_crash() -> None:
    status = StatusBoard("t")
    settings = CaptureSection(reconnect_initial_s=0.05, reconnect_max_s=0.2)
    capture = Capture(CameraSource(kind="camera", device="/dev/video99"), settings, status)
    capture.start()
    deadline = time.monotonic() + 10
    while status.snapshot()["counters"]["source_reopens"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    camera = status.snapshot()["camera"]
    capture.stop()
    assert camera["state"] == "reconnecting"
    assert "/dev/video99" in camera["detail"]
    assert not capture.ended.is_set()


def test_a_missing_video_file_is_an_error_state(tmp_path: Path) -> None:
    status = StatusBoard("t")
    capture = Capture(FileSource(kind="file", paths=[tmp_path / "gone.mp4"]), CaptureSection(), status)
    capture.start()
    assert capture.ended.wait(5)
    capture.stop()
    assert status.snapshot()["camera"] == {
        "state": "error",
        "source": "",
        "detail": f"{tmp_path / 'gone.mp4'}: no such video file",
    }


class _VideoServer:
    """Serves a folder over HTTP on a loopback port: an 'IP camera' that can be unplugged."""

    def __init__(self, folder: Path, port: int = 0) -> None:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *args: None  # type: ignore[method-assign]
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="video-server", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_a_network_stream_is_read_and_reopened_after_it_is_lost(data_dir: Path) -> None:
    server = _VideoServer(data_dir / "videos")
    port = server.port
    status = StatusBoard("t")
    source = UrlSource(kind="url", url=f"http://127.0.0.1:{port}/example_video.webm")  # streamable
    capture = Capture(source, CaptureSection(reconnect_initial_s=0.1, reconnect_max_s=0.5), status)
    capture.start()
    try:
        first = capture.slot.get(20)
        assert first is not None and first.image.shape == (720, 1280, 3)
        assert status.snapshot()["camera"]["state"] == "running"
        server.stop()  # the stream ends and the "camera" is gone: reopen attempts fail
        eventually(lambda: status.snapshot()["camera"]["state"] == "reconnecting", 30, "reconnecting")
        server = _VideoServer(data_dir / "videos", port)  # plugged back in
        eventually(lambda: status.snapshot()["camera"]["state"] == "running", 30, "running again")
        assert status.snapshot()["counters"]["source_reopens"] >= 1
        assert capture.slot.get(10) is not None
    finally:
        capture.stop()
        server.stop()
