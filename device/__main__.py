"""``python -m device <command>``: run the kiosk daemon or check its configuration."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from device import logs
from device.cli import Command, ExitStatus, run_cli
from device.config import ConfigError, load_config

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


COMMANDS = {
    "run": Command("run the kiosk daemon", RUN_HELP, lambda p: _config_argument(p, True), run),
    "check-config": Command(
        "validate a configuration file", CHECK_HELP, lambda p: _config_argument(p, False), check_config
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        "device",
        "The movement classification kiosk daemon.",
        COMMANDS,
        argv,
        user_errors=(ConfigError,),
    )


if __name__ == "__main__":
    sys.exit(main())
