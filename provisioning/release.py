"""``release``: make a bundle the desired model of a fleet group; kiosks pull it over MQTT.

One retained, signed message on ``<prefix>/fleet/<group>/model/desired``
(:mod:`device.model.desired`) names the model, the bundle's sha256 and size, and carries the
bundle inline when it is at most 256 KiB, or its URL under ``--url-base`` (any static file
server, an S3-compatible store). Before publishing, a URL is fetched back here and must serve the
very bytes (a typo would otherwise fail on every kiosk). The release number is the group's last
one plus one, read from the retained message: a kiosk refuses a number lower than one it
accepted, so an old message replayed cannot take models back. ``--canary N`` lets only about
N % of the group's kiosks take it; ``promote`` then gives it to all (:mod:`provisioning.rollout`).

This module declares the options at import time and imports the work (paho, cryptography,
MLflow for ``models:/``) when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from device.cli import Command, ExitStatus, UsageError
from provisioning.broker import BrokerUnavailable, add_broker_arguments

DEFAULT_WAIT_S = 2.0


class NotPublished(Exception):
    """The message was not published: the URL does not serve the bundle."""


def canary_percent(text: str) -> int:
    """``10`` or ``10%`` -> 10, within 1..100."""
    try:
        value = int(text.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole percentage such as 10%") from None
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError("must be within 1..100 %")
    return value


def wait_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError("must be within 0..600 seconds")
    return value


def add_group_arguments(parser: argparse.ArgumentParser) -> None:
    """``--group``, ``--key`` and the broker: what ``release`` and ``promote`` share."""
    parser.add_argument(
        "--group", required=True, metavar="G", help="the fleet group ([fleet] groups of kiosks)"
    )
    parser.add_argument(
        "--key",
        type=Path,
        required=True,
        metavar="FILE",
        help="the signing key (trainer keygen's signing.key)",
    )
    parser.add_argument(
        "--wait",
        type=wait_seconds,
        default=DEFAULT_WAIT_S,
        metavar="S",
        help=f"seconds to read the group's current release (default {DEFAULT_WAIT_S:g})",
    )
    add_broker_arguments(parser)


def add_release_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "bundle", metavar="BUNDLE", help="signed bundle (trainer export), or models:/NAME@ALIAS from MLflow"
    )
    add_group_arguments(parser)
    parser.add_argument(
        "--url-base",
        metavar="URL",
        help="the bundle is served at URL/<file name> (https://); kiosks fetch it from there instead of "
        "receiving it inline (needed above 256 KiB)",
    )
    parser.add_argument(
        "--canary",
        type=canary_percent,
        default=100,
        metavar="N%",
        help="only about N %% of the group's kiosks take it (default 100); promote gives it to the rest",
    )
    parser.add_argument("--tracking-uri", metavar="URI", help="MLflow store of a models:/ BUNDLE")


DESCRIPTION = """\
Publish BUNDLE as the desired model of a fleet group: a retained, signed message on
<prefix>/fleet/<group>/model/desired. Every kiosk whose [fleet] groups names the group (and is in
the canary) fetches it, checks it, installs it through its model store and keeps it if it passes
its trial, or rolls back. Kiosks that are off take it when they reconnect; none needs an
inbound port. Exit status: 0 published, 1 the broker or the --url-base could not be used, 2 usage.

Examples:
  python -m provisioning release model.zip --group lobby --key keys/signing.key --broker mqtt.lan:1883
  python -m provisioning release big.zip --group all --key keys/signing.key \\
      --url-base https://files.example.org/models --canary 10% --mqtt-config kiosk.toml
  python -m provisioning release models:/poses@production --group all --key keys/signing.key
