"""Repetitions, sets and holds on the kiosk: the activity stage after the classifier.

For each frame the stage gets the source time, the person's keypoints (or None) and, when the
frame completed a window, the classifier's smoothed probabilities; it answers with the events
of DESIGN.md §8 (``start``, ``rep``, ``hold``, ``end``). Every timing is source time, so a
video gives the same events at any processing speed.

Repetitions (``phases`` and ``angle`` activities) follow one state machine over two phases,
*rest* (``phases[0]``, or the feature above ``high``) and *turn* (``phases[1]``, or below
``low``): a phase counts once it has lasted ``min_phase_s``; a repetition starts when rest is
left, needs the turn, and ends when rest is confirmed again. One that takes longer than
``max_rep_s`` is dropped (someone standing around half-bent is not exercising). The first
repetition of a set sends ``start``; each one ``rep`` with its duration and, for every feature
in ``measures``, the min, max and range over the repetition (and, for left/right pairs, the
asymmetry of their minima); ``end`` comes after ``rest_s`` without a repetition, when the person
has been gone for :data:`ABSENT_S`, or when the clip ends — saying whether a repetition was left
incomplete (the turn reached, the return not).

Holds accumulate the time between results during which the label held at ``min_confidence``;
a break longer than ``rest_s`` ends the hold (``hold`` with its duration, then ``end``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from device.activity_specs import Activity, AngleActivity, HoldActivity, PhasesActivity

ABSENT_S = 2.0
"""Seconds without a person after which a set in progress ends: the person has left."""

REST, TURN = 0, 1


@dataclass(frozen=True)
class ActivityEvent:
    """One event of one activity, as the ``events`` topic publishes it (the outbox adds ``seq``)."""

    ts: float  # as a classification's: wall-clock seconds live, source seconds in a replay
    type: str  # start | rep | hold | end
    activity: str
    set: int
    person: int = 1
    rep: int | None = None
    reps: int | None = None
    duration_s: float | None = None
    measures: dict[str, dict[str, float]] | None = None
    asymmetry: dict[str, float] | None = None
    incomplete: bool | None = None
    station: str | None = None

    topic = "events"

    def payload(self) -> dict[str, Any]:
        data = {"ts": round(self.ts, 3), "type": self.type, "activity": self.activity, "person": self.person}
        data["set"] = self.set
        optional = {
            "rep": self.rep,
            "reps": self.reps,
            "duration_s": None if self.duration_s is None else round(self.duration_s, 3),
            "measures": self.measures,
            "asymmetry": self.asymmetry,
            "incomplete": self.incomplete,
            "station": self.station,
        }
        return {**data, **{k: v for k, v in optional.items() if v is not None}}


@dataclass
class _Progress:
    """What the retained ``activity`` state shows of one activity."""

    kind: str
    set: int = 0
    in_set: bool = False
    reps: int = 0
    hold_s: float = 0.0
    last_rep: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "set": self.set,
            "in_set": self.in_set,
            "reps": self.reps,
            "hold_s": round(self.hold_s, 3),
            "last_rep": self.last_rep,
        }


@dataclass
class Who:
    """Whose activities these are: the person's track id and, with stations, where they are now."""

    person: int = 1
    station: str | None = None


class _Tracker:
    """One activity's state; subclasses decide what a frame or a result means for it."""

    def __init__(self, activity: Activity, who: Who) -> None:
        self.activity = activity
        self.progress = _Progress(activity.kind)
        self._who = who

    def event(self, ts: float, kind: str, **fields: Any) -> ActivityEvent:
        who = self._who
        return ActivityEvent(
            ts, kind, self.activity.name, self.progress.set, who.person, station=who.station, **fields
        )


