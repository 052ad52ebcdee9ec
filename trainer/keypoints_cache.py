"""``python -m trainer keypoints-cache``: write the columnar copies of frame files that need one.

:mod:`trainer.frame_columns` describes the copies; ``trainer extract`` writes them as it goes.
This command brings a folder up to date after frame files were copied in from elsewhere, edited,
or extracted by an older version: it writes the copies that are missing, stale or damaged.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from device.cli import Command, ExitStatus, UsageError
from device.keypoints import FRAMES_SUFFIX

DESCRIPTION = f"""\
Write the columnar copy (<stem>.frames.arrow) of each <stem>{FRAMES_SUFFIX} file in the folders
given (or of the files named): the arrays `trainer dataset` reads instead of parsing the JSON,
about a hundred times faster. `trainer extract` writes them as it goes; this command writes the
ones that are missing, stale (their JSONL changed since) or damaged. Copies that are up to date
are left alone unless --force. A frame file that cannot be read is reported (one line) and the
others go on (exit status 1).

Examples:
  python -m trainer keypoints-cache keypoints/
  python -m trainer keypoints-cache keypoints/walk{FRAMES_SUFFIX} --force
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = f"folders of {FRAMES_SUFFIX} files, or such files"
    parser.add_argument("inputs", nargs="+", type=Path, metavar="DIR_OR_FILE", help=what)
    parser.add_argument("--force", action="store_true", help="rewrite copies that are up to date too")


def find_frame_files(inputs: Sequence[Path]) -> list[Path]:
    """The frame files named by folders (not recursively) and files, each once, in order."""
    found: dict[Path, Path] = {}
    for item in inputs:
        if item.is_dir():
            candidates = sorted(p for p in item.iterdir() if p.is_file() and p.name.endswith(FRAMES_SUFFIX))
        elif not item.exists():
            raise UsageError(f"{item}: no such file or folder")
        elif not item.name.endswith(FRAMES_SUFFIX):
            raise UsageError(f"{item}: not a {FRAMES_SUFFIX} file")
        else:
            candidates = [item]
        for path in candidates:
            found.setdefault(path.resolve(), path)
    if not found:
        raise UsageError(f"no {FRAMES_SUFFIX} files in {', '.join(map(str, inputs))}")
    return list(found.values())


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from device.keypoints import KeypointFileError
    from trainer.frame_columns import CopyState, check_copy, write_columns

    files = find_frame_files(args.inputs)
    written = fresh = failed = 0
    with tqdm(files, unit="file", desc="keypoints-cache", file=sys.stderr, disable=None) as bar:
        for path in bar:
            if not args.force and check_copy(path)[1].state is CopyState.FRESH:
                fresh += 1
                continue
            try:
                write_columns(path)
                written += 1
            except KeypointFileError as exc:
                tqdm.write(f"trainer keypoints-cache: {exc}", file=sys.stderr)
                failed += 1
    where = ", ".join(str(p) for p in args.inputs)
    print(f"columnar copies: {written} written, {fresh} up to date, {failed} failed ({where})")
    return ExitStatus.FAILED if failed else ExitStatus.OK


COMMAND = Command(
    description=DESCRIPTION,
    add_arguments=add_arguments,
    run=run,
)
