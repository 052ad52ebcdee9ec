"""The desired model of a fleet group: a signed message a kiosk pulls over MQTT (issue 17).

The workstation publishes one retained QoS 1 message per group on
``<prefix>/fleet/<group>/model/desired`` (``python -m provisioning release``); every kiosk whose
``[fleet] groups`` names the group receives it when it connects, and again whenever it changes.
A kiosk needs no inbound port: the broker connection it already holds carries the instruction,
and the bundle comes inline or from an HTTPS URL it fetches itself (:mod:`device.fleet_pull`).

The message (at most :data:`MAX_MESSAGE_BYTES`)::

    {"body": "<the body: JSON text>", "signature": "<128 hex digits: Ed25519 over the body's UTF-8>"}

The body travels as a string so the signed bytes are exactly the bytes received: nothing of the
body is parsed before the signature verifies with one of the kiosk's trusted keys (every key is
tried, as for bundles) and that key is not revoked. The envelope is read with the strict JSON
reader first (size-limited, no duplicate keys). Then the body, with exactly these keys::

    kind            "movement-edge desired model" (no other signed document can pass for one)
    group           the group; must be the topic's (a message copied to another group's topic is refused)
    release         integer >= 1, rising with every release to the group: a kiosk refuses a lower one
                    than it accepted before (an old retained message replayed cannot roll it back)
    issued_at       ISO 8601 with offset, for people
    key_id          the signing key's id; must be the key that verified
    model_id, version   what the bundle's signed manifest must say
    sha256, size    of the bundle file, checked before the bundle is opened
    bundle | url    exactly one is not null: the bundle base64-encoded (at most
                    :data:`MAX_INLINE_BYTES` decoded), or an ``https://`` URL (``http://`` only to
                    loopback, for tests); no credentials in the URL (every subscriber reads it)
    canary_percent  1..100: the share of the group's kiosks that take this release (:func:`in_canary`)

Canary (chosen over a canary group, which ``groups`` also allows): a kiosk is in a release's canary
when a stable hash of (group, release, device id) falls under the share: deterministic, the same
on every restart, and nobody coordinates. ``promote`` republishes the same release with 100 %, so
the canary kiosks stay in and the rest join.

Every refusal is a :class:`~device.model.bundle.BundleError` naming the check: ``size``,
``message`` (envelope or body schema), ``signature``, ``revoked`` or ``group``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from device.model.bundle import MAX_BUNDLE_SIZE, SIGNATURE_SIZE, key_id, manifest_bytes_of, verify_signature
from device.model.fields import (
    HEX16,
    MODEL_ID,
    SHA256,
    BundleError,
    Invalid,
    int_field,
    parse_fields,
    parse_strict_json,
    text_field,
    timestamp_field,
    version_field,
)

KIND = "movement-edge desired model"
MAX_INLINE_BYTES = 256 * 1024
"""The largest bundle carried in the message itself; a larger one is fetched from a URL."""
MAX_MESSAGE_BYTES = 512 * 1024
"""An inline bundle base64-encoded (4/3 of :data:`MAX_INLINE_BYTES`) and a body of a few hundred bytes."""
MAX_URL_LENGTH = 2048
MAX_RELEASE = 2**53  # JSON numbers beyond this lose precision in other languages' readers
GROUP = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A group name: safe in an MQTT topic (no ``/``, ``+``, ``#``) and in file names."""
_SIGNATURE_HEX = re.compile(f"[0-9a-f]{{{2 * SIGNATURE_SIZE}}}")
_STEP = "message"
_SIGNATURE_NAME = "the desired model message's signature"
_LOOPBACK_NAMES = frozenset({"localhost"})


def desired_topic(prefix: str, group: str) -> str:
    """``<prefix>/fleet/<group>/model/desired``."""
    return f"{prefix}/fleet/{group}/model/desired"


@dataclass(frozen=True)
class Desired:
    """A verified desired-model message of one group."""

    group: str
    release: int
    issued_at: str
    signer: str
    model_id: str
    version: str
    sha256: str
    size: int
    bundle: bytes | None
    """The bundle itself when it travelled inline (not yet checked against ``sha256``)."""
    url: str | None
    canary_percent: int

    @property
    def label(self) -> str:
        return f"{self.model_id} {self.version}"

    def summary(self) -> dict[str, Any]:
        """What the kiosk reports of it (``/api/status`` and ``model/state``)."""
        return {
            "group": self.group,
            "release": self.release,
            "model_id": self.model_id,
            "version": self.version,
            "sha256": self.sha256,
            "canary_percent": self.canary_percent,
        }


