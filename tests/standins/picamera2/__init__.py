"""A stand-in for Raspberry Pi OS's ``picamera2`` (python3-picamera2), which cannot exist here.

It behaves like the real API as far as the kiosk uses it, and keeps the one property that matters
for colours, as Picamera2's manual documents it: ``"RGB888"`` arrays hold each pixel as B, G, R
in memory, ``"BGR888"`` as R, G, B. The scene it films is grey with a pure red square in the
top-left quarter, so a test can tell where red and blue ended up.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RED_SQUARE = (slice(10, 60), slice(10, 60))  # rows, columns of the red square in every frame
_ORDER = {"RGB888": (2, 1, 0), "BGR888": (0, 1, 2)}  # memory order as indices into (R, G, B)

instances: list[Picamera2] = []  # every camera made, so a test can see how it was driven


class Picamera2:
    def __init__(self, camera_num: int = 0) -> None:
        self.config: dict[str, Any] | None = None
        self.started = False
        self.closed = False
        self.captured = 0
        instances.append(self)

    def create_video_configuration(self, main: dict[str, Any] | None = None, **_: Any) -> dict[str, Any]:
        main = {"size": (640, 480), "format": "XBGR8888", **(main or {})}
        if main["format"] not in _ORDER:
            raise ValueError(f"stand-in picamera2: format {main['format']} not modelled")
        return {"main": main}

    def configure(self, config: dict[str, Any]) -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        self.config = config

    def start(self) -> None:
        if self.config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True

    def capture_array(self, name: str = "main") -> np.ndarray:
        if not self.started:
            raise RuntimeError("Camera is not running")
        assert self.config is not None
        width, height = self.config["main"]["size"]
        rgb = np.full((height, width, 3), 128, np.uint8)
        rgb[RED_SQUARE] = (255, 0, 0)
        self.captured += 1
        return rgb[:, :, list(_ORDER[self.config["main"]["format"]])]

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.closed = True
