"""What an activity is: the three kinds of DESIGN.md §8, parsed and checked against a model.

An activities file (``trainer export --activities FILE.toml``) holds one ``[activity.<name>]``
table per activity; the bundle's manifest carries the same tables under ``activities``, signed
with the rest. Both are read by :func:`parse_activities`, which checks every key and value, and
:func:`check_against_model`, which checks the labels and features they name against the model, so
a mistake is one line naming its key (``activity.squat.phases[1]: 'squat_down' is not a label of
this model (labels: squats_down, squats_up)``) on the workstation, never a surprise on a kiosk.

- ``phases``: a repetition leaves ``phases[0]``, reaches ``phases[1]`` and comes back; a phase is
  entered at probability ``enter`` and left below ``exit`` (hysteresis), must last ``min_phase_s``
  (flicker is not a phase), and a repetition longer than ``max_rep_s`` does not count.
- ``angle``: no model needed — ``feature`` goes below ``low`` and back above ``high``.
- ``hold``: time in ``label`` at ``min_confidence`` or more, paused while the pose breaks; a break
  longer than ``rest_s`` ends the hold.

A set is the repetitions until ``rest_s`` passes without one, or the person leaves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

ACTIVITY_KINDS: tuple[str, ...] = ("phases", "angle", "hold")
MAX_SECONDS = 3600.0
"""No timing of an activity may exceed an hour (a typo such as 8000 for 8 s is caught)."""


class ActivityError(ValueError):
    """One mistake in an activities table; the message starts with the key, ``activity.<name>...``."""


@dataclass(frozen=True)
class PhasesActivity:
    """Repetitions as a cycle through two of the model's labels (key poses)."""

    name: str
    phases: tuple[str, str]
    enter: float = 0.6
    exit: float = 0.4
    min_phase_s: float = 0.2
    max_rep_s: float = 10.0
    rest_s: float = 8.0
    measures: tuple[str, ...] = ()
    kind: str = "phases"

    @property
    def features(self) -> tuple[str, ...]:
        return self.measures


@dataclass(frozen=True)
class AngleActivity:
    """Repetitions as a feature (a joint angle) going below ``low`` and back above ``high``."""

    name: str
    feature: str
    low: float
    high: float
    min_phase_s: float = 0.2
    max_rep_s: float = 10.0
    rest_s: float = 8.0
    measures: tuple[str, ...] = ()
    kind: str = "angle"

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.feature, *self.measures)))


@dataclass(frozen=True)
class HoldActivity:
    """Time spent in one label, breaks shorter than ``rest_s`` excluded but not ending it."""

    name: str
    label: str
    min_confidence: float = 0.6
    rest_s: float = 3.0
    kind: str = "hold"

    @property
    def features(self) -> tuple[str, ...]:
        return ()


Activity = PhasesActivity | AngleActivity | HoldActivity
_CLASSES: dict[str, type] = {"phases": PhasesActivity, "angle": AngleActivity, "hold": HoldActivity}


def activity_to_dict(activity: Activity) -> dict[str, Any]:
    """The manifest's (and the TOML file's) table for one activity, without its name."""
    data = asdict(activity)
    del data["name"]
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def parse_activities(tables: Any, where: str = "activity") -> tuple[Activity, ...]:
    """``{name: {kind, ...}}`` as activities, every key and value checked (:class:`ActivityError`)."""
    if not isinstance(tables, Mapping):
        raise ActivityError(f"{where}: expected a table of activities, got {type(tables).__name__}")
    return tuple(_activity(str(name), table, f"{where}.{name}") for name, table in tables.items())


