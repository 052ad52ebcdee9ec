"""Hostile configuration files: every one loads or ends in a ``ConfigError`` naming the key.

A valid kiosk configuration gets one key (known or unknown, in any section) set to a value of any
TOML type — or a whole section replaced — and is written as TOML and loaded as the daemon loads
it (``load_config``); raw bytes and broken TOML are tried too. The property: a ``Config`` or a
``ConfigError`` whose message names the file and the key that was changed, never another
exception.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from device.config import (
    SECRET_ENV,
    Config,
    ConfigError,
    FileSource,
    StationSection,
    load_config,
    parse_config,
)

CONFIG = settings(max_examples=200, deadline=None)
UTF8 = st.characters(codec="utf-8")  # what a TOML file can hold (no lone surrogates)
BASE: dict[str, Any] = {
    "device": {"id": "kiosk-1", "state_dir": "state"},
    "source": {"kind": "file", "paths": ["walk.mp4"]},
    "model": {"trusted_keys": ["signing.pub"], "smoothing": {"kind": "mean", "span_s": 0.5}},
    "mqtt": {"host": "127.0.0.1", "port": 1883, "username": "kiosk"},
    "http": {"port": 8080},
}
SECTIONS = {  # the tables of the file and their keys (``[[stations]]`` entries: StationSection's)
    name: list(
        (
            FileSource if name == "source" else StationSection if name == "stations" else field.annotation
        ).model_fields  # type: ignore[union-attr]
    )
    for name, field in Config.model_fields.items()
}
SCALARS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(UTF8, max_size=12),
    st.sampled_from(["", "0.0.0.0", "/dev/video0", "a\x00b", "../../etc/passwd", "rtsp://x", "fast"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(UTF8, max_size=5), inner, max_size=2)
    ),
    max_leaves=6,
)


def toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes, but characters beyond U+FFFF raw (TOML refuses surrogates)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    """A TOML literal for ``value`` (tomllib reads TOML but the standard library cannot write it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, int | float):
        return json.dumps(value)  # JSON's numbers are valid TOML
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(config: dict[str, Any]) -> str:
    lines = [f"{toml_string(k)} = {toml_value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    for section, table in config.items():
        if isinstance(table, dict):
            lines.append(f"[{toml_string(section)}]")
            lines += [f"{toml_string(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@st.composite
def changed_configs(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """The base configuration with one key (or section) set to a drawn value; returns it and the key."""
    config = json.loads(json.dumps(BASE))
    section = draw(st.sampled_from([*SECTIONS, "colour"]))
    if section == "colour" or draw(st.integers(0, 7)) == 0:  # an unknown section, or a known one replaced
        config[section] = draw(VALUES)
        return config, section
    key = draw(st.one_of(st.sampled_from(SECTIONS[section]), st.text(UTF8, min_size=1, max_size=8)))
    if section == "stations":  # an array of tables: one valid station with the drawn key changed
        config["stations"] = [{"name": "mat", "polygon": [[0, 0], [9, 0], [9, 9]], key: draw(VALUES)}]
        return config, f"{section}.{key}"
    config.setdefault(section, {})[key] = draw(VALUES)
    return config, f"{section}.{key}"


def load(text: bytes) -> Config | ConfigError:
    with tempfile.TemporaryDirectory(prefix="hostile-config-") as folder:
        path = Path(folder) / "device.toml"
        path.write_bytes(text)
        try:
            return load_config(path, env={})
        except ConfigError as exc:
            assert str(exc).startswith(f"{path}: "), exc
            return exc


@CONFIG
@given(changed=changed_configs())
def test_a_changed_key_loads_or_is_refused_by_name(changed: tuple[dict[str, Any], str]) -> None:
    config, key = changed
    result = load(toml_document(config).encode())
    if isinstance(result, ConfigError):
        section, _, name = key.partition(".")
        assert section in str(result) and name in str(result), f"{key} not named in: {result}"


@settings(max_examples=60, deadline=None)
@given(changed=changed_configs(), secret=st.text(min_size=1, max_size=8).map(lambda t: f"SECRET[{t}]"))
def test_secrets_from_the_environment_never_break_parsing_nor_show_in_errors(
    changed: tuple[dict[str, Any], str], secret: str
) -> None:
    config, key = changed
    env = {SECRET_ENV["http_token"]: secret, SECRET_ENV["mqtt_password"]: secret}
    try:
        parse_config(config, "device.toml", env)
    except ConfigError as exc:
        assert str(exc).startswith("device.toml: ") and key.partition(".")[0] in str(exc)
        assert "SECRET[" not in str(exc), f"a secret in an error message: {exc}"


@settings(max_examples=100, deadline=None)
@given(
    text=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.integers(1, 3000).map(lambda n: ("x = " + "[" * n + "]" * n).encode()),
        st.just(b"[source]\nkind = 'file'\npaths = ['\xff\xfe']\n"),
    )
)
def test_toml_that_is_not_a_config_is_refused(text: bytes) -> None:
    assert isinstance(load(text), ConfigError)  # none of these has a [source] that could be valid


@settings(max_examples=30, deadline=None)
@given(data=VALUES)
def test_a_config_that_is_not_a_table_is_refused(data: Any) -> None:
    try:
        parse_config(data, "device.toml", env={})
    except ConfigError as exc:
        assert str(exc).startswith("device.toml: ")
