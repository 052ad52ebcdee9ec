"""The classifier in-process: frames (or keypoints) in, the kiosk's decisions out.

:class:`Classifier` is the kiosk's whole per-frame path — pose → window → features → model →
smoothing — as one object an integrator can use in their own program, and the object the daemon
and ``python -m device replay`` are built on, so all three decide alike::

    from device.classifier import Classifier

    with Classifier.open("model.zip", trusted_keys=["signing.pub"]) as classifier:
        for prediction in classifier.classify_video("squats.mp4"):
            print(prediction.end_ts_ms, prediction.label, prediction.confidence)

        # or frame by frame from your own camera loop (BGR images, your timestamps):
        for result in classifier.feed(frame_bgr, timestamp_ms):
            print(result.payload())

A bundle goes through every check a kiosk makes (signature, hashes, schema, device version,
load, smoke test) before anything in it is loaded; a refusal raises
:class:`~device.model.store.ModelRejected` naming the step.

Clips: MediaPipe's video mode tracks a person from frame to frame and needs increasing
timestamps, and windows and smoothing must not join two videos. A new clip — another file, frame
numbers or timestamps starting over, or :meth:`Classifier.new_clip` — therefore starts with a
fresh pose tracker, window and smoother, exactly as ``trainer extract`` starts each video.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from device.decisions import DecisionPipeline, DecisionSettings, StageTimer, Timebase
from device.model.loaded import LoadedModel
from device.model.store import open_model
from device.prediction import Prediction
from device.sources import Frame, VideoFileSource, paced

if TYPE_CHECKING:
    from device.pose import PoseEstimator, PoseOptions


@dataclass(frozen=True)
class Step:
    """What one frame gave: the person followed (``(33, 5)``, None if nobody) and any results."""

    person: np.ndarray | None
    predictions: tuple[Prediction, ...]


class Classifier:
    """One camera's (or video's) stream of frames → :class:`~device.prediction.Prediction` objects.

    Not thread-safe: feed it from one thread (MediaPipe's graph is per thread anyway).
    """

    def __init__(
        self,
        model: LoadedModel | None,
        *,
        pose: PoseOptions | None = None,
        settings: DecisionSettings | None = None,
        timebase: Timebase = Timebase.WALL,
        timer: StageTimer | None = None,
    ) -> None:
        self._pose_options = pose
        self._timebase, self._timer = timebase, timer
        self._decisions: DecisionPipeline | None = None
        self._estimator: PoseEstimator | None = None
        self._clip: tuple[str, int, float] | None = None  # source, last frame number, last timestamp
        self._counter = itertools.count(1)
        self.last_person: np.ndarray | None = None
        """The person followed in the latest frame (``(33, 5)``), None if nobody: to draw on."""
        if model is not None:
            self.use_model(model, settings)

    @classmethod
    def open(
        cls,
        bundle: str | Path,
        trusted_keys: Sequence[str | Path],
        *,
        pose: PoseOptions | None = None,
        timebase: Timebase = Timebase.SOURCE,
    ) -> Classifier:
        """A classifier for a signed bundle file, checked as a kiosk checks it (else ModelRejected).

        The default timebase is the source's: results of a video are the same on every run.
        """
        return cls(open_model(bundle, trusted_keys), pose=pose, timebase=timebase)

    @property
    def model(self) -> LoadedModel | None:
        return self._decisions.model if self._decisions else None

    def use_model(self, model: LoadedModel, settings: DecisionSettings | None = None) -> None:
        """Run ``model`` from the next frame on (one assignment: a running loop never sees half)."""
        self._decisions = DecisionPipeline(model, settings, self._timebase, self._timer)

    # ------------------------------------------------------------------ input

    def feed(
        self, frame_bgr: np.ndarray, timestamp_ms: float, frame_number: int | None = None
    ) -> list[Prediction]:
        """One camera image (BGR uint8, as OpenCV gives it) taken at ``timestamp_ms``.

        Timestamps are the source's (capture times, or a video's presentation times); a timestamp
        earlier than the previous one starts a new clip. Returns the results this frame completed
        (usually none or one).
        """
        number = self._number(frame_number, timestamp_ms)
        return list(self.process(Frame(frame_bgr, number, timestamp_ms, "feed")).predictions)

    def feed_keypoints(
        self, points: np.ndarray | None, timestamp_ms: float, frame_number: int | None = None
    ) -> list[Prediction]:
        """One frame's keypoints from your own pose source: ``(33, 5)`` BlazePose (x, y in pixels,
        z, visibility, presence), NaN for missing joints, None when nobody is in view."""
        number = self._number(frame_number, timestamp_ms)
        if self._new_clip("keypoints", number, timestamp_ms):
            self.new_clip()
        if points is not None:
            points = np.asarray(points, dtype=np.float64)
            if points.shape != (33, 5):
                raise ValueError(f"expected keypoints of shape (33, 5), got {points.shape}")
        self.last_person = points
        prediction = self._decide(number, timestamp_ms, points, time.monotonic())
        return [prediction] if prediction else []

    def process(self, frame: Frame) -> Step:
        """One :class:`~device.sources.Frame` through pose and the decision pipeline (the daemon's call)."""
        if self._new_clip(frame.source, frame.frame_number, frame.timestamp_ms):
            self.new_clip()
        person = self.last_person = self._pose(frame)
        prediction = self._decide(frame.frame_number, frame.timestamp_ms, person, frame.captured_at)
        return Step(person, (prediction,) if prediction else ())

    def classify_video(self, path: str | Path, fps: float | None = None) -> Iterator[Prediction]:
        """Every result for one video file, as a kiosk processing ``fps`` frames/s would give them
        (default: every frame). Raises :class:`~device.sources.SourceError` for an unreadable file."""
        with VideoFileSource(path) as source:
            self.new_clip()
            for frame in paced(source, fps):
                yield from self.process(frame).predictions

    def new_clip(self) -> None:
        """Forget the past: a fresh pose tracker, window and smoother for the next frame."""
        self._clip = None
        self._counter = itertools.count(1)
        if self._estimator is not None:
            self._estimator.close()
            self._estimator = None
        if self._decisions is not None:
            self._decisions.reset()

    def close(self) -> None:
        """Release MediaPipe's graph; the classifier can be used again (it makes a new one)."""
        self.new_clip()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the stages

    def _number(self, frame_number: int | None, timestamp_ms: float) -> int:
        if self._clip is not None and timestamp_ms < self._clip[2]:
            self.new_clip()  # time went back: another clip, whose frames count from 1 again
        return next(self._counter) if frame_number is None else frame_number

    def _new_clip(self, source: str, frame_number: int, timestamp_ms: float) -> bool:
        """Whether this frame starts a clip; remembers it as the latest frame either way."""
        previous, self._clip = self._clip, (source, frame_number, timestamp_ms)
        if previous is None:
            return False
        old_source, old_number, old_stamp = previous
        return source != old_source or frame_number <= old_number or timestamp_ms < old_stamp

    def _pose(self, frame: Frame) -> np.ndarray | None:
        from device.pose import PoseEstimator, PoseOptions, main_pose  # MediaPipe only for images

        if self._estimator is None:
            self._estimator = PoseEstimator(self._pose_options or PoseOptions(), mode="video")
        began = time.monotonic()
        rgb = cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB)  # OpenCV decodes BGR; MediaPipe wants RGB
        person = main_pose(self._estimator.detect(rgb, frame.timestamp_ms))
        if self._timer is not None:
            self._timer("pose", time.monotonic() - began)
        return person

    def _decide(
        self, frame_number: int, timestamp_ms: float, person: np.ndarray | None, captured_at: float
    ) -> Prediction | None:
        decisions = self._decisions
        if decisions is None:
            return None
        return decisions.push(frame_number, timestamp_ms, person, captured_at)
