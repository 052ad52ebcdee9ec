"""``push``: upload a signed bundle to kiosks at once and wait until each runs it.

``POST /api/models`` with the bundle and the device's bearer token, then ``GET /api/status`` until
the device reports the new version active. The device verifies the bundle and decides; this side
only needs the manifest's identity (model id, version, model sha256) to know what to wait for. A
retried upload first asks whether the device already runs the version (an upload whose answer was
lost may have succeeded), so a retry never turns success into a refusal. ``models:/`` URIs are
resolved in the MLflow registry (:mod:`provisioning.registry`, imported only for them).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from device.cli import ExitStatus, UsageError
from device.model.bundle import MANIFEST, MAX_MANIFEST_SIZE
from provisioning import registry
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
from provisioning.terminal import printable, render_table
from trainer import tracking

_POLL_INTERVAL_S = 0.5


@dataclass(frozen=True)
class BundleFile:
    """A bundle's bytes and the identity its manifest claims (the device verifies the rest)."""

    path: Path
    data: bytes
    model_id: str
    version: str
    sha256: str

    @property
    def label(self) -> str:
        return f"{self.model_id} {self.version}"


def read_bundle(path: Path) -> BundleFile:
    """Read a bundle file; refuse anything that is not a zip holding a manifest with an identity."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            info = archive.getinfo(MANIFEST)
            if info.file_size > MAX_MANIFEST_SIZE:
                raise UsageError(f"{path}: {MANIFEST} is larger than {MAX_MANIFEST_SIZE} bytes")
            manifest = json.loads(archive.read(info))
    except zipfile.BadZipFile:
        raise UsageError(f"{path}: not a zip file (a bundle from `python -m trainer export`)") from None
    except KeyError:
        raise UsageError(f"{path}: no {MANIFEST} in the zip; not a model bundle") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: {MANIFEST} is not valid JSON ({exc})") from None
    identity = {
        key: manifest.get(key) if isinstance(manifest, dict) else None
        for key in ("model_id", "version", "sha256")
    }
    missing = [key for key, value in identity.items() if not isinstance(value, str) or not value]
    if missing:
        raise UsageError(f"{path}: {MANIFEST} has no {missing[0]}")
    return BundleFile(path, data, **identity)


class Result(StrEnum):
    OK = "ok"
    REJECTED = "rejected"
    UNAUTHORIZED = "unauthorized"
    UNTRUSTED = "untrusted"  # the certificate is not the pinned one: nothing was sent
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    FAILED = "failed"  # an answer outside the contract (e.g. 404, 501, a JSON array): cannot take models


@dataclass(frozen=True)
class Outcome:
    device: str
    result: Result
    detail: str


def _running(status: Mapping[str, Any], bundle: BundleFile) -> bool:
    model = status.get("model")
    return isinstance(model, dict) and (model.get("id"), model.get("version"), model.get("sha256")) == (
        bundle.model_id,
        bundle.version,
        bundle.sha256,
    )


def _refusal(exc: Refused, bundle: BundleFile) -> tuple[Result, str]:
    """Map the device's 4xx to a result: its words are the detail."""
    if exc.status in (401, 403):
        return Result.UNAUTHORIZED, exc.message
    if exc.status == 413:
        return Result.REJECTED, f"{exc.message} (the bundle: {len(bundle.data) / 1024 / 1024:.1f} MB)"
    if exc.status == 422:
        return Result.REJECTED, exc.message
    return Result.FAILED, str(exc)


def push_one(
    api: DeviceApi, bundle: BundleFile, *, force: bool, timeout_s: float, policy: RetryPolicy
) -> tuple[Result, str]:
    """Upload ``bundle`` to one device and wait until it reports the version active."""
    began = time.monotonic()
    deadline = began + timeout_s

    def upload(attempt: int, request_timeout: float) -> bool:
        """True when this call installed it, False when the device already ran it."""
        # Before a retry (and before the first try unless forced): an upload whose answer was lost
        # may have been installed; uploading again could then be refused as a duplicate.
        asked = min(policy.request_timeout_s, request_timeout)
        if (attempt > 1 or not force) and _running(api.status(asked), bundle):
            return False
        api.upload(bundle.data, force, request_timeout)
        return True

    try:
        installed = with_retries(upload, policy, deadline, policy.upload_timeout_s)
        if not installed:
            return Result.OK, f"{bundle.label} was already active"
        return _wait_until_active(api, bundle, began, deadline, policy)
    except PinMismatch as exc:
        return Result.UNTRUSTED, str(exc)
    except Unreachable as exc:
        return Result.UNREACHABLE, str(exc)
    except Refused as exc:
        return _refusal(exc, bundle)
    except BadAnswer as exc:
        return Result.FAILED, str(exc)


