"""The classifier in-process: frames (or keypoints) in, the kiosk's decisions out.

:class:`Classifier` is the kiosk's whole per-frame path — pose → window → features → model →
smoothing → activities — as one object an integrator can use in their own program, and the object the daemon
and ``python -m device replay`` are built on, so all three decide alike::

    from device.classifier import Classifier

    with Classifier.open("model.zip", trusted_keys=["signing.pub"]) as classifier:
        for output in classifier.classify_video("squats.mp4"):
            print(output.topic, output.payload())  # classifications and activity events

        # or frame by frame from your own camera loop (BGR images, your timestamps):
        for output in classifier.feed(frame_bgr, timestamp_ms):
            print(output.topic, output.payload())

A bundle goes through every check a kiosk makes (signature, hashes, schema, device version,
load, smoke test) before anything in it is loaded; a refusal raises
:class:`~device.model.store.ModelRejected` naming the step.

Clips: MediaPipe's video mode tracks a person from frame to frame and needs increasing
timestamps, and windows and smoothing must not join two videos. A new clip — another file, frame
numbers or timestamps starting over, or :meth:`Classifier.new_clip` — therefore starts with a
fresh pose tracker, window, smoother and activity state, exactly as ``trainer extract`` starts
each video; the sets in progress end then, and their ``end`` events come out first.
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

from device.activities import ActivityEvent
from device.decisions import DecisionPipeline, DecisionSettings, Output, StageTimer, Timebase
from device.model.loaded import LoadedModel
from device.model.store import open_model
from device.prediction import Prediction
from device.sources import Frame, VideoFileSource, paced
from device.stations import Station, station_of
from device.tracking import PersonTracker, Tracked

if TYPE_CHECKING:
    from device.pose import PoseEstimator, PoseOptions


@dataclass(frozen=True)
class Step:
    """What one frame gave: the person followed (``(33, 5)``, None if nobody) and the outputs."""

    person: np.ndarray | None
    outputs: tuple[Output, ...]
    people: tuple[tuple[int, np.ndarray], ...] = ()  # with ``everyone``: each person's track id and points

    @property
    def predictions(self) -> tuple[Prediction, ...]:
        return tuple(o for o in self.outputs if isinstance(o, Prediction))


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
        fresh_pose: bool = True,
        everyone: bool = False,
        stations: tuple[Station, ...] = (),
    ) -> None:
        """``fresh_pose``: a new pose graph for each clip (bit-for-bit ``trainer extract``'s
        keypoints), or one graph restarted per clip (no 0.2-0.4 s stall per clip, which a live
        kiosk cannot afford; see :meth:`device.pose.PoseEstimator.restart`). ``everyone``: every
        person MediaPipe finds (``pose.num_poses`` of them) gets a track id
        (:mod:`device.tracking`) and a decision pipeline of their own; otherwise the largest person
        is followed as person 1. ``stations``: only people whose hips are inside one are
        classified, their results carrying its name (:mod:`device.stations`; implies everyone)."""
        self._pose_options = pose
        self._stations = stations
        self._tracker = PersonTracker() if everyone or stations else None
        self._people: dict[int, DecisionPipeline] = {}  # track id -> that person's pipeline
        self._settings = settings
        self._timebase, self._timer = timebase, timer
        self._decisions: DecisionPipeline | None = None
        self._estimator: PoseEstimator | None = None
        self._fresh_pose = fresh_pose
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
        everyone: bool = False,
        stations: tuple[Station, ...] = (),
    ) -> Classifier:
        """A classifier for a signed bundle file, checked as a kiosk checks it (else ModelRejected).

        The default timebase is the source's: results of a video are the same on every run.
        """
        model = open_model(bundle, trusted_keys)
        return cls(model, pose=pose, timebase=timebase, everyone=everyone, stations=stations)

    @property
    def model(self) -> LoadedModel | None:
        return self._decisions.model if self._decisions else None

    @property
    def stations(self) -> tuple[Station, ...]:
        return self._stations

    def activity_state(self) -> dict | None:
        """The activities now (the retained ``activity`` payload); None without any.

        One person followed: that person's state. With ``everyone``: the state of the person in
        view longest (the lowest id), and under ``people`` every tracked person's, so a dashboard
        of a class sees each counter."""
        if self._tracker is None:
            decisions = self._decisions
            return None if decisions is None or decisions.activities is None else decisions.activities.state()
        states = [p.activities.state() for _, p in sorted(self._people.items()) if p.activities is not None]
        return {**states[0], "people": states} if states else None

    def use_model(self, model: LoadedModel, settings: DecisionSettings | None = None) -> None:
        """Run ``model`` from the next frame on (one assignment: a running loop never sees half)."""
        self._settings = settings
        self._decisions = DecisionPipeline(model, settings, self._timebase, self._timer)
        self._people = {}  # every person's pipeline starts again with the new model

    # ------------------------------------------------------------------ input

    def feed(
        self, frame_bgr: np.ndarray, timestamp_ms: float, frame_number: int | None = None
    ) -> list[Output]:
        """One camera image (BGR uint8, as OpenCV gives it) taken at ``timestamp_ms``.

        Timestamps are the source's (capture times, or a video's presentation times); a timestamp
        earlier than the previous one starts a new clip. Returns what this frame completed: a
        :class:`~device.prediction.Prediction` when a window ended, activity events when a
        repetition, hold or set did (each has ``topic`` and ``payload()``).
        """
        ended = self._if_time_went_back(timestamp_ms)
        number = frame_number if frame_number is not None else next(self._counter)
        return ended + list(self.process(Frame(frame_bgr, number, timestamp_ms, "feed")).outputs)

    def feed_keypoints(
        self, points: np.ndarray | None, timestamp_ms: float, frame_number: int | None = None
    ) -> list[Output]:
        """One frame's keypoints from your own pose source: ``(33, 5)`` BlazePose (x, y in pixels,
        z, visibility, presence), NaN for missing joints, None when nobody is in view."""
        if points is not None:
            points = np.asarray(points, dtype=np.float64)
            if points.shape != (33, 5):
                raise ValueError(f"expected keypoints of shape (33, 5), got {points.shape}")
        outputs = self._if_time_went_back(timestamp_ms)
        number = frame_number if frame_number is not None else next(self._counter)
        if self._new_clip("keypoints", number, timestamp_ms):
            outputs += self.new_clip()
        self.last_person = points
        return outputs + self._decide(number, timestamp_ms, points, time.monotonic())

    def feed_poses(self, poses: np.ndarray, timestamp_ms: float, frame_number: int | None = None) -> Step:
        """Everyone in one frame from your own pose source, ``(n, 33, 5)`` (n may be 0), for a
        classifier made with ``everyone=True``: each person gets a track id and their own
        decisions (``Step.people`` says who is where)."""
        if self._tracker is None:
            raise ValueError(
                "feed_poses needs Classifier(..., everyone=True); feed_keypoints takes one person"
            )
        poses = np.asarray(poses, dtype=np.float64).reshape(-1, 33, 5)
        ended = self._if_time_went_back(timestamp_ms)
        number = frame_number if frame_number is not None else next(self._counter)
        if self._new_clip("poses", number, timestamp_ms):
            ended += self.new_clip()
        tracked = self._tracker.update(timestamp_ms, poses)
        self.last_person = _largest(poses)
        outputs = self._decide_everyone(number, timestamp_ms, time.monotonic(), tracked)
        return Step(self.last_person, (*ended, *outputs), tracked.people)

    def process(self, frame: Frame) -> Step:
        """One :class:`~device.sources.Frame` through pose and the decision pipeline (the daemon's call)."""
        starts = self._new_clip(frame.source, frame.frame_number, frame.timestamp_ms)
        ended = self.new_clip() if starts else []
        poses = self._poses(frame)
        person = self.last_person = _largest(poses)
        if self._tracker is None:
            outputs = self._decide(frame.frame_number, frame.timestamp_ms, person, frame.captured_at)
            return Step(person, (*ended, *outputs))
        tracked = self._tracker.update(frame.timestamp_ms, poses)
        outputs = self._decide_everyone(frame.frame_number, frame.timestamp_ms, frame.captured_at, tracked)
        return Step(person, (*ended, *outputs), tracked.people)

    def classify_video(self, path: str | Path, fps: float | None = None) -> Iterator[Output]:
        """Everything one video file gives, as a kiosk processing ``fps`` frames/s would (default:
        every frame), ending with the events of sets still in progress when the video ends.
        Raises :class:`~device.sources.SourceError` for an unreadable file."""
        with VideoFileSource(path) as source:
            yield from self.new_clip()
            for frame in paced(source, fps):
                yield from self.process(frame).outputs
            yield from self.new_clip()

    def new_clip(self) -> list[ActivityEvent]:
        """Forget the past: a fresh pose tracker, window, smoother and activities for the next
        frame. Returns the ``end`` events of the sets the clip left in progress."""
        self._clip = None
        self._counter = itertools.count(1)
        if self._estimator is not None and self._fresh_pose:
            self._estimator.close()
            self._estimator = None
        elif self._estimator is not None:
            self._estimator.restart()
        ended = self._decisions.reset() if self._decisions is not None else []
        if self._tracker is not None:
            self._tracker.reset()
            for pipeline in self._people.values():
                ended += pipeline.reset()
            self._people = {}
        return ended

    def close(self) -> None:
        """Release MediaPipe's graph; the classifier can be used again (it makes a new one)."""
        self.new_clip()
        if self._estimator is not None:
            self._estimator.close()
            self._estimator = None

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the stages

    def _if_time_went_back(self, timestamp_ms: float) -> list[Output]:
        """A new clip when time went back (its frames count from 1 again); its end events."""
        if self._clip is not None and timestamp_ms < self._clip[2]:
            return list(self.new_clip())
        return []

    def _new_clip(self, source: str, frame_number: int, timestamp_ms: float) -> bool:
        """Whether this frame starts a clip; remembers it as the latest frame either way."""
        previous, self._clip = self._clip, (source, frame_number, timestamp_ms)
        if previous is None:
            return False
        old_source, old_number, old_stamp = previous
        return source != old_source or frame_number <= old_number or timestamp_ms < old_stamp

    def _poses(self, frame: Frame) -> np.ndarray:
        """Everyone MediaPipe finds in the frame, ``(n, 33, 5)``."""
        from device.pose import PoseEstimator, PoseOptions  # MediaPipe only for images

        if self._estimator is None:
            self._estimator = PoseEstimator(self._pose_options or PoseOptions(), mode="video")
        began = time.monotonic()
        rgb = cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB)  # OpenCV decodes BGR; MediaPipe wants RGB
        poses = self._estimator.detect(rgb, frame.timestamp_ms)
        if self._timer is not None:
            self._timer("pose", time.monotonic() - began)
        return poses

    def _decide_everyone(
        self, frame_number: int, timestamp_ms: float, captured_at: float, tracked: Tracked
    ) -> list[Output]:
        """Each tracked person through their own pipeline; pipelines of ended tracks end their sets
        and are dropped, so memory stays bounded however many people pass."""
        outputs: list[Output] = []
        for person in tracked.ended:
            pipeline = self._people.pop(person, None)
            if pipeline is not None:
                outputs += pipeline.reset()
        model = self.model
        if model is None:
            return outputs
        seen = dict(tracked.people)
        for person in seen:
            if person not in self._people:
                self._people[person] = DecisionPipeline(
                    model, self._settings, self._timebase, self._timer, person
                )
        for person, pipeline in self._people.items():  # a person not found in this frame: absent
            points = seen.get(person)
            if points is not None and self._stations:  # outside every station: not classified
                pipeline.station = station_of(points, self._stations)
                points = points if pipeline.station is not None else None
            outputs += pipeline.push(frame_number, timestamp_ms, points, captured_at)
        return outputs

    def _decide(
        self, frame_number: int, timestamp_ms: float, person: np.ndarray | None, captured_at: float
    ) -> list[Output]:
        decisions = self._decisions
        if decisions is None:
            return []
        return decisions.push(frame_number, timestamp_ms, person, captured_at)


def _largest(poses: np.ndarray) -> np.ndarray | None:
    """The person followed alone, and drawn first: the largest in the image (usually the nearest)."""
    from device.pose import main_pose

    return main_pose(poses)
