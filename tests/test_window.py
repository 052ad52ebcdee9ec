"""Windows as spans of time, resampled to the model's rate; and the one-frame capture slot."""

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
from device.features import WindowSpec
from device.keypoints import empty_points
from device.sources import Frame
from device.status import StatusBoard
from device.window import FrameWindow, TimeWindow, Window


def _points(value: float) -> np.ndarray:
    points = empty_points(1)[0]
    points[:, :2] = value
    return points


def _window(size: int, stride: int, fps: float, no_person: str = "skip") -> TimeWindow:
    return TimeWindow(WindowSpec(size, stride, fps=fps), no_person)


def _feed(window: TimeWindow, stamps_ms: list[float], value=lambda t: t) -> list[Window]:
    """Frames at ``stamps_ms`` (numbered from 1) whose coordinates are ``value(t)``; the windows."""
    emitted = [window.push(n, t, 0.0, _points(value(t))) for n, t in enumerate(stamps_ms, start=1)]
    return [w for w in emitted if w is not None]


def test_at_the_models_rate_windows_are_the_frames_every_stride_oldest_first() -> None:
    windows = _feed(_window(size=4, stride=2, fps=100), [n * 10.0 for n in range(9)])
    got = [(w.frame_numbers.tolist(), np.round(w.points[:, 0, 0], 9).tolist()) for w in windows]
    assert got == [
        ([1, 2, 3, 4], [0.0, 10.0, 20.0, 30.0]),
        ([3, 4, 5, 6], [20.0, 30.0, 40.0, 50.0]),
        ([5, 6, 7, 8], [40.0, 50.0, 60.0, 70.0]),
    ]
    assert np.allclose(windows[-1].timestamps_ms, [40.0, 50.0, 60.0, 70.0])
    with pytest.raises(ValueError):
        windows[-1].points[0, 0, 0] = 1.0  # windows are immutable


@pytest.mark.parametrize("kiosk_fps", [5.0, 10.0, 15.0, 30.0, 60.0])
def test_a_window_is_the_same_span_of_time_at_any_kiosk_rate(kiosk_fps: float) -> None:
    """A model trained at 30 frames/s on 1 s windows every 0.5 s: a kiosk at 5-60 frames/s."""
    stamps = list(np.linspace(0.0, 4000.0, round(4 * kiosk_fps) + 1))  # 4 s of frames
    windows = _feed(_window(size=31, stride=15, fps=30), stamps, value=lambda t: 2.0 * t)
    assert len(windows) == 7  # ending at 1.0, 1.5 ... 4.0 s
    for window in windows:
        assert window.points.shape == (31, 33, 5)
        assert window.timestamps_ms[-1] - window.timestamps_ms[0] == pytest.approx(1000.0)
        assert np.diff(window.timestamps_ms) == pytest.approx(np.full(30, 1000.0 / 30))
        # linear movement is resampled exactly, whatever frames the kiosk saw
        assert window.points[:, 0, 0] == pytest.approx(2.0 * window.timestamps_ms)
    ends = [w.timestamps_ms[-1] for w in windows]
    assert ends == pytest.approx([1000.0 + 500.0 * k for k in range(len(windows))])


def test_a_slow_source_skips_the_grid_points_it_missed() -> None:
    windows = _feed(_window(size=3, stride=1, fps=10), [0.0, 100.0, 200.0, 350.0, 500.0])
    assert [w.timestamps_ms[-1] for w in windows] == pytest.approx([200.0, 300.0, 500.0])  # not 400
    assert windows[2].frame_numbers.tolist() == [4, 4, 5]  # the nearest frame to each sample


def test_interpolation_takes_the_nearer_frame_where_a_joint_is_missing() -> None:
    window = _window(size=5, stride=1, fps=100)
    for n, t in enumerate([0.0, 25.0, 40.0], start=1):
        points = _points(t)
        if n == 2:
            points[0, :] = np.nan  # the nose is missing in the middle frame only
        result = window.push(n, t, 0.0, points)
    samples = result.points
    assert samples[:, 0, 0].tolist()[:2] == [0.0, 0.0]  # 0 ms and 10 ms: the first frame is nearer
    assert np.isnan(samples[2:4, 0, 0]).all()  # 20 and 30 ms: nearer to the frame without it
    assert samples[4, 0, 0] == 40.0
    assert samples[:, 1, 0] == pytest.approx([0.0, 10.0, 20.0, 30.0, 40.0])  # other joints interpolate


@pytest.mark.parametrize(("policy", "expected"), [("skip", [2, 4, 4]), ("reset", None)])
def test_frames_without_a_person_skip_or_reset(policy: str, expected: list[int] | None) -> None:
    window = _window(size=3, stride=1, fps=100, no_person=policy)
    window.push(1, 0.0, 0, _points(1))
    window.push(2, 10.0, 0, _points(2))
    assert window.push(3, 20.0, 0, None) is None
    result = window.push(4, 30.0, 0, _points(4))
    assert (None if result is None else result.frame_numbers.tolist()) == expected


def test_skipping_spans_short_gaps_but_a_window_long_absence_or_a_jump_back_resets() -> None:
    window = _window(size=3, stride=1, fps=100)  # 20 ms windows
    window.push(1, 0.0, 0, _points(1))
    window.push(2, 10.0, 0, _points(2))
    assert window.push(3, 30.0, 0, _points(3)) is not None  # 20 ms without a frame: spanned
    assert window.push(4, 51.0, 0, _points(4)) is None  # 21 ms: longer than a window, starts afresh
    assert window.push(5, 61.0, 0, _points(5)) is None
    fresh = window.push(6, 71.0, 0, _points(6))
    assert fresh is not None and fresh.frame_numbers.tolist() == [4, 5, 6]
    assert window.push(1, 0.0, 0, _points(1)) is None  # time went back: a new clip
    assert window.push(2, 10.0, 0, _points(2)) is None


def test_a_long_run_keeps_its_memory_bounded() -> None:
    window = _window(size=30, stride=1, fps=30)
    windows = _feed(window, list(np.arange(0.0, 600_000.0, 1000.0 / 30)))  # ten minutes
    assert len(windows) == 18_000 - 29
    assert len(window._stamps) <= 128  # held frames are one window's worth, not the whole run


def test_per_frame_models_get_every_frame_with_a_person() -> None:
    window = FrameWindow()
    assert window.push(1, 0.0, 0.0, None) is None
    single = window.push(2, 33.0, 0.0, _points(7))
    assert single.points.shape == (1, 33, 5) and single.frame_numbers.tolist() == [2]


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