def in_canary(device_id: str, group: str, release: int, percent: int) -> bool:
    """Whether ``device_id`` takes ``release`` of ``group`` at a canary share of ``percent``.

    The first 8 bytes of SHA-256 over ``group/release/device_id``, modulo 100, under the share:
    stable across restarts and machines, roughly ``percent`` % of any large fleet, and a new
    release draws a new canary (a kiosk is not always the guinea pig).
    """
    digest = hashlib.sha256(f"{group}/{release}/{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100 < percent


def _is_loopback(host: str) -> bool:
    """A loopback address or ``localhost`` as written; a name is never resolved (its answer can change)."""
    bare = host.strip("[]").lower().rstrip(".")
    if bare in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def check_url(value: Any) -> str:
    """An ``https://`` URL, or ``http://`` to loopback; no credentials, query allowed (presigned S3)."""
    text = text_field(value)
    if len(text) > MAX_URL_LENGTH:
        raise Invalid(f"longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise Invalid(f"not a URL ({exc})") from None
    if not parts.hostname or parts.scheme not in ("https", "http"):
        raise Invalid(f"{text!r} is not an https:// URL")
    if parts.username is not None or parts.password is not None:
        raise Invalid("must not carry credentials: every kiosk of the group reads the message")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise Invalid(f"{text!r}: plain http is allowed only to loopback; use https://")
    if any(not c.isprintable() or c.isspace() for c in text):
        raise Invalid("contains spaces or control characters")
    return text


def _inline(value: Any) -> bytes | None:
    if value is None:
        return None
    text = text_field(value)
    if len(text) > (MAX_INLINE_BYTES + 2) // 3 * 4:
        raise Invalid(f"more than {MAX_INLINE_BYTES} bytes; give the bundle as a url")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Invalid(f"not base64 ({exc})") from None


_BODY_FIELDS = {
    "kind": lambda v: text_field(v, choices=(KIND,)),
    "group": lambda v: text_field(v, GROUP),
    "release": lambda v: int_field(v, minimum=1, maximum=MAX_RELEASE),
    "issued_at": timestamp_field,
    "key_id": lambda v: text_field(v, HEX16),
    "model_id": lambda v: text_field(v, MODEL_ID),
    "version": version_field,
    "sha256": lambda v: text_field(v, SHA256),
    "size": lambda v: int_field(v, minimum=1, maximum=MAX_BUNDLE_SIZE),
    "bundle": _inline,
    "url": lambda v: None if v is None else check_url(v),
    "canary_percent": lambda v: int_field(v, minimum=1, maximum=100),
}


def read_desired(
    payload: bytes,
    group: str,
    trusted_keys: Iterable[Ed25519PublicKey],
    revoked: Collection[str] = frozenset(),
) -> Desired:
    """Verify and parse one message received on ``group``'s topic; BundleError names the failed check."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise BundleError("size", f"the message is larger than the limit of {MAX_MESSAGE_BYTES} bytes")
    envelope = parse_fields(
        parse_strict_json(payload, _STEP, "the message"),
        {"body": text_field, "signature": lambda v: text_field(v, _SIGNATURE_HEX)},
        _STEP,
    )
    try:
        body_bytes = envelope["body"].encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate written as \ud800 in the JSON string
        raise BundleError(_STEP, "body: not valid UTF-8 text") from None
    signer = verify_signature(body_bytes, bytes.fromhex(envelope["signature"]), trusted_keys, _SIGNATURE_NAME)
    if signer in revoked:
        raise BundleError(
            "revoked", f"signed by key {signer}, which the key revocation list in force revokes"
        )
    fields = parse_fields(parse_strict_json(body_bytes, _STEP, "the body"), _BODY_FIELDS, _STEP)
    if fields["key_id"] != signer:
        raise BundleError("signature", f"signed by key {signer}, but the body names {fields['key_id']}")
    if (fields["bundle"] is None) == (fields["url"] is None):
        raise BundleError(_STEP, "exactly one of bundle and url must be given")
    if fields["bundle"] is not None and len(fields["bundle"]) != fields["size"]:
        raise BundleError(_STEP, f"bundle: {len(fields['bundle'])} bytes, but size says {fields['size']}")
    if fields["group"] != group:
        raise BundleError(
            "group", f"the message is for group {fields['group']!r}, received on {group!r}'s topic"
        )
    return Desired(
        group=fields["group"],
        release=fields["release"],
        issued_at=fields["issued_at"],
        signer=signer,
        model_id=fields["model_id"],
        version=fields["version"],
        sha256=fields["sha256"],
        size=fields["size"],
        bundle=fields["bundle"],
        url=fields["url"],
        canary_percent=fields["canary_percent"],
    )


def sign_desired(body: Mapping[str, Any], private_key: Ed25519PrivateKey) -> bytes:
    """The message for ``body`` (every key but ``kind`` and ``key_id``, which are filled in), signed.

    It is read back with the kiosk's own :func:`read_desired` first, so the workstation cannot
    publish something every kiosk would refuse.
    """
    filled = {"kind": KIND, **body, "key_id": key_id(private_key)}
    text = manifest_bytes_of(filled).decode("utf-8")
    payload = manifest_bytes_of({"body": text, "signature": private_key.sign(text.encode("utf-8")).hex()})
    read_desired(payload, filled["group"], [private_key.public_key()])
    return payload


def encode_inline(bundle: bytes) -> str:
    """A bundle as the body's ``bundle`` value."""
    return base64.b64encode(bundle).decode("ascii")
