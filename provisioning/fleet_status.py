"""``status``: every kiosk's model, pose rate, MQTT link, camera and uptime in one table."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping
from typing import Any

from device.cli import ExitStatus, UsageError
from provisioning.device_api import (
    BadAnswer,
    DeviceApi,
    Refused,
    RetryPolicy,
    Unreachable,
    for_each_device,
    with_retries,
)
from provisioning.inventory import DeviceEntry, devices_for, token_for
from provisioning.pinning import PinMismatch
from provisioning.terminal import render_table


def _uptime(seconds: float) -> str:
    if not 0 <= seconds < 1e12:  # NaN, infinity and nonsense from a confused device
        return "-"
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {int(seconds) % 60:02d}s"


def _table(value: object) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one: a part of the status missing or malformed."""
    return value if isinstance(value, dict) else {}


def status_row(status: Mapping[str, Any]) -> tuple[str, str, str, str, str]:
    """model, pose fps, mqtt, camera, uptime of one ``/api/status`` snapshot (of any shape)."""
    model = status.get("model")
    mqtt = _table(status.get("mqtt"))
    pose = _table(_table(status.get("stages")).get("pose"))
    return (
        f"{model.get('id')} {model.get('version')}" if isinstance(model, dict) else "none",
        f"{pose['fps']:g}" if isinstance(pose.get("fps"), int | float) else "-",
        "connected" if mqtt.get("connected") else ("disconnected" if mqtt.get("enabled", True) else "off"),
        str(_table(status.get("camera")).get("state", "-")),
        _uptime(status["uptime_s"]) if isinstance(status.get("uptime_s"), int | float) else "-",
    )


def _token_if_any(entry: DeviceEntry) -> str | None:
    """The device's token when it is at hand; ``status`` goes on without it (a 401 then says so)."""
    try:
        return token_for(entry, os.environ)
    except UsageError:
        return None


_STATUS_FAILURES: dict[type[Exception], str] = {
    PinMismatch: "untrusted",
    Unreachable: "unreachable",
    Refused: "refused",
    BadAnswer: "bad answer",
}


def run_status(args: argparse.Namespace) -> int:
    devices = devices_for(args)
    policy = RetryPolicy(attempts=2, request_timeout_s=args.timeout)
    header = ("device", "model", "pose fps", "mqtt", "camera", "uptime")

    def task(entry: DeviceEntry) -> tuple[tuple[str, ...], bool]:
        """The device's row and whether it answered."""
        api = DeviceApi(entry, _token_if_any(entry))
        deadline = time.monotonic() + policy.attempts * args.timeout + policy.first_delay_s
        try:
            status = with_retries(
                lambda _attempt, timeout: api.status(timeout), policy, deadline, args.timeout
            )
        except (PinMismatch, Unreachable, Refused, BadAnswer) as exc:
            return (entry.name, f"{_STATUS_FAILURES[type(exc)]}: {exc}", *("-",) * (len(header) - 2)), False
        return (entry.name, *status_row(status)), True

    rows = for_each_device(devices, task, args.parallel)
    print(render_table(header, [row for row, _ in rows]))
    return ExitStatus.OK if all(answered for _, answered in rows) else ExitStatus.FAILED
