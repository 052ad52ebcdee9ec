"""The fleet's inventory, fleet.toml: which kiosks there are, where, and how to prove who we are.

Each ``[[device]]`` names a kiosk (its name is also its device id in MQTT topics), its base URL,
the SHA-256 of its certificate that ``push`` and ``status`` pin (:mod:`provisioning.pinning`) and
where its device token is (an environment variable or a file). A token goes only to the kiosk it
belongs to, and never in clear beyond loopback: :func:`devices_for` refuses such an inventory as a
whole before anything is contacted unless ``--insecure``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from device.cli import UsageError
from device.config import DEVICE_ID
from device.documents import read_document
from trainer.cluster import is_loopback

DEVICE_NAME = DEVICE_ID
"""A fleet name is also the device id in MQTT topics (device.config's ``device.id`` pattern)."""


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


def devices_for(args: argparse.Namespace) -> list[DeviceEntry]:
    """The devices ``--fleet``/``--device`` name, refused as a whole if one would get its token in clear."""
    devices = select(load_fleet(args.fleet), args.device)
    refuse_plain_http(devices, args.insecure)
    return devices
