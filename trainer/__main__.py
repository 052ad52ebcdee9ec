"""``python -m trainer <command>`` (``movement-trainer``): the workstation's commands, one module each.

Each command's module declares its options and help without importing MediaPipe, OpenCV,
scikit-learn or pyarrow, which its run function imports when it runs: ``--help``, ``keygen`` and
a mistyped option answer at once (``python -m benchmarks startup`` measures it). Beyond that, a
command line that names its command imports that command's module alone (the others are only
named to the parser), so ``trainer dataset`` does not load the signing or cluster code, and
neither do the worker processes it spawns (they import this module again); the list of every
command with its help (``trainer --help``, or no or an unknown command) imports them all.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from device.cli import Command, run_cli

COMMANDS: dict[str, str] = {
    "extract": "trainer.extract:COMMAND",
    "features": "trainer.features_command:COMMAND",
    "keypoints-cache": "trainer.keypoints_cache:COMMAND",
    "dataset": "trainer.dataset:COMMAND",
    "train": "trainer.train_options:COMMAND",
    "export": "trainer.export:EXPORT",
    "keygen": "trainer.export:KEYGEN",
    "verify": "trainer.export:VERIFY",
    "revoke-key": "trainer.revoke:COMMAND",
}
"""Each command's :class:`Command`, as ``module:attribute``."""


def _load(target: str) -> Command:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _named(argv: Sequence[str]) -> str | None:
    """The command a command line names (its first word that is not an option), if it is one."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def _unloaded(target: str) -> Command:
    """A command the command line did not choose: only named to the parser (its help and options
    are never shown), loaded should it run after all."""

    def run(args: argparse.Namespace) -> int:
        return _load(target).run(args)

    return Command(help="", description="", add_arguments=lambda parser: None, run=run)


def commands(argv: Sequence[str]) -> dict[str, Command]:
    """The commands for the parser: all loaded, or only the one ``argv`` names."""
    chosen = _named(argv)
    return {
        name: _load(target) if chosen in (None, name) else _unloaded(target)
        for name, target in COMMANDS.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        "trainer",
        "Workstation tools: videos -> keypoints -> features -> datasets -> models -> signed bundles.",
        commands(sys.argv[1:] if argv is None else argv),
        argv,
        user_errors=(
            "device.keypoints:KeypointFileError",
            "device.features:FeatureSpecError",
            "device.pose:PoseModelError",
            "device.sources:SourceError",
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
