"""Model delivery to a fleet of kiosks: the inventory, parallel pushes with retries, fleet status.

The workstation talks to each kiosk only through its HTTP API (DESIGN.md §6): ``POST /api/models``
with the bundle and the device's bearer token, then ``GET /api/status`` until the device reports
the new version active. The device verifies the bundle and decides; this side only needs the
manifest's identity (model id, version, model sha256) to know what to wait for.

The token goes only to the kiosk ``fleet.toml`` pins (:mod:`provisioning.pinning`): plain HTTP
beyond loopback is refused before anything is contacted unless ``--insecure``. What a kiosk
answers is not trusted either: at most :data:`MAX_ANSWER_BYTES` are read, anything but a JSON
object is a :class:`BadAnswer`, and every text it sent is printed escaped (:func:`printable`).

Every device gets its own worker and its own deadline, so one slow or dead kiosk costs only its
own row of the result table. Network failures (refused, reset, timed out) and 5xx answers are
retried with exponential backoff a bounded number of times; a 4xx is the device's answer and is
never retried. A retried upload first asks whether the device already runs the version (an
upload whose answer was lost may have succeeded), so a retry never turns success into a refusal.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import socket
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from device.cli import Command, ExitStatus, UsageError
from device.config import DEVICE_ID
from device.documents import read_document
from device.model.bundle import MANIFEST, MAX_MANIFEST_SIZE
from provisioning import registry
from provisioning.pinning import PinMismatch, PinnedHTTPSConnection
from trainer import tracking
from trainer.cluster import is_loopback

T = TypeVar("T")

DEVICE_NAME = DEVICE_ID
"""A fleet name is also the device id in MQTT topics (device.config's ``device.id`` pattern)."""

_POLL_INTERVAL_S = 0.5


# --------------------------------------------------------------------------- the inventory


class DeviceEntry(BaseModel):
    """One ``[[device]]`` of fleet.toml; the token comes from exactly one of an env var or a file.

    ``fingerprint`` pins an ``https://`` kiosk's certificate (:mod:`provisioning.pinning`); it is
    accepted as ``openssl x509 -fingerprint -sha256`` prints it too (upper case, colons).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=DEVICE_NAME)
    url: str
    fingerprint: str | None = None
    token_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    token_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
        except ValueError:
            raise ValueError("the port must be a number between 0 and 65535") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("must be the device's base URL, such as https://kiosk-1.local:8080")
        return value.rstrip("/")

    @field_validator("fingerprint")
    @classmethod
    def _sha256_hex(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digest = value.replace(":", "").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError("must be the SHA-256 of the kiosk's certificate: 64 hex digits")
        return digest

    @model_validator(mode="after")
    def _consistent(self) -> DeviceEntry:
        if (self.token_env is None) == (self.token_file is None):
            raise ValueError("give exactly one of token_env or token_file")
        if self.fingerprint is not None and not self.url.startswith("https://"):
            raise ValueError("fingerprint pins a certificate: the url must be https://")
        return self

    @property
    def plain_http_beyond_loopback(self) -> bool:
        """Whether talking to it would put the token on the network readable by anyone."""
        parts = urlsplit(self.url)
        return parts.scheme == "http" and not is_loopback(parts.hostname or "")


class Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device: list[DeviceEntry] = Field(min_length=1)

    @field_validator("device")
    @classmethod
    def _unique_names(cls, devices: list[DeviceEntry]) -> list[DeviceEntry]:
        seen: set[str] = set()
        for entry in devices:
            if entry.name in seen:
                raise ValueError(f"name {entry.name!r} appears more than once")
            seen.add(entry.name)
        return devices


def _describe(error: Mapping[str, Any], raw: Mapping[str, Any]) -> str:
    """One pydantic error as ``device 2 ('kiosk-2'): token_env: <what is wrong>``."""
    loc = list(error["loc"])
    where = []
    if loc[:1] == ["device"] and len(loc) > 1 and isinstance(loc[1], int):
        index = loc[1]
        entries = raw.get("device")
        name = (
            entries[index].get("name")
            if isinstance(entries, list) and isinstance(entries[index], dict)
            else None
        )
        where.append(f"device {index + 1}" + (f" ({name!r})" if isinstance(name, str) else ""))
        loc = loc[2:]
    where += [".".join(str(part) for part in loc)] if loc else []
    kind = error["type"]
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "required" + (" (at least one [[device]] table)" if loc == ["device"] else "")
    elif kind == "list_type":
        message = "must be an array of tables: [[device]]"
    else:
        message = error["msg"].removeprefix("Value error, ")
        if "input" in error and not isinstance(error["input"], dict | list):
            message += f" (got {error['input']!r})"
    return ": ".join([*where, message])


def load_fleet(path: Path) -> list[DeviceEntry]:
    """Read and validate fleet.toml; ``token_file`` paths become absolute, relative to the file."""
    raw = read_document(path, "TOML", UsageError)
    try:
        inventory = Inventory.model_validate(raw)
    except ValidationError as exc:
        raise UsageError(f"{path}: " + "; ".join(_describe(e, raw) for e in exc.errors())) from None
    base = path.resolve().parent
    return [
        entry.model_copy(update={"token_file": base / entry.token_file}) if entry.token_file else entry
        for entry in inventory.device
    ]


def select(devices: list[DeviceEntry], names: Sequence[str] | None) -> list[DeviceEntry]:
    """The devices named by ``--device`` (all when none is given), in inventory order."""
    if not names:
        return devices
    known = {entry.name for entry in devices}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(f"--device {unknown[0]}: not in the fleet file (known: {', '.join(sorted(known))})")
    return [entry for entry in devices if entry.name in names]


def refuse_plain_http(devices: Sequence[DeviceEntry], insecure: bool) -> None:
    """A usage error, before anything is contacted, for ``http://`` beyond loopback without ``--insecure``."""
    if insecure:
        return
    exposed = next((entry for entry in devices if entry.plain_http_beyond_loopback), None)
    if exposed is not None:
        raise UsageError(
            f"device {exposed.name}: {exposed.url} is plain HTTP beyond this machine, so its token "
            "would cross the network readable; use its https:// url and fingerprint (init-device "
            "writes both), or give --insecure"
        )


def token_for(entry: DeviceEntry, env: Mapping[str, str]) -> str:
    """The device's bearer token from its environment variable or file; a usage error if absent."""
    if entry.token_env is not None:
        token = env.get(entry.token_env, "").strip()
        if not token:
            raise UsageError(f"device {entry.name}: environment variable {entry.token_env} is not set")
        return token
    assert entry.token_file is not None  # the model guarantees one source
    try:
        token = entry.token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"device {entry.name}: token_file {entry.token_file}: {exc.strerror}") from exc
    if not token:
        raise UsageError(f"device {entry.name}: token_file {entry.token_file} is empty")
    return token