"""


def peek_body(payload: bytes) -> dict[str, Any] | None:
    """The body of a desired-model message, NOT verified: for display and for the next release
    number only (kiosks verify everything and refuse a number lower than one they accepted)."""
    try:
        body = json.loads(json.loads(payload)["body"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


def run_release(args: argparse.Namespace) -> int:
    from provisioning import registry

    if not registry.is_model_uri(args.bundle):
        if args.tracking_uri is not None:
            raise UsageError("--tracking-uri needs a registered bundle (models:/NAME@ALIAS)")
        return _release_file(args, Path(args.bundle))
    from trainer import tracking

    with tempfile.TemporaryDirectory(prefix="movement-edge-release-") as work:
        registered = registry.fetch(args.bundle, tracking.tracking_uri(args.tracking_uri), Path(work))
        return _release_file(args, registered.path, registered.check_identity)


def _release_file(args: argparse.Namespace, path: Path, check_identity: Any = None) -> int:
    import hashlib
    from datetime import UTC, datetime

    from device.model.bundle import BundleError, load_private_key
    from device.model.desired import MAX_INLINE_BYTES, check_url, desired_topic, encode_inline
    from provisioning.broker import BrokerClient, broker_settings
    from provisioning.push import read_bundle

    settings = broker_settings(args)
    try:
        key = load_private_key(args.key)
    except BundleError as exc:
        raise UsageError(f"--key {exc.message}") from None
    bundle = read_bundle(path)
    if check_identity is not None:
        check_identity(bundle.model_id, bundle.version)
    url = None
    if args.url_base is not None:
        url = f"{args.url_base.rstrip('/')}/{path.name}"
        try:
            check_url(url)
        except ValueError as exc:
            raise UsageError(f"--url-base {args.url_base}: {exc}") from None
    elif len(bundle.data) > MAX_INLINE_BYTES:
        raise UsageError(
            f"{path}: {len(bundle.data)} bytes, more than the {MAX_INLINE_BYTES // 1024} KiB a message "
            "carries: put it on a file server and give --url-base"
        )
    body = {
        "group": args.group,
        "issued_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_id": bundle.model_id,
        "version": bundle.version,
        "sha256": hashlib.sha256(bundle.data).hexdigest(),
        "size": len(bundle.data),
        "bundle": None if url else encode_inline(bundle.data),
        "url": url,
        "canary_percent": args.canary,
    }
    try:
        with BrokerClient(settings, "release") as client:
            topic = desired_topic(settings.prefix, args.group)
            current = peek_body(client.retained([topic], args.wait).get(topic, b"")) or {}
            last = current.get("release")
            body["release"] = (
                last if isinstance(last, int) and not isinstance(last, bool) and last > 0 else 0
            ) + 1
            message = signed(body, key)
            client.publish_retained(topic, message)
    except (BrokerUnavailable, NotPublished) as exc:
        print(f"provisioning release: {exc}", file=sys.stderr)
        return ExitStatus.FAILED
    how = f"from {url}" if url else f"inline, {len(bundle.data)} bytes"
    print(
        f"release {body['release']} of group {args.group}: {bundle.label} ({how}), "
        f"canary {args.canary} %, on {topic}"
    )
    return ExitStatus.OK


def signed(body: dict[str, Any], key: Any) -> bytes:
    """The signed message; a URL is fetched back first and must serve exactly the bundle."""
    from device.fleet_pull import FetchFailed, fetch_bundle
    from device.model.bundle import MAX_BUNDLE_SIZE
    from device.model.desired import read_desired, sign_desired

    message = sign_desired(body, key)
    desired = read_desired(message, body["group"], [key.public_key()])
    if desired.url is not None:
        try:
            fetch_bundle(desired, MAX_BUNDLE_SIZE, timeout_s=60.0)
        except FetchFailed as exc:
            raise NotPublished(f"{desired.url} does not serve the bundle: {exc}; nothing published") from None
    return message


COMMAND = Command(
    help="make a bundle a fleet group's desired model (kiosks pull it over MQTT)",
    description=DESCRIPTION,
    add_arguments=add_release_arguments,
    run=run_release,
)
