"""``init-device``: everything a new kiosk needs, written into one folder on the workstation.

The folder holds the device's config, the public keys it trusts and the two halves of a fresh
bearer token: the config keeps only its SHA-256 (a copy of the kiosk's SD card does not reveal
the token that lets one push models to it), the workstation keeps the token in clear in
``<name>.token`` (mode 0600), referenced by the fleet entry. ``install.sh --config
DIR/device.toml`` then installs the config and the keys beside it on the kiosk; the token file
stays on the workstation.

Nothing is written until everything was checked: the keys load, the config passes the device's
own validation, the fleet file (with ``--fleet``) is valid and has no device of that name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from device.cli import Command, ExitStatus, UsageError
from device.config import ConfigError, parse_config
from device.model.bundle import BundleError, load_public_key, write_atomic
from provisioning.fleet import DEVICE_NAME, DeviceEntry, load_fleet

CONFIG_NAME = "device.toml"
FLEET_ENTRY_NAME = "fleet-entry.toml"
DEFAULT_PORT = 8080
STATE_DIR = "/var/lib/movement-edge"  # install.sh creates it, owned by the service user


def toml_document(tables: list[tuple[str, dict[str, Any]]], header: str = "") -> str:
    """TOML text of flat tables; ``[[name]]`` headers pass through as given.

    Values are strings, numbers, booleans or lists of those: their JSON spelling is valid TOML.
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for name, values in tables:
        lines += ["", name if name.startswith("[") else f"[{name}]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def _trusted_keys(paths: list[Path]) -> dict[str, bytes]:
    """File name -> PEM of each distinct key; every one must load as an Ed25519 public key.

    The copies are named ``*.pub`` because that is what install.sh installs beside the config.
    """
    keys: dict[str, bytes] = {}
    for path in paths:
        try:
            load_public_key(path)
        except BundleError as exc:
            raise UsageError(f"--trusted-key {exc.message}") from exc
        data = path.read_bytes()
        name = path.name if path.suffix == ".pub" else f"{path.name}.pub"
        if keys.get(name, data) != data:
            raise UsageError(f"--trusted-key: two different keys are named {name}; rename one")
        keys[name] = data
    return keys


def _source(args: argparse.Namespace) -> dict[str, Any]:
    if args.source == "file":
        if not args.video:
            raise UsageError("--source file needs --video PATH (the video's path on the kiosk)")
        return {"kind": "file", "paths": [str(v) for v in args.video], "loop": True, "pace": "realtime"}
    if args.video:
        raise UsageError(f"--video is for --source file, not --source {args.source}")
    if args.source == "camera":
        return {"kind": "camera", "device": int(args.camera) if args.camera.isdigit() else args.camera}
    return {"kind": args.source}


def device_config(args: argparse.Namespace, token_sha256: str, key_names: list[str]) -> dict[str, Any]:
    """The kiosk's config as a mapping: a fleet device listens on every interface, token hashed."""
    return {
        "device": {"id": args.name, "name": args.title or args.name, "state_dir": STATE_DIR},
        "source": _source(args),
        "model": {"trusted_keys": key_names},
        "mqtt": {"enabled": not args.no_mqtt, "host": args.mqtt_host, "port": args.mqtt_port},
        "http": {"enabled": True, "bind": "0.0.0.0", "port": args.port, "token_sha256": token_sha256},
    }


def fleet_entry(entry: DeviceEntry, token_file: str) -> str:
    return toml_document([("[[device]]", {"name": entry.name, "url": entry.url, "token_file": token_file})])


def _check_fleet(path: Path, name: str) -> None:
    """The fleet file to append to must be valid and must not know ``name`` yet."""
    if not path.exists():
        if not path.parent.is_dir():
            raise UsageError(f"--fleet {path}: folder {path.parent} does not exist")
        return
    if any(entry.name == name for entry in load_fleet(path)):
        raise UsageError(f"--fleet {path}: a device named {name} is already in it")


INIT_DESCRIPTION = """\
Prepare a new kiosk: write into DIR
  device.toml        its configuration (python -m device check-config --offline accepts it here,
                     and without --offline on the kiosk, camera and files in place): HTTP on every
                     interface with the token stored as its SHA-256, the trusted keys beside it
  *.pub              copies of the trusted public keys (--trusted-key)
  NAME.token         the bearer token in clear, mode 0600: stays on the workstation for `push`
  fleet-entry.toml   the [[device]] entry for fleet.toml (--fleet FILE appends it for you)
Then on the kiosk: sudo provisioning/install.sh --config DIR/device.toml (the token file is not
installed). DIR must not exist or be empty, unless --force.

Examples:
  python -m provisioning init-device --name kiosk-1 --out kiosks/kiosk-1 --trusted-key keys/signing.pub
  python -m provisioning init-device --name kiosk-2 --out kiosks/kiosk-2 --trusted-key keys/signing.pub \\
      --url http://192.168.1.52:8080 --mqtt-host broker.local --fleet fleet.toml
  python -m provisioning init-device --name demo --out kiosks/demo --source file --video /srv/demo.mp4
"""


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError("must be a TCP port, 1-65535")
    return port


def add_init_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name", required=True, help="device id (letters, digits, _ and -), used in MQTT topics"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write")
    parser.add_argument(
        "--trusted-key",
        type=Path,
        action="append",
        default=[],
        metavar="PUB",
        help="public key bundles must be signed with (signing.pub from `trainer keygen`; repeatable)",
    )
    parser.add_argument("--title", default="", help="human name on the status page (default: --name)")
    parser.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"the kiosk's HTTP port (default {DEFAULT_PORT})"
    )
    parser.add_argument("--url", help="how the workstation reaches it (default http://NAME.local:PORT)")
    parser.add_argument("--mqtt-host", default="127.0.0.1", help="MQTT broker (default: one on the kiosk)")
    parser.add_argument("--mqtt-port", type=_port, default=1883, help="MQTT broker port (default 1883)")
    parser.add_argument("--no-mqtt", action="store_true", help="do not publish to MQTT")
    parser.add_argument(
        "--source",
        choices=("camera", "picamera2", "file"),
        default="camera",
        help="frame source (default camera)",
    )
    parser.add_argument("--camera", default="0", help="camera index or /dev/videoN (default 0)")
    parser.add_argument(
        "--video", type=Path, action="append", metavar="PATH", help="--source file: a video on the kiosk"
    )
    parser.add_argument("--fleet", type=Path, metavar="FILE", help="append the entry to this fleet.toml")
    parser.add_argument("--force", action="store_true", help="write into a DIR that is not empty")


