"""``python -m trainer <command>`` (``movement-trainer``): the workstation's commands, one module each.

Each command's module declares its options and help without importing MediaPipe, OpenCV,
scikit-learn or pyarrow, which its run function imports when it runs: ``--help``, ``keygen`` and
a mistyped option answer at once (``python -m benchmarks startup`` measures it). Beyond that, a
command line that names its command imports that command's module alone, so ``trainer dataset``
does not load the signing or cluster code, and neither do the worker processes it spawns (they
import this module again); the list of every command (``trainer --help``, or no or an unknown
command) comes from the registry below and imports none of them (:func:`device.cli.commands_for`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from device.cli import Listed, commands_for, run_cli

COMMANDS: dict[str, Listed] = {
    "extract": Listed(
        "detect poses in videos and write <stem>.frames.jsonl keypoint files", "trainer.extract:COMMAND"
    ),
    "features": Listed(
        "per-frame features of a keypoint file, or --list of all features", "trainer.features_command:COMMAND"
    ),
    "keypoints-cache": Listed(
        "write the .frames.arrow copies of frame files that `dataset` reads ~100x faster",
        "trainer.keypoints_cache:COMMAND",
    ),
    "dataset": Listed(
        "keypoint files + annotations -> a labeled dataset table (CSV or Parquet)", "trainer.dataset:COMMAND"
    ),
    "train": Listed("train and evaluate a classifier on a dataset file", "trainer.train_options:COMMAND"),
    "export": Listed("package a run directory as a signed model bundle", "trainer.export:EXPORT"),
    "keygen": Listed("create an Ed25519 signing key pair for bundles", "trainer.export:KEYGEN"),
    "verify": Listed("check a model bundle as a device does", "trainer.export:VERIFY"),
    "revoke-key": Listed("sign a list of revoked signing keys for the kiosks", "trainer.revoke:COMMAND"),
}
"""Each command's line in the list of commands and its :class:`~device.cli.Command`."""


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        "trainer",
        "Workstation tools: videos -> keypoints -> features -> datasets -> models -> signed bundles.",
        commands_for(COMMANDS, sys.argv[1:] if argv is None else argv),
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
