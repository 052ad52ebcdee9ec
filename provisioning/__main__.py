"""``python -m provisioning <command>`` (``movement-provision``): prepare kiosks and deliver models
to the fleet. MLflow is imported only for ``models:/`` URIs (:mod:`provisioning.registry`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from device.cli import Command, run_cli
from provisioning import devices, fleet

COMMANDS: dict[str, Command] = {
    "init-device": devices.INIT_DEVICE,
    "push": fleet.PUSH,
    "status": fleet.STATUS,
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        "provisioning",
        "Kiosk set-up and signed model delivery to a fleet (install.sh installs a kiosk).",
        COMMANDS,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
