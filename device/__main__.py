"""``python -m device <command>``: run the kiosk daemon, check its configuration, manage its models,
replay videos as a kiosk would."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from device import logs, replay
from device.cli import Command, ExitStatus, run_cli
from device.config import ConfigError, load_config
from device.model.store import ModelRejected, ModelStore, StoreError

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

Examples:
  python -m device check-config /etc/movement-edge/device.toml
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


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
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
    config = load_config(args.config)
    print(f"{args.config}: OK")
    print(config.model_dump_json(indent=2, exclude={"mqtt": {"password"}, "http": {"token"}}))
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
    store = ModelStore.from_config(load_config(args.config))
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
    "run": Command("run the kiosk daemon", RUN_HELP, lambda p: _config_argument(p, True), run),
    "check-config": Command(
        "validate a configuration file", CHECK_HELP, lambda p: _config_argument(p, False), check_config
    ),
    "models": Command("install, list or activate model versions", MODELS_HELP, _models_arguments, models),
    "replay": Command(
        "what a kiosk would publish for video files", replay.HELP, replay.add_arguments, replay.run
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        "device",
        "The movement classification kiosk daemon.",
        COMMANDS,
        argv,
        user_errors=(ConfigError, ModelRejected, StoreError, *replay.USER_ERRORS),
    )


if __name__ == "__main__":
    sys.exit(main())
