"""What the daemon knows about itself, shared by the pipeline, the publisher and the web page.

Producers (capture, pose, classifier, publisher) write small facts here; readers (the status
page, ``/api/status``, ``/metrics``, MQTT ``stats``) take consistent snapshots. One lock guards
everything; every write is O(1), so the pipeline never waits on a reader. The live picture is
kept as the raw newest frame plus its keypoints and is only drawn and JPEG-encoded when somebody
asks for it, so an unwatched kiosk spends nothing on it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from device.activities import ActivityEvent
from device.keypoints import VISIBILITY, X, Y
from device.prediction import Prediction
from device.stations import Station
from device.wire import Wire, WireError

STORAGE_OFF: Mapping[str, Any] = {
    "ok": True,
    "mode": "off",  # disk | memory | off (MQTT disabled: results are not kept for anyone)
    "detail": "",
    "since": None,
    "path": None,
    "epoch": None,
    "on_disk": None,
    "disk_full": None,
    "retry_s": None,
    "memory": None,
    "moved_aside": None,
}
"""``storage`` of a daemon that keeps no results; :meth:`device.spool.Spool.state` has the same keys."""
STAGES: tuple[str, ...] = ("capture", "pose", "features", "classify", "activities", "publish")
_TIMING_SAMPLES = 600  # per stage: enough for stable percentiles, bounded memory
_RECENT = 20
_NOT_EXPORTED = frozenset({"_lock", "_clock", "_view"})  # per process; the view has its own message


@dataclass(frozen=True)
class ModelInfo:
    """The active model as the page and ``model/state`` show it."""

    model_id: str
    version: str
    sha256: str
    runtime: str
    labels: tuple[str, ...]
    window: int
    status: str = "ok"  # ok | rejected | rolled_back
    detail: str = ""
    label_names: Mapping[str, str] = field(default_factory=dict)
    """Display names the bundle gives some labels (the page and Home Assistant show them)."""

    def display_name(self, label: str) -> str:
        return self.label_names.get(label, label)


@dataclass(frozen=True)
class PersonView:
    """One tracked person in the newest frame, as the live view labels them."""

    person: int  # the anonymous track id
    points: np.ndarray  # (33, 5), read-only
    label: str | None  # the person's latest classification, None before their first


@dataclass(frozen=True)
class LiveView:
    """The newest frame with what was seen in it; drawn on demand.

    In privacy mode ``image`` is None: no camera image is kept past the pose stage, and only the
    keypoints (``/api/pose``) leave the device; ``size`` still says how large the frame was.
    """

    image: np.ndarray | None  # BGR, read-only; None in privacy mode
    points: np.ndarray | None  # (33, 5) of the person followed, or None without one
    prediction: Prediction | None
    frame_number: int
    counter: str | None = None  # the current activity's count, e.g. "squat 2", when there is one
    people: tuple[PersonView, ...] = ()  # with several people classified: everyone in view
    stations: tuple[Station, ...] = ()
    size: tuple[int, int] = (0, 0)  # (width, height) of the frame in pixels

    def pose(self) -> dict[str, Any]:
        """The keypoints of everyone in view as JSON-ready data (``/api/pose``): x, y in pixels and
        visibility per joint (None where unknown), with each person's id and latest label."""
        people = self.people or (
            (PersonView(1, self.points, self.prediction.label if self.prediction else None),)
            if self.points is not None
            else ()
        )
        return {
            "frame": self.frame_number,
            "width": self.size[0],
            "height": self.size[1],
            "people": [{"person": p.person, "label": p.label, "points": _joints(p.points)} for p in people],
            "stations": [{"name": s.name, "polygon": [list(c) for c in s.polygon]} for s in self.stations],
        }


def _joints(points: np.ndarray) -> list[list[float | None]]:
    """``[x, y, visibility]`` per joint, rounded; NaN (a joint the source lacks) as None."""
    picked = np.round(points[:, [X, Y, VISIBILITY]].astype(np.float64), 3)
    return [[None if np.isnan(v) else float(v) for v in joint] for joint in picked]