def _wait_until_active(
    api: DeviceApi, bundle: BundleFile, began: float, deadline: float, policy: RetryPolicy
) -> tuple[Result, str]:
    """Poll the status until it reports ``bundle`` active; network failures and refusals are
    waited out (the device may be restarting its pipeline), any other answer ends the wait."""
    reported = "no answer"
    while True:
        try:
            status = api.status(max(0.1, min(policy.request_timeout_s, deadline - time.monotonic())))
        except (Unreachable, Refused) as exc:
            reported = str(exc)
        else:
            if _running(status, bundle):
                return Result.OK, f"{bundle.label} active after {time.monotonic() - began:.1f} s"
            model = status.get("model")
            reported = "reports " + (
                f"{model.get('id')} {model.get('version')}" if isinstance(model, dict) else "no model"
            )
        if time.monotonic() + _POLL_INTERVAL_S >= deadline:
            return Result.TIMEOUT, f"{bundle.label} not active within {deadline - began:g} s ({reported})"
        time.sleep(_POLL_INTERVAL_S)


def run_push(args: argparse.Namespace) -> int:
    devices = devices_for(args)
    if not registry.is_model_uri(args.bundle):
        for option, value in (("--tracking-uri", args.tracking_uri), ("--promote", args.promote)):
            if value is not None:
                raise UsageError(f"{option} needs a registered bundle (models:/NAME@ALIAS)")
        bundle = read_bundle(Path(args.bundle))
        return push_bundle(args, devices, _tokens(devices), bundle)
    tokens = _tokens(devices)
    alias = tracking.check_alias(args.promote, "--promote") if args.promote else None
    with tempfile.TemporaryDirectory(prefix="movement-edge-push-") as work:
        registered = registry.fetch(args.bundle, tracking.tracking_uri(args.tracking_uri), Path(work))
        bundle = read_bundle(registered.path)
        registered.check_identity(bundle.model_id, bundle.version)
        print(
            f"{args.bundle} is version {registered.version} of {registered.name}: {bundle.label}, "
            "sha256 as registered",
            file=sys.stderr,
        )
        status = push_bundle(args, devices, tokens, bundle)
    if alias is not None:
        if status == ExitStatus.OK:
            print(registry.promote(registered, alias), file=sys.stderr)
        else:
            print(
                f"models:/{registered.name}@{alias} not moved: not every device runs {bundle.label}",
                file=sys.stderr,
            )
    return status


def _tokens(devices: Sequence[DeviceEntry]) -> dict[str, str]:
    """Every selected device's token, all checked before any upload."""
    return {entry.name: token_for(entry, os.environ) for entry in devices}


def push_bundle(
    args: argparse.Namespace, devices: Sequence[DeviceEntry], tokens: Mapping[str, str], bundle: BundleFile
) -> int:
    """Push ``bundle`` to ``devices`` at once and print the table; 0 when every device is ok."""
    policy = RetryPolicy()
    print(f"pushing {bundle.label} ({len(bundle.data)} bytes) to {len(devices)} device(s)", file=sys.stderr)

    def task(entry: DeviceEntry) -> Outcome:
        api = DeviceApi(entry, tokens[entry.name])
        result, detail = push_one(api, bundle, force=args.force, timeout_s=args.timeout, policy=policy)
        return Outcome(entry.name, result, detail)

    def progress(entry: DeviceEntry, outcome: Outcome) -> None:
        print(printable(f"{entry.name}: {outcome.result} {outcome.detail}".rstrip()), file=sys.stderr)

    outcomes = for_each_device(devices, task, args.parallel, progress)
    print(render_table(("device", "result", "detail"), [(o.device, o.result, o.detail) for o in outcomes]))
    return ExitStatus.OK if all(o.result is Result.OK for o in outcomes) else ExitStatus.FAILED
