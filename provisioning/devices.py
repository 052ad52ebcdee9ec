"""``init-device``: everything a new kiosk needs, in two folders: one for the kiosk, one that stays.

The kiosk's folder (``--out``, copied to the kiosk, where ``install.sh --config DIR/device.toml``
installs it) holds the device's config, the public keys it trusts, and its TLS certificate and
key (made here, self-signed, for NAME.local, NAME and every ``--host``; or the user's own with
``--cert``/``--key``). The config serves HTTPS on every interface and keeps only the SHA-256 of
the two fresh tokens — the device token (push models) and the viewer token (page, API, metrics)
— so a copy of the kiosk's SD card reveals neither.

The tokens in clear go to the workstation folder beside it (``--workstation``, default
``OUT.workstation``, mode 0700, each token file 0600) with the fleet entry, which names the
kiosk's ``https://`` URL, the certificate's fingerprint that ``push`` and ``status`` pin, and the
device token's file. Keeping them out of ``--out`` is the point: that folder is the one that gets
copied around.

Nothing is written until everything was checked: the keys and certificates load, the config passes
the device's own validation, the fleet file (with ``--fleet``) is valid and has no device of that
name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from device.certificates import fingerprint, make_self_signed
from device.cli import ExitStatus, UsageError
from device.config import ConfigError, parse_config
from device.model.bundle import BundleError, load_public_key, write_atomic
from provisioning.inventory import DEVICE_NAME, DeviceEntry, load_fleet

CONFIG_NAME = "device.toml"
FLEET_ENTRY_NAME = "fleet-entry.toml"
CERT_NAME = "tls.crt"  # install.sh installs these two beside device.toml
KEY_NAME = "tls.key"
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


@dataclass(frozen=True)
class Tokens:
    """The two fresh bearer tokens of a kiosk, in clear: they go to the workstation only."""

    device: str  # changes models (push); also grants viewing
    viewer: str  # page, API, metrics: for people and Prometheus

    @classmethod
    def fresh(cls) -> Tokens:
        return cls(secrets.token_urlsafe(32), secrets.token_urlsafe(32))


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def device_config(
    args: argparse.Namespace, tokens: Tokens, key_names: list[str], hosts: list[str]
) -> dict[str, Any]:
    """The kiosk's config as a mapping: HTTPS on every interface, tokens hashed, Host names listed."""
    return {
        "device": {"id": args.name, "name": args.title or args.name, "state_dir": STATE_DIR},
        "source": _source(args),
        "model": {"trusted_keys": key_names},
        "mqtt": {"enabled": not args.no_mqtt, "host": args.mqtt_host, "port": args.mqtt_port},
        "http": {
            "enabled": True,
            "bind": "0.0.0.0",
            "port": args.port,
            "tls_cert": CERT_NAME,
            "tls_key": KEY_NAME,
            "token_sha256": _sha256(tokens.device),
            "viewer_token_sha256": _sha256(tokens.viewer),
            "allowed_hosts": hosts,
        },
    }


def fleet_entry(entry: DeviceEntry, token_file: str) -> str:
    values = entry.model_dump(include={"name", "url", "fingerprint"}, exclude_none=True)
    return toml_document([("[[device]]", {**values, "token_file": token_file})])


def _host_names(args: argparse.Namespace, url_host: str) -> list[str]:
    """What the certificate covers and the Host header may say: NAME.local, NAME, --host, the URL's."""
    hosts: list[str] = []
    for host in [f"{args.name}.local", args.name, *args.host, url_host]:
        bare = host.strip().strip("[]").lower()
        if not bare:
            raise UsageError("--host: an empty host name")
        if bare not in hosts:
            hosts.append(bare)
    return hosts


