"""Checked fields of the signed JSON documents: bundle manifests, revocation lists, version floors,
desired-model messages.

A signed document is trusted only as far as its checks go, so every document of the package is
read the same way: strict JSON (:func:`parse_strict_json`: a repeated key, NaN or deep nesting is
refused, never resolved), an object with exactly the expected keys (:func:`parse_fields`), each
value through a checker that says what was expected (:func:`int_field`, :func:`text_field`,
:func:`list_field` …). A failure is a :class:`BundleError` naming the step and the key's path,
such as ``manifest: window: fps: expected a finite number, got 'x'``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

HEX16 = re.compile(r"[0-9a-f]{16}")
SHA256 = re.compile(r"[0-9a-f]{64}")
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Model ids end up in file names and MQTT payloads on the device: keep them plain."""
VERSION = re.compile(r"\d+(\.\d+)*")


class BundleError(ValueError):
    """A bundle (or key) that fails one check; ``step`` names the check, e.g. ``signature``."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message


def parse_version(text: str) -> tuple[int, ...]:
    """``"2026.11.24.220000"`` -> ``(2026, 11, 24, 220000)``; anything but dotted integers is refused."""
    if not isinstance(text, str) or not VERSION.fullmatch(text):
        raise ValueError(f"{text!r} is not a dotted-integer version such as 1.2.0")
    return tuple(int(part) for part in text.split("."))


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` is older than, equal to or newer than ``b``, numerically ("1.10" > "1.9")."""
    left, right = parse_version(a), parse_version(b)
    width = max(len(left), len(right))
    left, right = left + (0,) * (width - len(left)), right + (0,) * (width - len(right))
    return (left > right) - (left < right)


class Invalid(ValueError):
    """One manifest value that fails validation; :meth:`Manifest.from_dict` adds the key."""


def exact_keys(value: Any, keys: Iterable[str]) -> dict[str, Any]:
    """``value`` as a dict with exactly ``keys``: a missing or unknown key is named."""
    if not isinstance(value, dict):
        raise Invalid(f"expected an object, got {type(value).__name__}")
    keys = dict.fromkeys(keys)  # ordered, and a set for the lookups
    unknown = next((k for k in value if k not in keys), None)
    if unknown is not None:
        raise Invalid(f"unknown key {unknown!r}")
    missing = next((k for k in keys if k not in value), None)
    if missing is not None:
        raise Invalid(f"missing key {missing!r}")
    return value


def parse_fields(document: Any, parsers: Mapping[str, Callable[[Any], Any]], step: str) -> dict[str, Any]:
    """An object with exactly the keys of ``parsers``, each value parsed; a failure names the key.

    ``parsers`` maps each key to its checker (``int_field``, ``text_field``, ``list_field`` …, or a
    lambda binding their options).
    """
    try:
        data = exact_keys(document, parsers)
        return {key: nested(key, parse, data[key]) for key, parse in parsers.items()}
    except Invalid as exc:
        raise BundleError(step, str(exc)) from None


def nested(key: str, parse: Callable[[Any], Any], value: Any) -> Any:
    """Parse one member of a nested object, prefixing its key to any error."""
    try:
        return parse(value)
    except Invalid as exc:
        raise Invalid(f"{key}: {exc}") from None


def int_field(value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"expected an integer, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise Invalid(f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise Invalid(f"must be <= {maximum}, got {value}")
    return value


def number_field(value: Any) -> float:
    try:  # an integer past float's range is not finite either (and must not escape as OverflowError)
        finite = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    except OverflowError:
        finite = False
    if not finite:
        huge = isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**1024
        shown = "an integer beyond any float" if huge else repr(value)
        raise Invalid(f"expected a finite number, got {shown}")
    return float(value)


def bool_field(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {type(value).__name__}")
    return value


def text_field(value: Any, pattern: re.Pattern[str] | None = None, choices: Iterable[str] = ()) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(f"expected a non-empty string, got {type(value).__name__}")
    choices = tuple(choices)
    if choices and value not in choices:
        raise Invalid(f"{value!r} is not one of {', '.join(choices)}")
    if pattern is not None and not pattern.fullmatch(value):
        raise Invalid(f"{value!r} does not match {pattern.pattern}")
    return value


def list_field(value: Any, item: Callable[[Any], Any], unique: bool = False) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise Invalid(f"expected a list, got {type(value).__name__}")
    items = tuple(nested(f"[{i}]", item, v) for i, v in enumerate(value))
    if unique:
        seen: set[Any] = set()
        for v in items:  # one pass: thousands of columns must not cost millions of comparisons
            if v in seen:
                raise Invalid(f"duplicate entry {v!r}")
            seen.add(v)
    return items


def mapping_field(value: Any, item: Callable[[Any], Any]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"expected an object, got {type(value).__name__}")
    return MappingProxyType({text_field(k): nested(k, item, v) for k, v in value.items()})


def version_field(value: Any) -> str:
    try:
        parse_version(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return value


def timestamp_field(value: Any) -> str:
    text_field(value)
    try:
        aware = datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        aware = False
    if not aware:
        raise Invalid(f"{value!r} is not an ISO 8601 time with a UTC offset")
    return value


def _reject_constant(name: str) -> None:
    raise Invalid(f"{name} is not valid JSON")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A signed document must not say two things: a repeated key is refused, not last-one-wins."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise Invalid(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_strict_json(data: bytes, step: str, name: str) -> Any:
    """JSON of a signed document: a repeated key, NaN or Infinity is refused, as is deep nesting."""
    try:
        return json.loads(data, object_pairs_hook=_unique_pairs, parse_constant=_reject_constant)
    except Invalid as exc:
        raise BundleError(step, str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(step, f"{name} is not valid JSON ({exc})") from None
    except RecursionError:  # "[[[[…": the parser recurses once per level
        raise BundleError(step, f"{name} is nested too deeply") from None
