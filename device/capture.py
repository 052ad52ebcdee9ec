"""Capture for the daemon: open the configured source, keep only the newest frame, reopen on loss.

A camera produces frames at its own pace; if pose detection falls behind, a queue between them
would grow and every result would describe the past. The capture thread therefore hands frames
over through a :class:`FrameSlot` that holds exactly one frame: a new frame replaces an unread one,
and the replaced frame is counted as dropped (policy ``newest``). A video file played as fast as
possible uses the ``block`` policy instead — the reader is the pace, so no frame is lost.

A lost camera or stream is reopened with exponential backoff; a file playlist that ends (without
``loop``) ends the capture, and the status says so — the daemon does not crash-loop over it.
A *looping* playlist stands in for a camera on an unattended kiosk, so it is treated like one: a
file that vanishes, cannot be opened or decodes to nothing is skipped and counted while the others
play, and when no file at all can be played the playlist is reopened with backoff until one can.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from device.config import (
    CameraSource,
    CaptureSection,
    FileSource,
    GStreamerSource,
    PiCameraSource,
    SourceSection,
    UrlSource,
)
from device.sources import Frame, FrameSource, SourceError, VideoFileSource, redact_url
from device.status import StatusBoard

log = logging.getLogger("device.capture")


class FrameSlot:
    """A one-frame handoff between the capture thread and the pipeline."""

    def __init__(self, block: bool = False) -> None:
        self.block = block
        self._frame: Frame | None = None
        self._closed = False
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, frame: Frame, stop: threading.Event) -> None:
        """Offer a frame; with ``block`` wait until the previous one was taken (or stop is set)."""
        with self._cond:
            if self.block:
                while self._frame is not None and not stop.is_set():
                    self._cond.wait(0.2)
            elif self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._cond.notify_all()

    def get(self, timeout: float) -> Frame | None:
        """The newest frame, or None after ``timeout`` seconds or once closed and empty."""
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class OpenCvSource:
    """A camera, a ``/dev/videoN`` device, an RTSP/HTTP URL or a GStreamer pipeline via OpenCV."""

    def __init__(
        self,
        target: int | str,
        name: str,
        api: int = cv2.CAP_ANY,
        size: tuple[int, int] | None = None,
        fps: float | None = None,
    ) -> None:
        self.name = name
        self._capture = cv2.VideoCapture(target, api)
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(f"{name}: cannot open")
        if size:
            self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
            self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
        if fps:
            self._capture.set(cv2.CAP_PROP_FPS, fps)
        self._origin = time.monotonic()

    def __iter__(self) -> Iterator[Frame]:
        number = 0
        while True:
            ok, image = self._capture.read()
            if not ok:
                raise SourceError(f"{self.name}: no more frames (device lost or stream ended)")
            number += 1
            image.setflags(write=False)
            yield Frame(image, number, (time.monotonic() - self._origin) * 1000.0, self.name)

    def close(self) -> None:
        self._capture.release()


class PiCamera2Source:
    """A Raspberry Pi camera module through ``picamera2`` (Debian's python3-picamera2).

    Picamera2 names formats after libcamera's DRM fourcc codes, which list the channels from the
    most significant byte down; its manual (appendix "Pixel and image formats") documents that
    ``"RGB888"`` gives arrays whose pixels are ordered B, G, R in memory — OpenCV's BGR, which the
    pipeline expects — and ``"BGR888"`` gives R, G, B. So this source asks for ``"RGB888"``.
    """

    FORMAT = "RGB888"  # pixels B, G, R in memory: OpenCV's BGR

    def __init__(self, width: int, height: int) -> None:
        try:
            from picamera2 import Picamera2  # only present on Raspberry Pi OS
        except ImportError as exc:
            raise SourceError("picamera2 is not installed: apt install python3-picamera2") from exc
        self.name = "picamera2"
        self._camera = Picamera2()
        main = {"size": (width, height), "format": self.FORMAT}
        config = self._camera.create_video_configuration(main=main)
        self._camera.configure(config)
        self._camera.start()
        self._origin = time.monotonic()

    def __iter__(self) -> Iterator[Frame]:
        number = 0
        while True:
            image = np.ascontiguousarray(self._camera.capture_array())
            number += 1
            image.setflags(write=False)
            yield Frame(image, number, (time.monotonic() - self._origin) * 1000.0, self.name)

    def close(self) -> None:
        self._camera.stop()
        self._camera.close()


class Playlist:
    """Video files played in order, optionally looping, at their frame rate or as fast as possible.

    Frames keep each file's own numbering and timestamps; ``Frame.source`` names the file, so the
    pipeline can tell where one clip ends and the next begins. Every file must exist when the
    playlist opens (a typo in the config is an error, not a wait). Later, a file that cannot be
    played is skipped (``files_skipped``) and frames its header promised but that never decoded
    are counted (``frames_undecodable``); each file's trouble is logged when it begins, not on
    every pass. A pass in which no file played raises :class:`SourceError`.
    """

    def __init__(
        self, paths: list[Path], loop: bool, realtime: bool, stop: threading.Event, status: StatusBoard
    ) -> None:
        for path in paths:
            if not path.is_file():
                raise SourceError(f"{path}: no such video file")
        self.name = ", ".join(p.name for p in paths)
        self._paths, self._loop, self._realtime, self._stop = paths, loop, realtime, stop
        self._status = status
        self._current: VideoFileSource | None = None
        self._troubled: set[Path] = set()  # files whose trouble was logged and has not cleared

    def __iter__(self) -> Iterator[Frame]:
        while not self._stop.is_set():
            played = False
            for path in self._paths:
                self._current = None
                try:
                    self._current = VideoFileSource(path)
                    started = time.monotonic()
                    for frame in self._current:
                        if self._stop.is_set():
                            return
                        if self._realtime:  # pace at the file's own timestamps
                            delay = started + frame.timestamp_ms / 1000.0 - time.monotonic()
                            if delay > 0:
                                self._stop.wait(delay)
                        played = True
                        # a fresh capture time: latency counts from when the frame was due, not decoded
                        yield Frame(frame.image, frame.frame_number, frame.timestamp_ms, frame.source)
                except SourceError as exc:
                    self._trouble(path, "files_skipped", 1, f"skipped ({exc})")
                    continue
                finally:
                    self.close()
                if self._current.undecoded:
                    self._trouble(path, "frames_undecodable", self._current.undecoded, "cut short")
                else:
                    self._troubled.discard(path)  # it played in full again
            if not played:
                raise SourceError(f"{self.name}: no file of the playlist could be played")
            if not self._loop:
                return

    def _trouble(self, path: Path, counter: str, count: int, what: str) -> None:
        self._status.count(counter, count)
        if path not in self._troubled:
            self._troubled.add(path)
            log.warning(f"video file {what}", extra={"path": str(path), counter: count})

    def close(self) -> None:
        if self._current is not None:
            self._current.close()


def open_source(config: SourceSection, stop: threading.Event, status: StatusBoard) -> FrameSource:
    """The frame source a config section describes (a registry on the section's ``kind``)."""
    if isinstance(config, FileSource):
        return Playlist(config.paths, config.loop, config.pace == "realtime", stop, status)
    if isinstance(config, CameraSource):
        size = (config.width, config.height) if config.width and config.height else None
        api = cv2.CAP_V4L2 if isinstance(config.device, str) else cv2.CAP_ANY
        return OpenCvSource(config.device, f"camera {config.device}", api, size, config.fps)
    if isinstance(config, UrlSource):
        return OpenCvSource(config.url, redact_url(config.url), cv2.CAP_FFMPEG)
    if isinstance(config, GStreamerSource):
        return OpenCvSource(config.pipeline, "gstreamer pipeline", cv2.CAP_GSTREAMER)
    if isinstance(config, PiCameraSource):
        return PiCamera2Source(config.width, config.height)
    raise SourceError(f"unknown source kind {config!r}")


class Capture:
    """The capture thread: source -> :class:`FrameSlot`, with reopen-on-loss and status updates."""

    def __init__(
        self,
        source: SourceSection,
        settings: CaptureSection,
        status: StatusBoard,
        opener: Callable[[SourceSection, threading.Event, StatusBoard], FrameSource] = open_source,
    ) -> None:
        self._config, self._settings, self._status, self._opener = source, settings, status, opener
        # cameras, streams and looping playlists are reopened after a loss; a single pass just ends
        self._reopens = not isinstance(source, FileSource) or source.loop
        self.slot = FrameSlot(block=isinstance(source, FileSource) and source.pace == "fast")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self.ended = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.slot.close()
        self._thread.join(timeout)

    def _run(self) -> None:
        backoff = self._settings.reconnect_initial_s
        while not self._stop.is_set():
            try:
                source = self._opener(self._config, self._stop, self._status)
            except SourceError as exc:
                if not self._reopens:  # a single pass of a missing file: nothing to wait for
                    self._finish("error", str(exc))
                    return
                backoff = self._wait_to_reopen(str(exc), backoff)
                continue
            self._status.set_camera("running", getattr(source, "name", ""), "")
            log.info("source open", extra={"source": getattr(source, "name", "")})
            try:
                began = time.monotonic()
                for frame in source:
                    # the stage's time is reading and decoding, not waiting for the pipeline
                    self._status.record_stage("capture", time.monotonic() - began)
                    dropped_before = self.slot.dropped
                    self.slot.put(frame, self._stop)
                    self._status.count("frames_captured")
                    if self.slot.dropped != dropped_before:
                        self._status.count("frames_dropped")
                    backoff = self._settings.reconnect_initial_s
                    began = time.monotonic()
                    if self._stop.is_set():
                        break
                else:
                    if not self._reopens:
                        self._finish("ended", "the video playlist has ended")
                        return
            except SourceError as exc:
                if not self._reopens:
                    self._finish("error", str(exc))
                    return
                backoff = self._wait_to_reopen(str(exc), backoff)
            finally:
                source.close()

    def _wait_to_reopen(self, reason: str, backoff: float) -> float:
        log.warning("source lost, reopening", extra={"reason": reason, "retry_in_s": backoff})
        self._status.set_camera("reconnecting", None, f"{reason}; retrying in {backoff:.1f} s")
        self._status.count("source_reopens")
        self._stop.wait(backoff)
        return min(backoff * 2, self._settings.reconnect_max_s)

    def _finish(self, state: str, detail: str) -> None:
        log.warning("capture finished", extra={"state": state, "detail": detail})
        self._status.set_camera(state, None, detail)
        self.ended.set()
        self.slot.close()