def _certificate(args: argparse.Namespace, hosts: list[str]) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM): the user's own pair, checked to belong together, or a new one."""
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together (the certificate and its private key)")
    if args.cert is None:
        return make_self_signed(args.name, hosts)
    try:
        cert_pem, key_pem = args.cert.read_bytes(), args.key.read_bytes()
    except OSError as exc:
        raise UsageError(f"{exc.filename}: cannot read ({exc.strerror})") from None
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]  # the kiosk's own comes first in a chain
    except ValueError:
        raise UsageError(f"--cert {args.cert}: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):  # TypeError: the key is encrypted
        raise UsageError(f"--key {args.key}: not a PEM private key without a passphrase") from None
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise UsageError(f"--key {args.key} is not the private key of --cert {args.cert}")
    return key_pem, cert_pem


def _check_fleet(path: Path, name: str) -> None:
    """The fleet file to append to must be valid and must not know ``name`` yet."""
    if not path.exists():
        if not path.parent.is_dir():
            raise UsageError(f"--fleet {path}: folder {path.parent} does not exist")
        return
    if any(entry.name == name for entry in load_fleet(path)):
        raise UsageError(f"--fleet {path}: a device named {name} is already in it")


def _check_folder(path: Path, option: str, force: bool) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file, not a folder")
    if path.exists() and any(path.iterdir()) and not force:
        raise UsageError(f"{option} {path} exists and is not empty; give --force to write into it")


def _folders(args: argparse.Namespace) -> tuple[Path, Path]:
    """The kiosk's folder and the workstation's, which must not lie inside the kiosk's."""
    out: Path = args.out
    workstation: Path = args.workstation or out.with_name(f"{out.name}.workstation")
    _check_folder(out, "--out", args.force)
    _check_folder(workstation, "--workstation", args.force)
    if workstation.resolve().is_relative_to(out.resolve()):
        raise UsageError(
            f"--workstation {workstation} is inside --out {out}, which is copied to the kiosk; "
            "the tokens must stay on the workstation"
        )
    return out, workstation


def _entry(args: argparse.Namespace, token_path: Path) -> DeviceEntry:
    """The fleet entry without its fingerprint yet; ``--url`` must be the kiosk's https:// address."""
    url = args.url or f"https://{args.name}.local:{args.port}"
    try:
        entry = DeviceEntry(name=args.name, url=url, token_file=token_path)
    except ValidationError as exc:
        raise UsageError(f"--url {url}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    if urlsplit(entry.url).scheme != "https":
        raise UsageError(f"--url {url}: the kiosk serves HTTPS; give its https:// address")
    return entry


def run_init(args: argparse.Namespace) -> int:
    if not re.fullmatch(DEVICE_NAME, args.name):
        raise UsageError(f"--name {args.name!r}: use 1-64 letters, digits, _ and -")
    out, workstation = _folders(args)
    keys = _trusted_keys(args.trusted_key)
    token_path = (workstation / f"{args.name}.token").resolve()
    viewer_path = (workstation / f"{args.name}.viewer.token").resolve()
    entry = _entry(args, token_path)
    hosts = _host_names(args, urlsplit(entry.url).hostname or "")
    tokens = Tokens.fresh()
    config = device_config(args, tokens, sorted(keys), hosts)
    try:
        parse_config(config, f"--out {out / CONFIG_NAME}", env={})
    except ConfigError as exc:  # an option the device would refuse (port, camera, host name…)
        raise UsageError(str(exc)) from None
    if args.fleet is not None:
        _check_fleet(args.fleet, args.name)
    key_pem, cert_pem = _certificate(args, hosts)
    entry = entry.model_copy(update={"fingerprint": fingerprint(cert_pem)})

    written = datetime.now(UTC).replace(microsecond=0).isoformat()
    header = (
        f'movement-edge kiosk "{args.name}", written by `python -m provisioning init-device` at {written}.\n'
        "Check: python -m device check-config device.toml (--offline away from the kiosk). "
        "Relative paths are relative to this file.\n"
        "The tokens are stored as their SHA-256; in clear they are on the workstation only."
    )
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / CONFIG_NAME, toml_document(list(config.items()), header).encode(), mode=0o644)
    for name, data in keys.items():
        write_atomic(out / name, data, mode=0o644)
    write_atomic(out / CERT_NAME, cert_pem, mode=0o644)
    write_atomic(out / KEY_NAME, key_pem, mode=0o600)
    workstation.mkdir(parents=True, exist_ok=True)
    workstation.chmod(0o700)
    write_atomic(token_path, f"{tokens.device}\n".encode(), mode=0o600)
    write_atomic(viewer_path, f"{tokens.viewer}\n".encode(), mode=0o600)
    write_atomic(workstation / FLEET_ENTRY_NAME, fleet_entry(entry, str(token_path)).encode(), mode=0o644)
    print(
        f"for the kiosk (install.sh --config {out / CONFIG_NAME}): {CONFIG_NAME}, {len(keys)} trusted "
        f"key(s), {CERT_NAME}, {KEY_NAME} (mode 0600) in {out}\n"
        f"for this workstation only: {token_path.name} (device token), {viewer_path.name} (viewer token), "
        f"both mode 0600, and {FLEET_ENTRY_NAME} in {workstation} (mode 0700)\n"
        f"{entry.url} certificate sha256 {entry.fingerprint}"
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
