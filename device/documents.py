"""Small JSON and TOML documents a person wrote or handed us: parsed, or refused in one line.

Config files, fleet files, annotation files, label mappings and run records all come from outside
the program, and each reader owes its user the same four answers: the data; the file cannot be
read (naming why); the text is not valid JSON/TOML (bad syntax, or bytes that are not UTF-8); or it
is nested so deep that the standard library's recursive parser gives up. Each caller passes the
error type its own command reports, so the message stays one line naming the file.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

_PARSERS: dict[str, tuple[Callable[[str], Any], type[ValueError]]] = {
    "JSON": (json.loads, json.JSONDecodeError),
    "TOML": (tomllib.loads, tomllib.TOMLDecodeError),
}


def read_document(path: Path, kind: Literal["JSON", "TOML"], error: Callable[[str], Exception]) -> Any:
    """Parse ``path`` as ``kind``; anything wrong raises ``error("<path>: <why>")``."""
    parse, syntax_error = _PARSERS[kind]
    try:
        return parse(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from exc
    except (syntax_error, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid {kind} ({exc})") from exc
    except RecursionError:  # "[[[[…" thousands deep: the parsers recurse once per level
        raise error(f"{path}: not valid {kind} (nested too deeply)") from None
