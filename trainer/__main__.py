"""``python -m trainer <command>``: the workstation's commands, one module each."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from device.cli import Command, run_cli
from device.features import FeatureSpecError
from device.keypoints import KeypointFileError
from device.pose import PoseModelError
from device.sources import SourceError
from trainer import dataset, export, extract, features_command, train

COMMANDS: dict[str, Command] = {
    "extract": extract.COMMAND,
    "features": features_command.COMMAND,
    "dataset": dataset.COMMAND,
    "train": train.COMMAND,
    "export": export.EXPORT,
    "keygen": export.KEYGEN,
    "verify": export.VERIFY,
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        "trainer",
        "Workstation tools: videos -> keypoints -> features -> datasets -> models -> signed bundles.",
        COMMANDS,
        argv,
        user_errors=(KeypointFileError, FeatureSpecError, PoseModelError, SourceError),
    )


if __name__ == "__main__":
    sys.exit(main())
