"""Rollback protection: per model id, a version floor that only rises, and the versions this kiosk ran.

Every signed bundle ever published stays validly signed. Without this, whoever obtained the
device token could push any old bundle back with ``force`` — one with a known weakness, or one
that simply classifies worse (finding 9 of issue 14; TUF and Uptane call it a rollback attack).
So, for every install and activation, ``force`` or not (:meth:`RollbackGuard.refusal`):

* a version below its model's **floor** is refused;
* a version older than the newest one of its model this kiosk ran is refused unless this kiosk
  **ran** it: a rollback goes back to something this kiosk ran, never to a version it skipped.

After each change (:meth:`RollbackGuard.record`) the version joins its model's ran versions and
the floor rises to the oldest version of that model the store still keeps (``model.keep_versions``
most recently activated): the rollback targets the store offers are exactly what stays allowed,
and a version pruned away can never come back. Ran versions below the floor are forgotten.
``force`` keeps its other meanings (reinstall a version that ran, replace a stored bundle).

The state lives in ``<state_dir>/models/rollback.json``, written whole (temporary file, fsync,
rename) after each registry commit, and apart from the registry, so a registry moved aside after
damage does not take the floors with it. At open it is reconciled with the registry, which can
only raise a floor (a power cut between the two writes loses nothing). A missing or unreadable
file while the registry holds versions is damage or tampering, and the floors are then never
lowered: each model's floor becomes its most recently activated version, so the running model
keeps running and no rollback is possible until a newer version is installed. A damaged file is
moved aside; the event is logged, and every rollback refusal says why.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from device.model.bundle import write_atomic
from device.model.fields import BundleError, list_field, parse_fields, parse_version, version_field

log = logging.getLogger("device.model.rollback")

FILE_NAME = "rollback.json"
FORMAT = 1


def _key(version: str) -> tuple[int, ...]:
    """Numerically equal versions ("1.0" and "1.0.0") share one key."""
    parts = list(parse_version(version))
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


@dataclass
class _Model:
    floor: str
    ran: dict[tuple[int, ...], str] = field(default_factory=dict)  # key -> the version as written

    def newest(self) -> str:
        return self.ran[max(self.ran)] if self.ran else self.floor


class RollbackGuard:
    """The floors and ran versions of every model id this kiosk ran; see the module docstring.

    Not thread-safe: the model store calls it under its change lock. ``rows`` are the registry's
    (model id, version) pairs, the most recently activated first.
    """

    def __init__(self, path: Path, rows: Sequence[tuple[str, str]]) -> None:
        self.path = path
        self.models: dict[str, _Model] = {}
        self.rebuilt: str | None = None
        """Why the floors were rebuilt from the registry at open (None: they were read)."""
        fresh = not rows and not path.exists()  # a new kiosk: nothing ran, nothing to protect
        problem = self._read()
        if problem is None or fresh:
            self._reconcile(rows)
        else:
            self._rebuild(rows, problem)

    # ------------------------------------------------------------------ the rules

    def refusal(self, model_id: str, version: str) -> str | None:
        """Why ``version`` of ``model_id`` may not become active here, or None."""
        model = self.models.get(model_id)
        if model is None:
            return None
        key, newest = _key(version), model.newest()
        how = f"export the model again with a version above {newest} and install that"
        why = f" (the floors were rebuilt: {self.rebuilt})" if self.rebuilt else ""
        if key < _key(model.floor):
            return (
                f"{model_id} {version} is below this kiosk's version floor {model.floor}, which force does "
                f"not lower: {how}{why}"
            )
        if key < _key(newest) and key not in model.ran:
            return (
                f"{model_id} {version} is older than {newest}, the newest {model_id} this kiosk ran, and it "
                f"never ran here, which force does not change: {how}{why}"
            )
        return None

    def record(self, model_id: str, version: str, rows: Sequence[tuple[str, str]]) -> None:
        """``version`` of ``model_id`` is active; ``rows`` are the registry's after pruning.

        A failure to write is logged, not raised: the model is active by then, and the next open
        reconciles the state with the registry.
        """
        model = self.models.setdefault(model_id, _Model(version))
        model.ran[_key(version)] = version
        self._reconcile(rows)
        self._save()

    # ------------------------------------------------------------------ the state

    def _raise_floor(self, model: _Model, version: str) -> None:
        if _key(version) > _key(model.floor):
            model.floor = version
        model.ran = {key: v for key, v in model.ran.items() if key >= _key(model.floor)}

    def _reconcile(self, rows: Sequence[tuple[str, str]]) -> None:
        """Every stored version ran here; each floor rises to the oldest stored version of its model."""
        kept: dict[str, list[str]] = {}
        for model_id, version in rows:
            kept.setdefault(model_id, []).append(version)
        for model_id, versions in kept.items():
            oldest = min(versions, key=_key)
            model = self.models.setdefault(model_id, _Model(oldest))
            for version in versions:
                if _key(version) >= _key(model.floor):
                    model.ran.setdefault(_key(version), version)
            self._raise_floor(model, oldest)

    def _rebuild(self, rows: Sequence[tuple[str, str]], problem: str) -> None:
        """Floors at each model's most recently activated version: never lower than they were."""
        self.rebuilt = f"{problem} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        for model_id, version in rows:  # the most recently activated first
            model = self.models.setdefault(model_id, _Model(version))
            if _key(version) >= _key(model.floor):
                model.ran[_key(version)] = version
        log.error("model version floors rebuilt", extra={"path": str(self.path), "reason": self.rebuilt})
        self._save()

    def _read(self) -> str | None:
        """Load the file; what is wrong with it otherwise (a damaged one is moved aside)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return f"{self.path.name} was missing"
        except OSError as exc:
            return f"{self.path.name} could not be read ({exc.strerror})"
        try:
            self.models = _parse(data)
        except (ValueError, BundleError, RecursionError) as exc:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            try:
                self.path.rename(aside)
            except OSError:
                aside = self.path
            return f"{self.path.name} was damaged ({exc}; kept as {aside.name})"
        return None

    def _save(self) -> None:
        document = {
            "format": FORMAT,
            "models": {
                model_id: {"floor": model.floor, "ran": [model.ran[key] for key in sorted(model.ran)]}
                for model_id, model in sorted(self.models.items())
            },
        }
        try:
            write_atomic(self.path, (json.dumps(document, indent=2) + "\n").encode(), durable=True)
        except OSError as exc:
            reason = exc.strerror
            log.error("model version floors not saved", extra={"path": str(self.path), "reason": reason})


def _parse(data: bytes) -> dict[str, _Model]:
    document = json.loads(data)
    fields = parse_fields(document, {"format": lambda v: v, "models": lambda v: v}, "rollback")
    if fields["format"] != FORMAT or not isinstance(fields["models"], dict):
        raise ValueError(f"not format {FORMAT}")
    models = {}
    for model_id, entry in fields["models"].items():
        model = parse_fields(
            entry,
            {"floor": version_field, "ran": lambda v: list_field(v, version_field, unique=True)},
            model_id,
        )
        models[model_id] = _Model(model["floor"], {_key(v): v for v in model["ran"]})
    return models
