"""The Raspberry Pi camera source against a stand-in ``picamera2`` that behaves like the real one.

The real module exists only on Raspberry Pi OS; ``tests/standins/picamera2`` models its API as the
kiosk uses it (configure, start, capture arrays, stop, close) and the pixel order Picamera2's
manual documents for each format, so a swap of red and blue shows up here.
"""

from __future__ import annotations

import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
from conftest import eventually

from device.capture import PiCamera2Source
from device.config import parse_config
from device.daemon import build

STANDINS = Path(__file__).parent / "standins"


@pytest.fixture
def picamera2(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The stand-in on the import path for one test, and gone afterwards (from sys.modules too)."""
    monkeypatch.syspath_prepend(str(STANDINS))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    import picamera2

    picamera2.instances.clear()
    yield picamera2
    sys.modules.pop("picamera2", None)


def test_frames_are_bgr_as_opencv_gives_them(picamera2: ModuleType) -> None:
    source = PiCamera2Source(160, 120)
    frames = iter(source)
    first, second = next(frames), next(frames)
    source.close()
    camera = picamera2.instances[0]
    assert camera.config["main"] == {"size": (160, 120), "format": "RGB888"}
    assert (camera.started, camera.closed, camera.captured) == (False, True, 2)
    assert (first.frame_number, second.frame_number) == (1, 2) and first.timestamp_ms <= second.timestamp_ms
    assert first.image.shape == (120, 160, 3) and not first.image.flags.writeable
    square = first.image[picamera2.RED_SQUARE]
    assert (square == (0, 0, 255)).all()  # BGR: red is the last channel
    # what the pipeline hands MediaPipe (BGR -> RGB) is red in RGB
    assert (cv2.cvtColor(first.image, cv2.COLOR_BGR2RGB)[picamera2.RED_SQUARE] == (255, 0, 0)).all()


def latest_frame(url: str) -> bytes | None:
    """The page's current frame, or None while it has none yet (503)."""
    try:
        return urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=10).read()
    except urllib.error.HTTPError as error:
        if error.code != 503:
            raise
        return None


def test_the_daemon_shows_the_pi_cameras_red_as_red(picamera2: ModuleType, tmp_path: Path) -> None:
    config = parse_config(
        {
            "device": {"id": "pi-kiosk", "state_dir": str(tmp_path / "state")},
            "source": {"kind": "picamera2", "width": 320, "height": 240},
            "mqtt": {"enabled": False},
            "http": {"port": 0},
        },
        env={},
    )
    daemon = build(config)
    daemon.start()
    try:
        url = f"http://127.0.0.1:{daemon.web.port}/frame.jpg"
        # the web process serves its own copy of the status board: 503 until a frame has reached it
        jpeg = eventually(lambda: latest_frame(url), 60, "a frame through the pipeline to the page")
    finally:
        daemon.stop()
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).astype(int)
    blue, green, red = image[20:50, 20:50].reshape(-1, 3).mean(axis=0)  # inside the square, JPEG-blurred
    assert red > 200 and blue < 60 and green < 60, (blue, green, red)
    assert not [t.name for t in threading.enumerate() if t.name in ("capture", "pipeline")]
