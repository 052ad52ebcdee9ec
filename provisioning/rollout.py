"""``rollout status`` and ``promote``: how far a release went through the fleet, and giving it to all.

``rollout status`` reads, for a bounded time (``--wait``), the retained messages the kiosks and
the workstation leave on the broker: every kiosk's ``<prefix>/<device>/model/state`` (its model,
its model status, and where its pull stands: groups, desired release, state) and
``availability``, and every group's desired model. It prints per group the release, how many
kiosks follow the group, how many are online, which versions they run and in which pull state
they are (``ok``, ``trial``, ``waiting`` outside a canary, ``rolled_back``, ``refused`` …);
``--kiosks`` adds a row per kiosk, ``--json`` prints the same as one JSON document. What kiosks
say is printed escaped (:func:`provisioning.terminal.printable`).

``promote`` republishes a group's current release with ``canary_percent`` 100, re-signed: the
same release number and bundle, so the canary kiosks keep it and the others take it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Mapping
from typing import Any

from device.cli import Command, ExitStatus, UsageError
from provisioning.broker import BrokerUnavailable, add_broker_arguments
from provisioning.release import DEFAULT_WAIT_S, add_group_arguments, peek_body, wait_seconds

STATUS_DESCRIPTION = """\
Show per fleet group how far its release went: the release and its canary share, the kiosks that
follow the group (and how many are online), the versions they run and their pull states:
  ok           runs the group's desired model (its trial passed)
  trial        runs it on trial;  fetching: getting it
  waiting      outside the release's canary share
  rolled_back  it failed its trial and the kiosk went back to the previous version
  refused      a message or bundle failed a check (the detail says which); the old model runs
Retained messages are read for --wait seconds. Exit status: 0, 1 when the broker cannot be used.

Examples:
  python -m provisioning rollout status --broker mqtt.lan:1883
  python -m provisioning rollout status --group lobby --kiosks --mqtt-config kiosk.toml
"""

PROMOTE_DESCRIPTION = """\
Give a group's current release to every kiosk of the group: the release is republished with a
canary share of 100 %, signed again with --key (it must verify with that key). Canary kiosks keep
it, the others take it. Exit status: 0 promoted (or already at 100 %), 1 no release or the broker
cannot be used, 2 usage.

Example:
  python -m provisioning promote --group lobby --key keys/signing.key --broker mqtt.lan:1883