class _Repetitions(_Tracker):
    """``phases`` and ``angle``: the rest → turn → rest state machine of the module docstring."""

    def __init__(
        self,
        activity: PhasesActivity | AngleActivity,
        who: Who,
        measure_columns: list[int],
        angle_column: int | None = None,
        phase_labels: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(activity, who)
        self.spec = activity
        self._measure_columns = measure_columns
        self._angle_column = angle_column  # angle: the feature's column among the values
        self._phase_labels = phase_labels  # phases: the two labels' indices in the probabilities
        self._raw: int | None = None  # the phase the latest input is in (None: in between)
        self._candidate: tuple[int | None, float] = (None, 0.0)  # raw phase and since when
        self._confirmed: int | None = None
        self._left_rest_at: float | None = None  # when the confirmed rest was last left
        self._rep_started: float | None = None  # a repetition in progress began then
        self._last_rep_end = 0.0
        self._set_started = 0.0
        self._recent: deque[tuple[float, np.ndarray]] = deque()  # frames' measure values

    def observe(self, t_ms: float, values: np.ndarray | None, ts: float) -> list[ActivityEvent]:
        """A frame's measure values (None without a person), kept for the repetition's measures."""
        if values is not None and self._measure_columns:
            self._recent.append((t_ms, values[self._measure_columns]))
        # a repetition can only have begun when the rest was last left: nothing older is needed
        horizon = t_ms if self._left_rest_at is None else self._left_rest_at
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()
        return self._expire(t_ms, ts)

    def raw_phase(
        self, values: np.ndarray | None, probabilities: np.ndarray | None
    ) -> tuple[bool, int | None]:
        """Whether this input says which phase the person is in, and which: REST, TURN or None
        (in between). Between an angle's thresholds, or without a new result, it says nothing."""
        spec = self.spec
        if isinstance(spec, AngleActivity):
            value = values[self._angle_column] if values is not None else math.nan
            if value <= spec.low:
                return True, TURN
            if value >= spec.high:
                return True, REST
            return False, None  # the band between the thresholds keeps the phase (hysteresis)
        if probabilities is None or self._phase_labels is None:
            return False, None
        if self._raw is not None and probabilities[self._phase_labels[self._raw]] >= spec.exit:
            return True, self._raw
        scores = probabilities[list(self._phase_labels)]
        best = int(np.argmax(scores))
        return True, (best if scores[best] >= spec.enter else None)

    def phase(self, t_ms: float, raw: int | None, ts: float) -> list[ActivityEvent]:
        """The phase the latest input is in; confirms phases and counts repetitions."""
        events: list[ActivityEvent] = []
        if raw != self._raw:
            if self._raw == REST and self._confirmed == REST:
                self._left_rest_at = t_ms
            self._raw = raw
            self._candidate = (raw, t_ms)
        phase, since = self._candidate
        if phase is None or phase == self._confirmed or t_ms - since < 1000.0 * self.spec.min_phase_s:
            return events
        previous, self._confirmed = self._confirmed, phase
        if phase == TURN and previous == REST and self._left_rest_at is not None:
            self._rep_started = self._left_rest_at
            if not self.progress.in_set:
                self.progress.set += 1
                self.progress.in_set, self.progress.reps = True, 0
                self._set_started = self._rep_started
                events.append(self.event(ts, "start"))
        elif phase == REST and previous == TURN and self._rep_started is not None:
            events.append(self._rep_done(self._rep_started, since, ts))
        return events

    def _rep_done(self, start: float, end: float, ts: float) -> ActivityEvent:
        self.progress.reps += 1
        self._rep_started, self._last_rep_end = None, end
        measures, asymmetry = self._measures(start, end)
        duration = (end - start) / 1000.0
        self.progress.last_rep = {"rep": self.progress.reps, "duration_s": round(duration, 3)}
        if measures:
            self.progress.last_rep["measures"] = measures
        return self.event(
            ts, "rep", rep=self.progress.reps, duration_s=duration, measures=measures, asymmetry=asymmetry
        )

    def _measures(self, start: float, end: float) -> tuple[dict | None, dict | None]:
        names = self.spec.measures
        rows = [values for t, values in self._recent if start <= t <= end]
        if not names or not rows:
            return None, None
        stack = np.stack(rows)
        # fmin/fmax skip NaN without the warnings (and their cost) of nanmin/nanmax; a column that
        # is NaN throughout stays NaN and that measure is left out
        low, high = np.fmin.reduce(stack, axis=0), np.fmax.reduce(stack, axis=0)
        measures = {
            name: {"min": round(float(a), 2), "max": round(float(b), 2), "range": round(float(b - a), 2)}
            for name, a, b in zip(names, low, high, strict=True)
            if math.isfinite(a)
        }
        asymmetry = {
            name[len("angle.left_") :]: round(measures[name]["min"] - measures[other]["min"], 2)
            for name in measures
            if name.startswith("angle.left_")
            and (other := "angle.right_" + name[len("angle.left_") :]) in measures
        }
        return measures or None, asymmetry or None

    def _expire(self, t_ms: float, ts: float) -> list[ActivityEvent]:
        """A repetition too long to count, and a set after ``rest_s`` without a repetition."""
        if self._rep_started is not None and t_ms - self._rep_started > 1000.0 * self.spec.max_rep_s:
            self._rep_started = None
            self._left_rest_at = None  # a fresh rest is needed before the next one
        if (
            self.progress.in_set
            and self._rep_started is None
            and t_ms - self._last_rep_end >= 1000.0 * self.spec.rest_s
            and self._last_rep_end > 0
        ):
            return [self.end(t_ms, ts)]
        return []

    def end(self, t_ms: float, ts: float) -> ActivityEvent | None:
        """The set's ``end`` (None when no set is in progress); forgets any repetition begun."""
        incomplete = self._rep_started is not None and self._confirmed == TURN
        self._rep_started = None
        if not self.progress.in_set:
            return None
        self.progress.in_set = False
        last = self._last_rep_end if self.progress.reps else t_ms
        duration = (max(last, self._set_started) - self._set_started) / 1000.0
        return self.event(ts, "end", reps=self.progress.reps, duration_s=duration, incomplete=incomplete)


class _Hold(_Tracker):
    """``hold``: time in a label between results, breaks shorter than ``rest_s`` left out."""

    def __init__(self, activity: HoldActivity, who: Who, label_index: int) -> None:
        super().__init__(activity, who)
        self.spec, self._label = activity, label_index
        self._last_result: float | None = None
        self._broken_since: float | None = None

    def result(self, t_ms: float, probabilities: np.ndarray, ts: float) -> list[ActivityEvent]:
        holding = probabilities[self._label] >= self.spec.min_confidence
        previous, self._last_result = self._last_result, t_ms
        events: list[ActivityEvent] = []
        if holding and not self.progress.in_set:
            self.progress.set += 1
            self.progress.in_set, self.progress.hold_s = True, 0.0
            events.append(self.event(ts, "start"))
        elif holding and previous is not None:
            self.progress.hold_s += (t_ms - previous) / 1000.0
        if holding:
            self._broken_since = None
        elif self.progress.in_set and self._broken_since is None:
            self._broken_since = t_ms
        return events + self._expire(t_ms, ts)

    def _expire(self, t_ms: float, ts: float) -> list[ActivityEvent]:
        if self._broken_since is not None and t_ms - self._broken_since > 1000.0 * self.spec.rest_s:
            return self.end(t_ms, ts)
        return []

    def end(self, t_ms: float, ts: float) -> list[ActivityEvent]:
        if not self.progress.in_set:
            return []
        self.progress.in_set, self._broken_since, self._last_result = False, None, None
        duration = self.progress.hold_s
        return [self.event(ts, "hold", duration_s=duration), self.event(ts, "end", duration_s=duration)]


@dataclass
class ActivityStage:
    """The activities of one person: frames and results in, events out (see the module docstring).

    ``feature_names`` are the model's per-frame features (its spec's engine): the stage reads its
    angles and measures from the features the classifier computed anyway, at no extra cost.
    """

    activities: tuple[Activity, ...]
    labels: tuple[str, ...]
    feature_names: tuple[str, ...]
    person: int = 1
    _reps: list[_Repetitions] = field(init=False, default_factory=list)
    _holds: list[_Hold] = field(init=False, default_factory=list)
    _absent_since: float | None = field(init=False, default=None)
    _last_t: float = field(init=False, default=0.0)
    _last_ts: float = field(init=False, default=0.0)
    _last_range: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.who = Who(self.person)  # the decision pipeline sets who.station as the person moves
        column = {name: i for i, name in enumerate(self.feature_names)}  # export checked them all
        for activity in self.activities:
            if isinstance(activity, HoldActivity):
                self._holds.append(_Hold(activity, self.who, self.labels.index(activity.label)))
                continue
            measures = [column[m] for m in activity.measures]
            if isinstance(activity, AngleActivity):
                column_of = column[activity.feature]
                self._reps.append(_Repetitions(activity, self.who, measures, angle_column=column_of))
            else:
                phases = (self.labels.index(activity.phases[0]), self.labels.index(activity.phases[1]))
                self._reps.append(_Repetitions(activity, self.who, measures, phase_labels=phases))

    def update(
        self,
        t_ms: float,
        present: bool,
        features: np.ndarray | None,
        probabilities: np.ndarray | None,
        ts: float,
    ) -> list[ActivityEvent]:
        """One frame: whether a person is in it and, if it completed a window, that window's
        newest per-frame features and the result's smoothed probabilities."""
        self._last_t, self._last_ts = t_ms, ts
        events: list[ActivityEvent] = []
        for tracker in self._reps:
            events += tracker.observe(t_ms, features, ts)
            said, raw = tracker.raw_phase(features, probabilities)
            if said:
                events += tracker.phase(t_ms, raw, ts)
        if probabilities is not None:
            for hold in self._holds:
                events += hold.result(t_ms, probabilities, ts)
        for event in events:  # the range of motion of the latest repetition, for a dashboard
            if event.type == "rep" and event.measures:
                self._last_range = next(iter(event.measures.values()))["range"]
        return events + self._presence(t_ms, present, ts)

    def finish(self) -> list[ActivityEvent]:
        """The clip ended: every set in progress ends now (incomplete repetitions said so)."""
        return self._end_all(self._last_t, self._last_ts)

    def state(self) -> dict[str, Any]:
        """The retained ``activity`` state of this person."""
        trackers = [*self._reps, *self._holds]
        current = next((t for t in trackers if t.progress.in_set), None)
        return {
            "person": self.person,
            "current": current.activity.name if current else None,
            "last_range": self._last_range,
            "activities": {t.activity.name: t.progress.as_dict() for t in trackers},
        }

    def _presence(self, t_ms: float, present: bool, ts: float) -> list[ActivityEvent]:
        if present:
            self._absent_since = None
            return []
        if self._absent_since is None:
            self._absent_since = t_ms
        if t_ms - self._absent_since >= 1000.0 * ABSENT_S:
            return self._end_all(t_ms, ts)
        return []

    def _end_all(self, t_ms: float, ts: float) -> list[ActivityEvent]:
        events = [e for tracker in self._reps if (e := tracker.end(t_ms, ts)) is not None]
        for hold in self._holds:
            events += hold.end(t_ms, ts)
        return events
