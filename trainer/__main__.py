"""``python -m trainer <command>`` (``movement-trainer``): the workstation's commands, one module each.

Each command's module declares its options and help without importing MediaPipe, OpenCV,
scikit-learn or pyarrow, which its run function imports when it runs: ``--help``, ``keygen`` and
a mistyped option answer at once (``python -m benchmarks startup`` measures it).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from device.cli import Command, run_cli
from trainer import dataset, export, extract, features_command, train_options

COMMANDS: dict[str, Command] = {
    "extract": extract.COMMAND,
    "features": features_command.COMMAND,
    "dataset": dataset.COMMAND,
    "train": train_options.COMMAND,
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
        user_errors=(
            "device.keypoints:KeypointFileError",
            "device.features:FeatureSpecError",
            "device.pose:PoseModelError",
            "device.sources:SourceError",
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