def _activity(name: str, table: Any, key: str) -> Activity:
    if not name.replace("_", "").replace("-", "").isalnum() or len(name) > 64:
        raise ActivityError(f"{key}: an activity name is letters, digits, _ and - (at most 64)")
    if not isinstance(table, Mapping):
        raise ActivityError(f"{key}: expected a table, got {type(table).__name__}")
    kind = table.get("kind")
    if kind not in ACTIVITY_KINDS:
        raise ActivityError(f"{key}.kind: {kind!r} is not one of {', '.join(ACTIVITY_KINDS)}")
    cls = _CLASSES[kind]
    allowed = [f.name for f in fields(cls) if f.name != "name"]
    unknown = [k for k in table if k not in allowed]
    if unknown:
        raise ActivityError(f"{key}.{unknown[0]}: unknown key (a {kind} activity takes {', '.join(allowed)})")
    required = [f.name for f in fields(cls) if f.default is MISSING and f.name != "name"]
    missing = [k for k in required if k not in table]
    if missing:
        raise ActivityError(f"{key}.{missing[0]}: missing (a {kind} activity needs {', '.join(required)})")
    values: dict[str, Any] = {"name": name}
    for field in fields(cls):
        if field.name in ("name", "kind") or field.name not in table:
            continue
        values[field.name] = _value(field.name, table[field.name], f"{key}.{field.name}")
    activity = cls(**values)
    _check_relations(activity, key)
    return activity


def _value(name: str, value: Any, key: str) -> Any:
    if name in ("phases", "measures"):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ActivityError(f"{key}: expected a list of names")
        if len(set(value)) != len(value):
            raise ActivityError(f"{key}: a name appears twice")
        if name == "phases" and len(value) != 2:
            raise ActivityError(f"{key}: expected two labels, [start, turn], got {len(value)}")
        return tuple(value)
    if name in ("feature", "label"):
        if not isinstance(value, str) or not value:
            raise ActivityError(f"{key}: expected a name")
        return value
    try:  # an integer beyond any float is not a finite number either (OverflowError)
        number = float(value) if not isinstance(value, bool) and isinstance(value, int | float) else math.nan
    except OverflowError:
        number = math.nan
    if not math.isfinite(number):
        shown = "a huge integer" if isinstance(value, int) and not isinstance(value, bool) else repr(value)
        raise ActivityError(f"{key}: expected a number, got {shown}")
    value = number
    if name in ("enter", "exit", "min_confidence") and not 0 <= value <= 1:
        raise ActivityError(f"{key}: a probability is within 0..1, got {value:g}")
    if name.endswith("_s") and not 0 <= value <= MAX_SECONDS:
        raise ActivityError(f"{key}: seconds within 0..{MAX_SECONDS:g}, got {value:g}")
    return value


def _check_relations(activity: Activity, key: str) -> None:
    if isinstance(activity, PhasesActivity) and activity.enter < activity.exit:
        raise ActivityError(f"{key}.enter: must be at least exit ({activity.exit:g}), got {activity.enter:g}")
    if isinstance(activity, AngleActivity) and activity.low >= activity.high:
        raise ActivityError(f"{key}.low: must be below high ({activity.high:g}), got {activity.low:g}")
    if isinstance(activity, PhasesActivity | AngleActivity) and activity.min_phase_s > activity.max_rep_s:
        raise ActivityError(f"{key}.min_phase_s: longer than max_rep_s ({activity.max_rep_s:g})")


def check_against_model(
    activities: Iterable[Activity], labels: Iterable[str], features: Iterable[str], where: str = "activity"
) -> None:
    """Every label an activity names is one of the model's; every feature one its spec computes."""
    labels, features = tuple(labels), frozenset(features)
    shown = ", ".join(sorted(labels))
    for activity in activities:
        key = f"{where}.{activity.name}"
        named = (
            [(f"phases[{i}]", p) for i, p in enumerate(activity.phases)]
            if isinstance(activity, PhasesActivity)
            else [("label", activity.label)]
            if isinstance(activity, HoldActivity)
            else []
        )
        for part, label in named:
            if label not in labels:
                raise ActivityError(f"{key}.{part}: {label!r} is not a label of this model (labels: {shown})")
        parts = [("feature", activity.feature)] if isinstance(activity, AngleActivity) else []
        parts += [(f"measures[{i}]", m) for i, m in enumerate(getattr(activity, "measures", ()))]
        for part, feature in parts:
            if feature not in features:
                raise ActivityError(
                    f"{key}.{part}: {feature!r} is not a per-frame feature of this model's spec "
                    "(`python -m trainer features --list` names them)"
                )