# --------------------------------------------------------------------------- the bundle


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


# --------------------------------------------------------------------------- HTTP to one device


class Unreachable(Exception):
    """The request got no answer from the application: network failure, timeout or a 5xx."""


class BadAnswer(Exception):
    """The device answered outside the API (not a JSON object, or too large); never retried."""


class Refused(Exception):
    """The device answered with a 4xx (or a 501): its decision, never retried."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded attempts with exponential backoff; per-request socket timeouts."""

    attempts: int = 4
    first_delay_s: float = 0.5
    max_delay_s: float = 8.0
    request_timeout_s: float = 10.0
    upload_timeout_s: float = 60.0  # the device verifies, loads and smoke-tests before it answers

    def delay(self, attempt: int) -> float:
        return min(self.first_delay_s * 2 ** (attempt - 1), self.max_delay_s)


def _why(reason: BaseException) -> str:
    """A short human reason for a network failure."""
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, ConnectionResetError | http.client.RemoteDisconnected | BrokenPipeError):
        return "connection reset"
    if isinstance(reason, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve the host name ({reason.strerror})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


MAX_ANSWER_BYTES = 1024 * 1024
"""The most this tool reads of any answer; ``/api/status`` is a few kilobytes."""

_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def _error_message(body: bytes) -> str:
    """The ``error`` of a JSON error body, else the body's text on one line."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return document["error"]
    text = body.decode("utf-8", "replace").split("(generated by")[0]  # waitress's error page footer
    return ": ".join(line.strip() for line in text.splitlines() if line.strip())[:300] or "(no message)"


class DeviceApi:
    """The kiosk's HTTP API; every call is one request with a socket timeout, nothing retried here.

    http.client rather than urllib: a kiosk refusing an upload from its headers (413, 401)
    answers and closes before it has read the body, so sending fails with a reset while the
    answer is already waiting to be read; urllib would only report the reset. It also connects
    lazily inside ``request()``, which is where :class:`~provisioning.pinning.PinnedHTTPSConnection`
    checks the certificate before the request is written.

    An answer is read up to :data:`MAX_ANSWER_BYTES`: a device that sends more is refused
    (:class:`BadAnswer`) instead of filling this process's memory.
    """

    def __init__(self, entry: DeviceEntry, token: str | None = None) -> None:
        self.url = entry.url
        self._parts = urlsplit(entry.url)
        self._fingerprint = entry.fingerprint
        self._token = token

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        host, port = self._parts.hostname or "", self._parts.port
        if self._parts.scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=timeout)
        if self._fingerprint is not None:
            return PinnedHTTPSConnection(host, port, self._fingerprint, timeout)
        return http.client.HTTPSConnection(host, port, timeout=timeout)  # the system's CAs

    def _call(self, method: str, path: str, timeout: float, body: bytes | None = None) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/zip"
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        connection = self._connection(timeout)
        try:
            sending: OSError | None = None
            try:
                connection.request(method, self._parts.path + path, body=body, headers=headers)
            except (BrokenPipeError, ConnectionResetError) as exc:
                sending = exc  # the device may have answered early; read what it said
            try:
                response = connection.getresponse()
                status, payload = response.status, response.read(MAX_ANSWER_BYTES + 1)
            except (OSError, http.client.HTTPException) as exc:
                raise Unreachable(_why(sending or exc)) from None
        except OSError as exc:  # connecting: refused, unreachable, timed out, name not known
            raise Unreachable(_why(exc)) from None
        finally:
            connection.close()
        if len(payload) > MAX_ANSWER_BYTES:
            raise BadAnswer(f"{method} {path}: the answer is larger than {MAX_ANSWER_BYTES // 1024} KiB")
        if status >= 500 and status != 501:  # 501: no model store there; retrying will not add one
            raise Unreachable(f"HTTP {status}: {_error_message(payload)}")
        if status >= 300:
            raise Refused(status, _error_message(payload))
        try:
            document = json.loads(payload)
        except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deep, a huge number
            raise BadAnswer(f"{method} {path}: the answer is not JSON") from None
        if not isinstance(document, dict):
            kind = _JSON_KINDS.get(type(document), type(document).__name__)
            raise BadAnswer(f"{method} {path}: the answer is a JSON {kind}, not an object")
        return document

    def status(self, timeout: float) -> dict[str, Any]:
        return self._call("GET", "/api/status", timeout)

    def upload(self, data: bytes, force: bool, timeout: float) -> dict[str, Any]:
        return self._call("POST", "/api/models" + ("?force=1" if force else ""), timeout, data)


def with_retries(
    call: Callable[[int, float], T],
    policy: RetryPolicy,
    deadline: float,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call(attempt, timeout)`` until it returns; :class:`Unreachable` is retried with backoff.

    Stops after ``policy.attempts`` or when the next attempt would start past ``deadline``; the
    final :class:`Unreachable` says how many attempts were made. :class:`Refused` passes through.
    """
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        try:
            return call(attempt, max(0.1, min(timeout, remaining)))
        except Unreachable as exc:
            delay = policy.delay(attempt)
            if attempt >= policy.attempts or time.monotonic() + delay >= deadline:
                noun = "attempt" if attempt == 1 else "attempts"
                raise Unreachable(f"{exc} ({attempt} {noun})") from None
            sleep(delay)


# --------------------------------------------------------------------------- push


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


def for_each_device(
    devices: Sequence[DeviceEntry],
    task: Callable[[DeviceEntry], T],
    parallel: int,
    on_done: Callable[[DeviceEntry, T], None] = lambda entry, value: None,
) -> list[T]:
    """Run ``task`` for every device on at most ``parallel`` threads; results in inventory order."""
    results: dict[str, T] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, min(parallel, len(devices))), thread_name_prefix="fleet")
    try:
        futures = {pool.submit(task, entry): entry for entry in devices}
        for future in as_completed(futures):
            entry = futures[future]
            results[entry.name] = future.result()
            on_done(entry, results[entry.name])
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # on Ctrl-C: start no further device
    return [results[entry.name] for entry in devices]


