"""The documents ``export`` reads beside the run: display names and activities (TOML files).

Each is read and checked as a document before the slow export starts, so a typo costs nothing;
what it names is checked against the model once the run is read (``for_model``). Every mistake
is one line naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.activity_specs import (
    Activity,
    ActivityError,
    activity_to_dict,
    check_against_model,
    parse_activities,
)
from device.cli import UsageError
from device.documents import read_document
from device.features import FeatureEngine, FeatureSpec


@dataclass(frozen=True)
class LabelNames:
    """``--label-names FILE.toml``: display names for the kiosk's page and Home Assistant.

    Read and checked as a document before the slow export starts; its labels are checked against
    the model's once the run is read (:meth:`for_labels`).
    """

    path: Path
    names: dict[str, str]

    @classmethod
    def read(cls, path: Path) -> LabelNames:
        document = read_document(path, "TOML", UsageError)
        unknown = [key for key in document if key != "label_names"]
        if unknown:
            raise UsageError(f"{path}: {unknown[0]}: unknown key (the file holds one [label_names] table)")
        table = document.get("label_names")
        if not isinstance(table, dict):
            raise UsageError(f'{path}: label_names: expected a [label_names] table of label = "display name"')
        for label, name in table.items():
            if not isinstance(name, str) or not name.strip():
                got = "an empty string" if isinstance(name, str) else type(name).__name__
                raise UsageError(f"{path}: label_names.{label}: expected a non-empty display name, got {got}")
        return cls(path, dict(table))

    def for_model(self, labels: tuple[str, ...]) -> dict[str, str]:
        """The names, once every named label is one of ``labels``."""
        for label in self.names:
            if label not in labels:
                raise UsageError(
                    f"{self.path}: label_names.{label}: not one of the model's labels ({', '.join(labels)})"
                )
        return dict(self.names)


@dataclass(frozen=True)
class ActivitiesFile:
    """``--activities FILE.toml``: ``[activity.<name>]`` tables (DESIGN.md §8), signed into the bundle."""

    path: Path
    activities: tuple[Activity, ...]

    @classmethod
    def read(cls, path: Path) -> ActivitiesFile:
        document = read_document(path, "TOML", UsageError)
        unknown = [key for key in document if key != "activity"]
        if unknown:
            raise UsageError(f"{path}: {unknown[0]}: unknown key (the file holds [activity.<name>] tables)")
        if "activity" not in document:
            raise UsageError(f"{path}: no [activity.<name>] table")
        try:
            return cls(path, parse_activities(document["activity"]))
        except ActivityError as exc:
            raise UsageError(f"{path}: {exc}") from exc

    def for_model(self, labels: tuple[str, ...], feature_spec: dict[str, Any]) -> dict[str, Any]:
        """The manifest's ``activities``, once every label and feature they name is the model's."""
        names = FeatureEngine(FeatureSpec.from_dict(feature_spec)).names
        try:
            check_against_model(self.activities, labels, names)
        except ActivityError as exc:
            raise UsageError(f"{self.path}: {exc}") from exc
        return {activity.name: activity_to_dict(activity) for activity in self.activities}