"""


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("status",), metavar="ACTION", help="status")
    parser.add_argument("--group", action="append", metavar="G", help="only this group (repeatable)")
    parser.add_argument("--kiosks", action="store_true", help="also a row per kiosk")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of tables")
    parser.add_argument(
        "--wait",
        type=wait_seconds,
        default=DEFAULT_WAIT_S,
        metavar="S",
        help=f"seconds to read retained messages (default {DEFAULT_WAIT_S:g})",
    )
    add_broker_arguments(parser)


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        return None


def summarize(messages: Mapping[str, bytes], prefix: str, only: list[str] | None = None) -> dict[str, Any]:
    """Groups and kiosks from the retained messages under ``prefix`` (of any shape a kiosk sent)."""
    kiosks: dict[str, dict[str, Any]] = {}
    desired: dict[str, dict[str, Any]] = {}
    for topic, payload in messages.items():
        parts = topic.removeprefix(prefix + "/").split("/")
        if len(parts) == 4 and parts[0] == "fleet" and parts[2:] == ["model", "desired"]:
            desired[parts[1]] = peek_body(payload) or {}
        elif len(parts) == 3 and parts[1:] == ["model", "state"]:
            kiosks.setdefault(parts[0], {})["state"] = _object(_json(payload))
        elif len(parts) == 2 and parts[1] == "availability":
            kiosks.setdefault(parts[0], {})["online"] = payload == b"online"
    rows = []
    for device, seen in sorted(kiosks.items()):
        state = _object(seen.get("state"))
        fleet = _object(state.get("fleet"))
        groups = [g for g in fleet.get("groups", []) if isinstance(g, str)] if fleet else []
        rows.append(
            {
                "device": device,
                "online": bool(seen.get("online")),
                "groups": groups,
                "model": f"{state.get('id')} {state.get('version')}" if state.get("version") else "none",
                "status": str(state.get("status", "-")),
                "state": str(fleet.get("state", "-")),
                "release": _object(fleet.get("desired")).get("release"),
                "detail": str(fleet.get("detail", "")),
                "last_error": fleet.get("last_error"),
            }
        )
    names = sorted({*desired, *(g for row in rows for g in row["groups"])})
    groups = []
    for name in names:
        if only and name not in only:
            continue
        members = [row for row in rows if name in row["groups"]]
        body = desired.get(name)
        groups.append(
            {
                "group": name,
                "release": body.get("release") if body else None,
                "desired": f"{body.get('model_id')} {body.get('version')}" if body else None,
                "canary_percent": body.get("canary_percent") if body else None,
                "kiosks": len(members),
                "online": sum(row["online"] for row in members),
                "running": dict(Counter(row["model"] for row in members)),
                "states": dict(Counter(row["state"] for row in members)),
                "status": dict(Counter(row["status"] for row in members)),
            }
        )
    shown = [row for row in rows if not only or set(row["groups"]) & set(only)]
    return {"groups": groups, "kiosks": shown}


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in sorted(counts.items())) or "-"


def run_status(args: argparse.Namespace) -> int:
    from provisioning.broker import BrokerClient, broker_settings
    from provisioning.terminal import render_table

    settings = broker_settings(args)
    try:
        with BrokerClient(settings, "rollout") as client:
            topics = [client.topic("+", "model", "state"), client.topic("+", "availability")]
            messages = client.retained([*topics, client.topic("fleet", "+", "model", "desired")], args.wait)
    except BrokerUnavailable as exc:
        print(f"provisioning rollout: {exc}", file=sys.stderr)
        return ExitStatus.FAILED
    summary = summarize(messages, settings.prefix, args.group)
    if args.json:
        print(json.dumps(summary, indent=2))
        return ExitStatus.OK
    header = ("group", "release", "desired", "canary", "kiosks", "online", "running", "states")
    print(
        render_table(
            header,
            [
                (
                    g["group"],
                    g["release"] if g["release"] is not None else "-",
                    g["desired"] or "none",
                    f"{g['canary_percent']} %" if g["canary_percent"] is not None else "-",
                    g["kiosks"],
                    g["online"],
                    _counts(g["running"]),
                    _counts(g["states"]),
                )
                for g in summary["groups"]
            ],
        )
    )
    if args.kiosks:
        print()
        rows = [
            (
                k["device"],
                "online" if k["online"] else "offline",
                k["model"],
                k["status"],
                k["state"],
                k["detail"],
            )
            for k in summary["kiosks"]
        ]
        print(render_table(("kiosk", "link", "model", "status", "pull", "detail"), rows))
    return ExitStatus.OK


def run_promote(args: argparse.Namespace) -> int:
    from device.model.bundle import BundleError, load_private_key
    from device.model.desired import desired_topic, encode_inline, read_desired
    from provisioning.broker import BrokerClient, broker_settings
    from provisioning.release import NotPublished, signed

    settings = broker_settings(args)
    try:
        key = load_private_key(args.key)
    except BundleError as exc:
        raise UsageError(f"--key {exc.message}") from None
    topic = desired_topic(settings.prefix, args.group)
    try:
        with BrokerClient(settings, "promote") as client:
            payload = client.retained([topic], args.wait).get(topic)
            if payload is None:
                print(f"provisioning promote: group {args.group} has no release on {topic}", file=sys.stderr)
                return ExitStatus.FAILED
            try:
                current = read_desired(payload, args.group, [key.public_key()])
            except BundleError as exc:
                print(
                    f"provisioning promote: the current release does not verify with --key ({exc})",
                    file=sys.stderr,
                )
                return ExitStatus.FAILED
            if current.canary_percent == 100:
                print(
                    f"release {current.release} of group {args.group} ({current.label}) is already at 100 %"
                )
                return ExitStatus.OK
            body = {
                "group": current.group,
                "release": current.release,
                "issued_at": current.issued_at,
                "model_id": current.model_id,
                "version": current.version,
                "sha256": current.sha256,
                "size": current.size,
                "bundle": None if current.bundle is None else encode_inline(current.bundle),
                "url": current.url,
                "canary_percent": 100,
            }
            client.publish_retained(topic, signed(body, key))
    except (BrokerUnavailable, NotPublished) as exc:
        print(f"provisioning promote: {exc}", file=sys.stderr)
        return ExitStatus.FAILED
    print(
        f"release {current.release} of group {args.group} ({current.label}): canary "
        f"{current.canary_percent} % -> 100 %"
    )
    return ExitStatus.OK


COMMAND = Command(
    help="how far each fleet group's release went (rollout status)",
    description=STATUS_DESCRIPTION,
    add_arguments=add_status_arguments,
    run=run_status,
)
PROMOTE = Command(
    help="give a group's canary release to all its kiosks",
    description=PROMOTE_DESCRIPTION,
    add_arguments=add_group_arguments,
    run=run_promote,
)