MAX_CELL = 300
"""Characters of one printed value; a device's texts (model id, error) may be as long as it likes."""


def printable(text: object, limit: int = MAX_CELL) -> str:
    """``text`` safe for a terminal, on one line: control and format characters (escape sequences,
    newlines, bidirectional overrides) are shown escaped, as ``\\x1b``, and long text is cut."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def render_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded.

    Every cell goes through :func:`printable`: most of them are what a device said.
    """
    shown = [[printable(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in shown) for i in range(len(header))]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in shown)
    return "\n".join(line.rstrip() for line in lines)


# --------------------------------------------------------------------------- commands


def _fleet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fleet", type=Path, required=True, metavar="FILE", help="the inventory (fleet.toml)"
    )
    parser.add_argument(
        "--device", action="append", metavar="NAME", help="only this device (repeatable; default: all)"
    )
    parser.add_argument(
        "--parallel", type=_positive_int, default=8, metavar="N", help="devices handled at once (default 8)"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow http:// urls beyond loopback (the token then crosses the network readable)",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


PUSH_DESCRIPTION = """\
Upload a signed model bundle to every device of the inventory (or those named by --device) at
once, wait until each reports the new version active, and print one row per device:
  ok            the device runs the new version
  rejected      the device refused the bundle; the detail is its reason (signature, hash, smoke
                test, older version without --force, too large); it keeps its previous model
  unauthorized  wrong token, or the device has no token configured
  untrusted     its certificate is not the one fleet.toml pins: nothing was sent to it
  unreachable   no answer after the retries (connection refused/reset, timeouts, HTTP 5xx)
  timeout       the device accepted the upload but did not report the version within --timeout
  failed        an answer outside the API (404, not a JSON object, larger than 1 MiB)
Network failures and 5xx are retried with exponential backoff; a refusal (4xx) is never retried.
Exit status: 0 when every device is ok, 1 when any is not, 2 for a usage error (bad fleet file,
missing bundle, a token's environment variable unset, http:// beyond loopback without --insecure).

Transport: an https:// url with a fingerprint is a pinned kiosk: the TLS handshake is completed,
the certificate's SHA-256 compared with the fingerprint, and only then is the request (and its
token) written. https:// without a fingerprint is checked against the system's CAs and the host
name. http:// is for loopback; beyond it, only with --insecure.

BUNDLE may be a registered model version (optional extra: pip install .[mlflow]):
models:/NAME@ALIAS or models:/NAME/VERSION in the MLflow store of --tracking-uri (default
$MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db, where `trainer train --mlflow` registers). The
bundle is downloaded and checked against the version's sha256, model id and version tags before
anything is uploaded. --promote ALIAS then moves ALIAS to that version, only if every device is ok.

Examples:
  python -m provisioning push model.zip --fleet fleet.toml
  python -m provisioning push model.zip --fleet fleet.toml --device kiosk-1 --device kiosk-2
  KIOSK1_TOKEN=... python -m provisioning push old.zip --fleet fleet.toml --force   # a downgrade
  python -m provisioning push models:/poses@candidate --fleet fleet.toml --promote production
  python -m provisioning push models:/poses@production --fleet fleet.toml --device kiosk-3 \\
      --tracking-uri http://mlflow.lan:5000
"""


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "bundle",
        metavar="BUNDLE",
        help="signed bundle from `python -m trainer export`, or models:/NAME@ALIAS from the MLflow registry",
    )
    _fleet_arguments(parser)
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=180.0,
        metavar="S",
        help="per device: seconds for upload, retries and activation (default 180)",
    )
    parser.add_argument(
        "--force", action="store_true", help="allow a downgrade; upload even if already active"
    )
    parser.add_argument(
        "--tracking-uri", metavar="URI", help="MLflow store of a models:/ BUNDLE (default: see above)"
    )
    parser.add_argument(
        "--promote", metavar="ALIAS", help="for a models:/ BUNDLE: move ALIAS to it when every device is ok"
    )