def run_init(args: argparse.Namespace) -> int:
    if not re.fullmatch(DEVICE_NAME, args.name):
        raise UsageError(f"--name {args.name!r}: use 1-64 letters, digits, _ and -")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UsageError(f"--out {out} exists and is not empty; give --force to write into it")
    keys = _trusted_keys(args.trusted_key)
    token = secrets.token_urlsafe(32)
    token_path = (out / f"{args.name}.token").resolve()
    try:
        entry = DeviceEntry(
            name=args.name, url=args.url or f"http://{args.name}.local:{args.port}", token_file=token_path
        )
    except ValidationError as exc:
        raise UsageError(
            f"--url {args.url}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}"
        ) from None
    config = device_config(args, hashlib.sha256(token.encode()).hexdigest(), sorted(keys))
    try:
        parse_config(config, f"--out {out / CONFIG_NAME}", env={})
    except ConfigError as exc:  # an option the device would refuse (port, camera, MQTT host…)
        raise UsageError(str(exc)) from None
    if args.fleet is not None:
        _check_fleet(args.fleet, args.name)

    written = datetime.now(UTC).replace(microsecond=0).isoformat()
    header = (
        f'movement-edge kiosk "{args.name}", written by `python -m provisioning init-device` at {written}.\n'
        "Check: python -m device check-config device.toml (--offline away from the kiosk). "
        "Relative paths are relative to this file.\n"
        f"The HTTP token is stored as its SHA-256; the token is in {args.name}.token on the workstation."
    )
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / CONFIG_NAME, toml_document(list(config.items()), header).encode(), mode=0o644)
    for name, data in keys.items():
        write_atomic(out / name, data, mode=0o644)
    write_atomic(token_path, f"{token}\n".encode(), mode=0o600)
    write_atomic(out / FLEET_ENTRY_NAME, fleet_entry(entry, str(token_path)).encode(), mode=0o644)
    print(
        f"wrote {out / CONFIG_NAME}, {len(keys)} trusted key(s), {token_path} (mode 0600), "
        f"{out / FLEET_ENTRY_NAME}"
    )
    if not keys:
        print(
            "warning: no --trusted-key: the device refuses every bundle until model.trusted_keys lists one",
            file=sys.stderr,
        )
    if args.fleet is not None:
        relative = os.path.relpath(token_path, args.fleet.resolve().parent)
        with args.fleet.open("a", encoding="utf-8") as fleet:
            fleet.write(("\n" if args.fleet.stat().st_size else "") + fleet_entry(entry, relative))
        load_fleet(args.fleet)  # what was appended must read back
        print(f"added {args.name} to {args.fleet}")
    return ExitStatus.OK


INIT_DEVICE = Command(
    "prepare a new kiosk's config, keys and token", INIT_DESCRIPTION, add_init_arguments, run_init
)
