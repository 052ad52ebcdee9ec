"""``python -m provisioning <command>`` (``movement-provision``): prepare kiosks and deliver models
to the fleet.

As for the trainer, each command is declared in a light module (options and help) whose run
function is imported when the command runs, so ``--help`` and a usage error answer at once;
MLflow is imported only for ``models:/`` URIs (:mod:`provisioning.registry`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from device.cli import Listed, commands_for, run_cli

COMMANDS: dict[str, Listed] = {
    "init-device": Listed(
        "prepare a new kiosk's config, certificate and tokens", "provisioning.init_options:INIT_DEVICE"
    ),
    "push": Listed("push a model bundle to the fleet", "provisioning.fleet_options:PUSH"),
    "status": Listed("show each device's model, fps, MQTT and uptime", "provisioning.fleet_options:STATUS"),
    "release": Listed(
        "make a bundle a fleet group's desired model (pulled over MQTT)", "provisioning.release:COMMAND"
    ),
    "rollout": Listed(
        "how far each fleet group's release went (rollout status)", "provisioning.rollout:COMMAND"
    ),
    "promote": Listed("give a group's canary release to all its kiosks", "provisioning.rollout:PROMOTE"),
}
"""Each command's line in the list of commands and its :class:`~device.cli.Command`."""


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        "provisioning",
        "Kiosk set-up and signed model delivery to a fleet (install.sh installs a kiosk).",
        commands_for(COMMANDS, sys.argv[1:] if argv is None else argv),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