def counter_text(state: dict[str, Any] | None) -> str | None:
    """``"squat 2"`` (repetitions of the set) or ``"plank 12 s"`` for the current activity."""
    if not state or not state.get("current"):
        return None
    name = state["current"]
    progress = state["activities"][name]
    if progress["kind"] == "hold":
        return f"{name} {progress['hold_s']:.0f} s"
    return f"{name} {progress['reps']}"


class _StageTimes:
    """Durations and completion times of one stage's recent runs."""

    def __init__(self) -> None:
        self.durations: deque[float] = deque(maxlen=_TIMING_SAMPLES)
        self.stamps: deque[float] = deque(maxlen=_TIMING_SAMPLES)

    def copy(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The samples as they are now (taken under the board's lock; summarised outside it)."""
        return tuple(self.durations), tuple(self.stamps)


def _stage_summary(
    durations: tuple[float, ...], stamps: tuple[float, ...], now: float, window_s: float = 10.0
) -> dict[str, float | None]:
    """Runs per second over the last ``window_s`` seconds and duration percentiles in ms."""
    recent = [t for t in stamps if now - t <= window_s]
    span = recent[-1] - recent[0] if len(recent) > 1 else 0.0
    fps = (len(recent) - 1) / span if span > 0 else 0.0
    times = _percentiles(durations, scale=1000.0)
    return {"fps": round(fps, 2), **{f"{name}_ms": value for name, value in times.items()}}


def _percentiles(values: tuple[float, ...], scale: float = 1.0) -> dict[str, float | None]:
    """p50/p95/p99 of recent values (None before the first one)."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    points = np.percentile(np.fromiter(values, float), [50, 95, 99]) * scale
    return {name: round(float(v), 3) for name, v in zip(("p50", "p95", "p99"), points, strict=True)}


BOARD_WIRE = Wire((ModelInfo, PersonView, LiveView, Prediction, Station, _StageTimes))
"""How a board and its live view travel to the web process: data of these classes, no code."""


class StatusBoard:
    """Thread-safe status of one daemon."""

    def __init__(
        self, device_id: str, clock: Callable[[], float] = time.monotonic, *, privacy: bool = False
    ) -> None:
        self.device_id = device_id
        self.privacy = privacy  # no camera image leaves the device (the page draws /api/pose)
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._started_wall = time.time()
        self._stages = {stage: _StageTimes() for stage in STAGES}
        self._latency: deque[float] = deque(maxlen=_TIMING_SAMPLES)
        self._counters: dict[str, int] = {
            "frames_captured": 0,
            "frames_dropped": 0,
            "frames_processed": 0,
            "frames_without_person": 0,
            "classifications": 0,
            "source_reopens": 0,
            "files_skipped": 0,  # playlist files that could not be played on a pass
            "frames_undecodable": 0,  # frames a video's header promised that never decoded
            "outbox_errors": 0,  # classifications and events the outbox could not store
            "activity_events": 0,
            "storage_failures": 0,  # times the outbox became unusable (results then held in memory)
            "mqtt_ack_timeouts": 0,  # connections given up because the broker stopped acknowledging
        }
        self._activity: dict[str, Any] | None = None  # the retained ``activity`` state
        self._activity_counts: dict[tuple[str, str], int] = {}  # (activity, event type) -> count
        self._label_counts: dict[str, int] = {}  # bounded by the labels of the models run
        self._camera: dict[str, Any] = {"state": "starting", "source": "", "detail": ""}
        self._model: ModelInfo | None = None
        self._mqtt: dict[str, Any] = {"enabled": False, "connected": False, "broker": "", "detail": ""}
        self._outbox = {"depth": 0, "dropped": 0}
        self._storage: dict[str, Any] = dict(STORAGE_OFF)
        self._fleet: Mapping[str, Any] | None = None  # models pulled over MQTT (device.fleet_pull)
        self._recent: deque[Prediction] = deque(maxlen=_RECENT)
        self._person_present = False
        self._last_frame_at: float | None = None
        self._view: LiveView | None = None
        self._changes = 0  # bumped by rare state changes (camera, model, MQTT, presence)

    # ---------------------------------------------------------------- writers

    def record_stage(self, stage: str, seconds: float) -> None:
        now = self._clock()
        with self._lock:
            times = self._stages[stage]
            times.durations.append(seconds)
            times.stamps.append(now)
            if stage == "pose":  # a frame made it through pose: the pipeline is alive, not just the camera
                self._last_frame_at = now

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def set_camera(self, state: str, source: str | None = None, detail: str = "") -> None:
        with self._lock:
            self._changes += 1
            self._camera = {
                "state": state,
                "source": self._camera["source"] if source is None else source,
                "detail": detail,
            }

    def set_model(self, info: ModelInfo | None) -> None:
        with self._lock:
            self._changes += 1
            self._model = info

    def mark_model(self, status: str, detail: str) -> None:
        """Record the outcome of a model change that did not replace the active model."""
        with self._lock:
            if self._model is not None:
                self._changes += 1
                self._model = replace(self._model, status=status, detail=detail)

    def set_mqtt(self, enabled: bool, connected: bool, broker: str, detail: str = "") -> None:
        with self._lock:
            self._changes += 1
            self._mqtt = {"enabled": enabled, "connected": connected, "broker": broker, "detail": detail}

    def set_outbox(self, depth: int, dropped: int) -> None:
        with self._lock:
            self._outbox = {"depth": depth, "dropped": dropped}

    def set_storage(self, state: Mapping[str, Any]) -> None:
        """Where results are kept (:meth:`device.spool.Spool.state`); a failure fails ``/healthz``."""
        with self._lock:
            if (state["ok"], state["mode"], state["detail"]) != tuple(
                self._storage[key] for key in ("ok", "mode", "detail")
            ):
                self._changes += 1
            self._storage = dict(state)

    def set_fleet(self, state: Mapping[str, Any] | None) -> None:
        """The pull of desired models (:meth:`device.fleet_pull.FleetPuller.state`); None when off."""
        with self._lock:
            self._changes += 1
            self._fleet = state

    def set_person_present(self, present: bool) -> None:
        with self._lock:
            if present != self._person_present:
                self._changes += 1
            self._person_present = present

    def add_prediction(self, prediction: Prediction) -> None:
        with self._lock:
            self._label_counts[prediction.label] = self._label_counts.get(prediction.label, 0) + 1
            self._recent.append(prediction)
            self._latency.append(prediction.latency_ms)
            self._counters["classifications"] += 1

    def add_event(self, event: ActivityEvent) -> None:
        """An activity event was published (``/metrics`` counts them per activity and type)."""
        with self._lock:
            self._counters["activity_events"] += 1
            key = (event.activity, event.type)
            self._activity_counts[key] = self._activity_counts.get(key, 0) + 1

    def set_activity(self, state: dict[str, Any] | None) -> None:
        with self._lock:
            self._changes += 1
            self._activity = state

    def activity_counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._activity_counts)

    def counters(self) -> dict[str, int]:
        """The counters alone, without the percentiles a :meth:`snapshot` computes."""
        with self._lock:
            return dict(self._counters)

    def label_counts(self) -> dict[str, int]:
        """Classifications per label since start (``/metrics``: how the day divides up)."""
        with self._lock:
            return dict(self._label_counts)

    def set_view(self, view: LiveView) -> None:
        with self._lock:
            self._view = view

    def export(self) -> bytes:
        """Everything but the live view, encoded at one instant (:data:`BOARD_WIRE`): the web
        process's copy (:mod:`device.web_process`) is this board's state, so its pages read what
        ours would. The percentiles and the JSON are then computed in the web process."""
        with self._lock:
            fields = {name: value for name, value in vars(self).items() if name not in _NOT_EXPORTED}
            return BOARD_WIRE.encode(fields)

    def restore(self, exported: bytes) -> None:
        """Become a copy of the board that :meth:`export`-ed ``exported`` (its live view is set
        apart, with :meth:`set_view`); a :class:`~device.wire.WireError` if it is not one."""
        fields = BOARD_WIRE.decode(exported)
        if not isinstance(fields, dict) or set(fields) - set(vars(self)):
            raise WireError("not an exported status board")
        with self._lock:
            vars(self).update(fields)

    # ---------------------------------------------------------------- readers

    @property
    def model(self) -> ModelInfo | None:
        with self._lock:
            return self._model

    @property
    def fleet(self) -> Mapping[str, Any] | None:
        with self._lock:
            return self._fleet

    @property
    def changes(self) -> int:
        """How many times the camera, model, MQTT or presence state changed (counters excluded).

        Lets a reader reuse a recent snapshot until either time passes or one of these changes.
        """
        with self._lock:
            return self._changes

    @property
    def view(self) -> LiveView | None:
        with self._lock:
            return self._view

    def health_reasons(self, frame_max_age_s: float) -> list[str]:
        """Why the kiosk is not healthy (``/healthz``), empty when it is.

        Unhealthy: no frame through pose within ``frame_max_age_s``, no model, or storage failed.
        A storage failure fails the health check but not the systemd watchdog (see
        :meth:`device.daemon.Daemon.run`): the process still classifies and publishes from
        memory, and a restart cannot repair a read-only card, so the check is where a person or
        a monitor learns of it.
        """
        reasons = []
        if not self.frames_flowing(frame_max_age_s):
            reasons.append(f"no frame processed in the last {frame_max_age_s:g} s")
        with self._lock:
            model, storage = self._model, dict(self._storage)
        if model is None:
            reasons.append("no model loaded")
        if not storage["ok"]:
            memory = storage["memory"] or {}
            reasons.append(
                f"storage failed: {storage['detail']} (results held in memory: {memory.get('depth', 0)})"
            )
        return reasons

    def frames_flowing(self, max_age_s: float = 5.0) -> bool:
        """Did a frame get through pose recently? (``/healthz`` and the systemd watchdog ask.)

        Counting processed rather than captured frames means a hung pipeline fails the health
        check too, and systemd's watchdog restarts it.
        """
        with self._lock:
            last = self._last_frame_at
        return last is not None and self._clock() - last <= max_age_s

    def uptime_s(self) -> float:
        return self._clock() - self._started

    def snapshot(self) -> dict[str, Any]:
        """Everything at one instant, as JSON-ready data (``/api/status``).

        Only copying happens under the lock; the percentiles (the costly part) are computed after
        it is released, so a busy status page never holds up the pipeline's writes.
        """
        now = self._clock()
        with self._lock:
            recent = tuple(self._recent)
            model = self._model
            stages = {name: times.copy() for name, times in self._stages.items()}
            latency = tuple(self._latency)
            state = {
                "device_id": self.device_id,
                "privacy": self.privacy,
                "started_at": self._started_wall,
                "uptime_s": round(now - self._started, 1),
                "camera": dict(self._camera),
                "counters": dict(self._counters),
                "person_present": self._person_present,
                "mqtt": dict(self._mqtt),
                "outbox": dict(self._outbox),
                "storage": dict(self._storage),
                "frames_flowing": self._last_frame_at is not None and now - self._last_frame_at <= 5.0,
                "activity": self._activity,
                "fleet": self._fleet,
            }
        return {
            **state,
            "stages": {name: _stage_summary(*samples, now) for name, samples in stages.items()},
            "latency_ms": _percentiles(latency),
            "current": recent[-1].payload() if recent else None,
            "recent": [p.payload() for p in reversed(recent)],
            "model": None
            if model is None
            else {
                "id": model.model_id,
                "version": model.version,
                "sha256": model.sha256,
                "runtime": model.runtime,
                "labels": list(model.labels),
                "label_names": dict(model.label_names),
                "window": model.window,
                "status": model.status,
                "detail": model.detail,
            },
        }
