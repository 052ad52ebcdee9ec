"""How the trainer words its one-line messages: counts, bounded lists of names, exceptions."""

from __future__ import annotations

from typing import Any


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def some(names: Any, limit: int = 12) -> str:
    """A readable, bounded list of names for a one-line message."""
    names = [str(n) for n in names]
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")
