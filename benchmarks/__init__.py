"""Benchmarks: each module measures one thing against a baseline measured in the same run."""

from __future__ import annotations

import argparse


def command(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``python -m benchmarks NAME``, with the module's docstring as its help."""
    return argparse.ArgumentParser(
        prog=f"python -m benchmarks {name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
