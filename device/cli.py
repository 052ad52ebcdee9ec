"""The command-line boundary shared by ``device``, ``trainer`` and ``provisioning``.

One exit-code enum and one place that turns exceptions into messages: commands raise
:class:`UsageError` (or a domain error listed in ``USER_ERRORS``) deep inside, and
:func:`run_cli` prints a one-line message on stderr and returns the status. No traceback for a
user mistake; ``--traceback`` re-raises for developers.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes of every command."""

    OK = 0
    FAILED = 1  # the command ran but some of its work failed (e.g. one video of a batch)
    USAGE = 2  # bad input: option, file or configuration; nothing was changed
    INTERRUPTED = 130  # Ctrl-C


class UsageError(Exception):
    """A user mistake: the message names the file or option and says what is wrong."""


@dataclass(frozen=True)
class Command:
    """One subcommand: how to declare its options and how to run it."""

    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def build_parser(prog: str, description: str, commands: dict[str, Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in commands.items():
        child = sub.add_parser(
            name,
            help=command.help,
            description=command.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(child)
        child.set_defaults(_run=command.run)
    return parser


def run_cli(
    prog: str,
    description: str,
    commands: dict[str, Command],
    argv: Sequence[str] | None = None,
    user_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Parse ``argv``, run the chosen command and map failures to an :class:`ExitStatus`."""
    parser = build_parser(prog, description, commands)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:  # the reader went away (`... | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitStatus.OK
    except (UsageError, *user_errors) as exc:
        if args.traceback:
            raise
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
