"""The command-line boundary shared by ``device``, ``trainer`` and ``provisioning``.

One exit-code enum and one place that turns exceptions into messages: commands raise
:class:`UsageError` (or a domain error listed in ``user_errors``) deep inside, and
:func:`run_cli` prints a one-line message on stderr and returns the status. No traceback for a
user mistake; ``--traceback`` re-raises for developers. argparse's own complaints (an unknown
option, an invalid choice) are user mistakes too and get the same single line.

Starting must be quick: ``--help`` or ``keygen`` should not wait seconds for MediaPipe or
scikit-learn to load. So a command's help and options live in light modules, its run function
may be named as ``"module:function"`` (:func:`lazy`), imported only when the command runs, and
domain errors are named the same way: an exception of a class whose module was never imported
cannot have been raised, so nothing needs importing to recognise it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import NoReturn

from device import logs


class ExitStatus(IntEnum):
    """Process exit codes of every command."""

    OK = 0
    FAILED = 1  # the command ran but some of its work failed (e.g. one video of a batch)
    USAGE = 2  # bad input: option, file or configuration; nothing was changed
    INTERRUPTED = 130  # Ctrl-C


class UsageError(Exception):
    """A user mistake: the message names the file or option and says what is wrong."""


Run = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One subcommand: how to declare its options and how to run it.

    ``help`` is its line in the list of commands; a command named in a registry
    (:func:`commands_for`) has its line there instead, so listing needs no command module.
    """

    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Run
    help: str = ""


@dataclass(frozen=True)
class Listed:
    """A command as a registry names it: its line in the list and ``"module:attribute"`` of its
    :class:`Command`, imported only when the command line chooses it."""

    help: str
    target: str


def lazy(target: str) -> Run:
    """A run function named ``"package.module:function"``, imported when the command runs.

    The module of a command's work may import MediaPipe, OpenCV or scikit-learn (seconds);
    declaring the command must not, or every ``--help`` pays for them.
    """
    module, _, name = target.partition(":")

    def run(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(module), name)(args))

    return run


def _load(listed: Listed) -> Command:
    module, _, name = listed.target.partition(":")
    command: Command = getattr(importlib.import_module(module), name)
    return replace(command, help=listed.help)


def _unloaded(listed: Listed) -> Command:
    """A command the command line did not choose: named to the parser with its line for the list
    of commands (its options are never shown), loaded should it run after all."""

    def run(args: argparse.Namespace) -> int:
        return _load(listed).run(args)

    return Command(description="", add_arguments=lambda parser: None, run=run, help=listed.help)


def commands_for(registry: Mapping[str, Listed], argv: Sequence[str]) -> dict[str, Command]:
    """The parser's commands from ``registry``, importing at most the one ``argv`` chooses.

    A command line that names a command (its first word that is not an option) loads that
    command's module alone, so ``trainer dataset`` does not import the signing code. The list of
    every command (``--help``, or no or an unknown command) needs only the registry's lines and
    imports no command module at all.
    """
    word = next((a for a in argv if not a.startswith("-")), None)
    return {name: _load(listed) if name == word else _unloaded(listed) for name, listed in registry.items()}


class _ParserError(Exception):
    """argparse's complaint about the command line, raised instead of its usage-and-exit."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors reach :func:`run_cli` instead of printing the usage.

    argparse prints a dozen lines of usage before its one line of error and exits from inside
    the parser; every other mistake here is one line and a status, so this one is too.
    Subparsers are made with the parent's class, so this covers every level of every command.
    """

    def error(self, message: str) -> NoReturn:
        raise _ParserError(self.prog, message)


def build_parser(prog: str, description: str, commands: dict[str, Command]) -> argparse.ArgumentParser:
    """The whole command line of one package: its commands with their options and help."""
    parser = _Parser(prog=prog, description=description)
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


def _is_user_error(exc: BaseException, names: Sequence[str]) -> bool:
    """Whether ``exc`` is one of the classes named ``"module:Class"``, importing nothing."""
    for name in names:
        module_name, _, class_name = name.partition(":")
        module = sys.modules.get(module_name)
        if module is not None and isinstance(exc, getattr(module, class_name)):
            return True
    return False


def run_cli(
    prog: str,
    description: str,
    commands: dict[str, Command],
    argv: Sequence[str] | None = None,
    user_errors: Sequence[str] = (),
) -> int:
    """Parse ``argv``, run the chosen command and map failures to an :class:`ExitStatus`.

    ``user_errors`` name further exception classes (``"module:Class"``) that are the user's
    mistake, reported like :class:`UsageError`. Without ``argv`` the process's own command line
    is parsed: the process is the command, so its stderr is filtered of native log chatter
    (:func:`device.logs.quiet_native_logs`) before anything could load MediaPipe or TFLite.
    """
    if argv is None:
        logs.quiet_native_logs()
    parser = build_parser(prog, description, commands)
    try:
        args = parser.parse_args(argv)
    except _ParserError as exc:
        print(f"{exc.prog}: error: {exc} (see --help)", file=sys.stderr)
        return ExitStatus.USAGE
    try:
        return int(args._run(args))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:  # the reader went away (`... | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitStatus.OK
    except Exception as exc:
        if args.traceback or not (isinstance(exc, UsageError) or _is_user_error(exc, user_errors)):
            raise
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
