"""Frame sources: where images come from, behind one small interface.

Every stage downstream of capture sees the same immutable :class:`Frame`, whether it came from a
file, a camera or a stream, so the pose stage and the trainer's extraction share one code path.
The daemon's live sources (:mod:`device.capture`) implement the same :class:`FrameSource`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

# Used for timestamps only when a container states no frame rate (rare, but some AVI/MKV files).
_FALLBACK_FPS = 30.0


_SECRET_QUERY = re.compile(r"pass|pwd|token|secret|key|auth|sig|cred|session", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` safe to show: the credentials before ``@`` and password-like query values as ``***``.

    Cameras take ``rtsp://user:password@host/...`` or ``?password=...``; the source's name is shown
    on the page, in ``/api/status`` and in logs, none of which may reveal them.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "&".join(
        f"{name}={'***' if _SECRET_QUERY.search(name) else value}" if sep else name
        for name, sep, value in (pair.partition("=") for pair in parts.query.split("&") if pair)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


class SourceError(ValueError):
    """A source that cannot deliver frames; the message names the file or device."""


@dataclass(frozen=True)
class Frame:
    """One decoded image and where and when it was taken.

    ``image`` is BGR uint8 (OpenCV's order; MediaPipe wants RGB) and read-only, because frames
    are shared between stages and threads. ``frame_number`` counts decoded frames from 1, as the
    frame-file schema does; ``timestamp_ms`` is the frame's presentation time in the source.
    """

    image: np.ndarray
    frame_number: int
    timestamp_ms: float
    source: str
    captured_at: float = field(default_factory=time.monotonic)  # for end-to-end latency


class FrameSource(Protocol):
    """Anything that yields :class:`Frame` objects in order and can be closed."""

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


def paced(frames: Iterable[Frame], fps: float | None) -> Iterator[Frame]:
    """The frames a kiosk that processes ``fps`` frames per second would take (None: all).

    Such a kiosk takes a frame, works on it for ``1 / fps`` seconds, then takes the newest frame
    that has arrived meanwhile: here, the last frame whose timestamp is not past that moment.
    Decided on source timestamps alone, so a replay at ``fps`` is the same on every machine.
    """
    if fps is None:
        yield from frames
        return
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    interval = 1000.0 / fps
    free_at = -math.inf  # when the kiosk is done with its current frame
    waiting: Frame | None = None  # the newest frame that arrived while it was busy
    for frame in frames:
        if frame.timestamp_ms <= free_at:
            waiting = frame
            continue
        if waiting is not None:  # taken the moment the kiosk was free
            yield waiting
            free_at += interval
            waiting = None
            if frame.timestamp_ms <= free_at:
                waiting = frame
                continue
        yield frame  # the kiosk was idle: it takes this frame as it arrives
        free_at = frame.timestamp_ms + interval
    if waiting is not None:
        yield waiting


class VideoFileSource:
    """Decodes a video file with OpenCV, frame by frame; single pass.

    The file is opened on construction so an unreadable file fails before any work starts; a file
    that opens but yields no frame fails when iterated.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"{self.path}: no such file")
        self._capture = cv2.VideoCapture(str(self.path))
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(f"{self.path}: cannot open as a video")
        reported_fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps: float = reported_fps if reported_fps > 0 else _FALLBACK_FPS
        # Containers may not know their length (some WebM streams); then this is 0.
        self.frame_count: int = max(int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        self.width: int = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height: int = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.decoded = 0  # frames yielded so far

    @property
    def undecoded(self) -> int:
        """After a full pass: frames the container announced that never decoded (0 if it states none).

        A damaged file skips frames and a truncated one ends early, without an error from OpenCV;
        comparing with the header's count is the only way to notice, and to count, the loss.
        """
        return max(self.frame_count - self.decoded, 0)

    def __iter__(self) -> Iterator[Frame]:
        frame_number = 0
        while True:
            ok, image = self._capture.read()
            if not ok:
                break
            frame_number += 1
            # The container's timestamp is truthful for variable frame rates; backends that do not
            # report one give 0, and then the frame's position at the nominal rate is used.
            timestamp_ms = self._capture.get(cv2.CAP_PROP_POS_MSEC)
            if timestamp_ms <= 0 and frame_number > 1:
                timestamp_ms = (frame_number - 1) * 1000.0 / self.fps
            image.setflags(write=False)
            self.decoded = frame_number
            yield Frame(image, frame_number, timestamp_ms, str(self.path))
        if frame_number == 0:
            raise SourceError(f"{self.path}: no frame could be decoded")

    def close(self) -> None:
        self._capture.release()

    def __enter__(self) -> VideoFileSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
