"""``python -m device <command>`` (``movement-device``): run the kiosk daemon, check its
configuration, manage its models, replay videos as a kiosk would.

The commands import what they need when they run (pydantic, the model store, MediaPipe), so
``--help`` and a usage error answer at once."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from device import logs, replay_options
from device.cli import Command, ExitStatus, lazy, run_cli

if TYPE_CHECKING:
    from device.config import Config

log = logging.getLogger("device")

RUN_HELP = """\
Run the daemon: capture -> pose -> window -> features -> model -> MQTT, status page on HTTP.
Stops cleanly on SIGTERM or Ctrl-C (publishes `stopped`, flushes the outbox).

Examples:
  python -m device run --config /etc/movement-edge/device.toml
  MOVEMENT_EDGE_MQTT_PASSWORD=secret python -m device run --config device.toml
"""

CHECK_HELP = """\
Validate a configuration file without running anything; prints the effective settings.

Besides the keys and values, every file and device the configuration names is checked as the
daemon will use it: the trusted keys load as Ed25519 public keys, the bundle exists and verifies
with them, the video files open, the camera device exists and can be opened by this user, the
pose model is a usable .task file, the TLS files and the fleet's CA file can be read, and the
state and outbox folders exist or can be created. Run it as the user the daemon runs as:
permissions are checked for the user running the check. Each problem is one line; the exit
status is 2 when there is any.

--offline checks only keys and values: for a configuration written on a workstation for another
machine (`python -m provisioning init-device` makes such files), whose paths and devices exist
only there.

Examples:
  python -m device check-config /etc/movement-edge/device.toml
  sudo -u movement-edge venv/bin/python -m device check-config /etc/movement-edge/device.toml
  python -m device check-config kiosks/kiosk-1/device.toml --offline
"""


MODELS_HELP = """\
Manage the model store in <state_dir>/models: install a signed bundle, list the stored versions,
activate a stored one (rollback). Installing runs the daemon's own steps: verify (signature,
hashes, safe zip, size) -> compatibility (a downgrade needs --force) -> load -> smoke test on the
manifest's sample rows -> store it as the active version. A failure names the step and changes
nothing.

A running daemon switches at once only when the model comes through its HTTP API
(POST /api/models, or `python -m provisioning push`). These local commands are for installing
before the daemon starts (or while it is stopped): it loads the store's active version at start.

Examples:
  python -m device models install model.zip --config /etc/movement-edge/device.toml
  python -m device models list --config device.toml
  python -m device models activate 2026.11.24.220000 --config device.toml
"""


def _config_argument(parser: argparse.ArgumentParser, flag: bool) -> None:
    if flag:
        parser.add_argument("--config", type=Path, required=True, help="the device TOML file")
    else:
        parser.add_argument("config", type=Path, help="the device TOML file")


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(parser, False)
    parser.add_argument(
        "--offline",
        action="store_true",
        help="check keys and values only, not the files and devices (a config for another machine)",
    )


def _load_config(path: Path) -> Config:
    from device.config import load_config  # pydantic: for the commands that read a config, not --help

    return load_config(path)


def run(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    logs.configure(config.device.log_level)
    from device.daemon import build  # the heavy imports (MediaPipe, Flask) only when running

    daemon = build(config)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        daemon.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.start()
    try:
        daemon.run()
    finally:
        daemon.stop()
    return ExitStatus.OK


def check_config(args: argparse.Namespace) -> int:
    from device.config_check import check_files

    config = _load_config(args.config)
    problems = [] if args.offline else check_files(config)
    for problem in problems:
        print(f"device check-config: error: {args.config}: {problem}", file=sys.stderr)
    if problems:
        return ExitStatus.USAGE
    checked = "files and devices not checked: --offline" if args.offline else "files and devices too"
    print(f"{args.config}: OK ({checked})")
    print(config.model_dump_json(indent=2, exclude={"mqtt": {"password"}, "http": {"token", "viewer_token"}}))
    return ExitStatus.OK


def _models_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    install = actions.add_parser("install", help="verify, smoke-test and activate a bundle file")
    install.add_argument("bundle", type=Path, metavar="FILE", help="the signed bundle (.zip)")
    activate = actions.add_parser("activate", help="make a stored version active again")
    activate.add_argument("version", help="a version shown by `models list`")
    listing = actions.add_parser("list", help="the stored versions, newest first")
    for action in (install, activate):
        action.add_argument("--force", action="store_true", help="allow a downgrade; reload the active one")
    for action in (install, activate, listing):
        _config_argument(action, True)


def models(args: argparse.Namespace) -> int:
    from device.model.store import ModelStore

    store = ModelStore.from_config(_load_config(args.config))
    if args.action == "list":
        rows = store.list()
        for row in rows:
            print(
                f"{row['version']:<20} {row['status']:<9} {row['model_id']} ({row['runtime']}, "
                f"{len(row['labels'])} labels) installed {row['installed_at']} sha256 {row['sha256'][:12]}"
            )
        if not rows:
            print(f"no models in {store.folder}")
        return ExitStatus.OK
    if args.action == "install":
        activation = store.install(args.bundle, force=args.force)
    else:
        activation = store.activate(args.version, force=args.force)
    print(activation.detail)
    return ExitStatus.OK


COMMANDS = {
    "run": Command(RUN_HELP, lambda p: _config_argument(p, True), run, help="run the kiosk daemon"),
    "check-config": Command(
        CHECK_HELP, _check_arguments, check_config, help="validate a configuration file and what it names"
    ),
    "models": Command(
        MODELS_HELP, _models_arguments, models, help="install, list or activate model versions"
    ),
    "replay": Command(
        replay_options.HELP,
        replay_options.add_arguments,
        lazy("device.replay:run"),
        help="what a kiosk would publish for video files",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        "device",
        "The movement classification kiosk daemon.",
        COMMANDS,
        argv,
        user_errors=(
            "device.config:ConfigError",
            "device.model.store:ModelRejected",
            "device.model.store:StoreError",
            *replay_options.USER_ERRORS,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