def _selected(args: argparse.Namespace) -> list[DeviceEntry]:
    """The devices to talk to, refused as a whole if one would get its token in clear."""
    devices = select(load_fleet(args.fleet), args.device)
    refuse_plain_http(devices, args.insecure)
    return devices


def run_push(args: argparse.Namespace) -> int:
    devices = _selected(args)
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


STATUS_DESCRIPTION = """\
Ask every device of the inventory (or those named by --device) for its status at once and print
one row per device: the active model, the pose stage's frames per second, the MQTT connection,
the camera's state and the daemon's uptime — or why it could not be reached, or what was wrong
with its answer. The device's token is sent when it is at hand (it also grants viewing, which a
kiosk serving beyond loopback asks for); http:// beyond loopback needs --insecure, as for push.
Exit status: 0 when every device answered, 1 when any did not, 2 for a usage error.

Examples:
  python -m provisioning status --fleet fleet.toml
  python -m provisioning status --fleet fleet.toml --device kiosk-1 --timeout 3
"""


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    _fleet_arguments(parser)
    parser.add_argument(
        "--timeout", type=_positive_float, default=5.0, metavar="S", help="per request (default 5)"
    )


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
    devices = _selected(args)
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


PUSH = Command("push a model bundle to the fleet", PUSH_DESCRIPTION, add_push_arguments, run_push)
STATUS = Command(
    "show each device's model, fps, MQTT and uptime", STATUS_DESCRIPTION, add_status_arguments, run_status
)
