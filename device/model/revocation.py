"""Key revocation: a signed list of key ids whose bundles no kiosk accepts any more.

A signing key that leaks (a stolen laptop, a copied CI secret) lets anyone make bundles the whole
fleet runs. Rotation adds a new key to the kiosks; this list retires the old one, also on kiosks
that cannot be reached to have the old public key removed. A bundle signed by a revoked key is
refused at install and when a stored one is loaded again, at every start included.

The document (``revocations.json``), in the manner of TUF's metadata: the signed part is readable,
and the signature is over its canonical bytes (:func:`~device.model.bundle.manifest_bytes_of`)::

    {"signed": {"kind": "movement-edge key revocations", "serial": 2,
                "issued_at": "2026-05-01T10:00:00+00:00", "key_id": "<signer>",
                "revoked": ["<key id>", ...]},
     "signature": "<128 hex digits: the Ed25519 signature>"}

Rules, checked by :func:`read_revocations` and :func:`check_successor`:

* the signature verifies with a trusted key (``model.trusted_keys``; the code is bundle.py's),
  and ``key_id`` names that key;
* a list never revokes its own signer. A key may revoke any other trusted key — that is what
  rotation needs: the new key retires the old — but not itself, so the kiosk always keeps at least
  one key that can sign bundles and the next list;
* a key the list in force revokes cannot sign a newer list;
* the serial only rises: an older list cannot replace a newer one (a replayed old list would
  otherwise un-revoke a key), and the same serial is accepted again only with the same keys;
* revocation is permanent: a newer list keeps every key the list in force revokes. A key revoked
  by mistake is replaced by a new key, not brought back, so that one leaked key can never undo
  the revocation of another.

What it cannot do: whoever holds a trusted key can sign lists as well as bundles, so a thief
holding a key that is not yet revoked could revoke the good keys first. Revoke a leaked key at
once; a kiosk caught by that race needs its trusted keys and state replaced by provisioning.

Where lists come from on a kiosk (:class:`RevocationKeeper`): ``revocations.json`` beside each
trusted key file, read at start, and ``POST /api/keys/revocations``. The list in force is kept in
``<state_dir>/models/revocations.json`` (written whole, fsynced), since the folder of the keys is
read-only for the service.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from device.model.bundle import (
    SIGNATURE_SIZE,
    key_id,
    load_public_key,
    manifest_bytes_of,
    verify_signature,
    write_atomic,
)

# the manifest's value checks, shared within this package rather than written twice
from device.model.fields import (
    HEX16,
    BundleError,
    int_field,
    list_field,
    parse_fields,
    parse_strict_json,
    text_field,
    timestamp_field,
)

log = logging.getLogger("device.model.revocation")

FILE_NAME = "revocations.json"
KIND = "movement-edge key revocations"
MAX_LIST_SIZE = 1024 * 1024
"""About 40,000 key ids: far beyond any fleet's keys, small enough to read whole."""
_SIGNATURE_NAME = "the revocation list's signature"
_SIGNATURE_HEX = re.compile(f"[0-9a-f]{{{2 * SIGNATURE_SIZE}}}")
_STEP = "revocations"
_SIGNED_FIELDS = {
    "kind": lambda v: text_field(v, choices=(KIND,)),
    "serial": lambda v: int_field(v, minimum=1),
    "issued_at": timestamp_field,
    "key_id": lambda v: text_field(v, HEX16),
    "revoked": lambda v: list_field(v, lambda k: text_field(k, HEX16), unique=True),
}


class RevocationRejected(ValueError):
    """A revocation list refused; ``str()`` is ``"revocations: <why>"`` (the web API answers 422)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{_STEP}: {message}")
        self.message = message


@dataclass(frozen=True)
class RevocationList:
    """A list whose schema (and, on a kiosk, signature) checked out; ``document`` is its file."""

    serial: int
    issued_at: str
    signer: str
    revoked: frozenset[str]
    document: bytes


# --------------------------------------------------------------------------- reading and writing


def _envelope(data: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    """The signed part (not yet validated), its canonical bytes and the raw signature.

    BundleError names what is wrong.
    """
    if len(data) > MAX_LIST_SIZE:
        raise BundleError("size", f"the list is larger than the limit of {MAX_LIST_SIZE} bytes")
    document = parse_strict_json(data, _STEP, "the list")
    parts = parse_fields(
        document,
        {"signed": lambda v: v, "signature": lambda v: text_field(v, _SIGNATURE_HEX)},
        _STEP,
    )
    signed = parts["signed"]
    if not isinstance(signed, dict):
        raise BundleError(_STEP, f"signed: expected an object, got {type(signed).__name__}")
    try:  # what was signed: the signed part as the trainer wrote it
        canonical = manifest_bytes_of(signed)
    except RecursionError:  # parsed just below the parser's depth limit, past the encoder's
        raise BundleError(_STEP, "the list is nested too deeply") from None
    return signed, canonical, bytes.fromhex(parts["signature"])


def _rejected(exc: BundleError) -> RevocationRejected:
    """The check's own name kept (``signature: …``, ``size: …``), not said twice for the schema."""
    return RevocationRejected(exc.message if exc.step == _STEP else str(exc))


def _parsed(signed: dict[str, Any], document: bytes) -> RevocationList:
    fields = parse_fields(signed, _SIGNED_FIELDS, _STEP)
    return RevocationList(
        serial=fields["serial"],
        issued_at=fields["issued_at"],
        signer=fields["key_id"],
        revoked=frozenset(fields["revoked"]),
        document=document,
    )


def read_revocations(data: bytes, trusted_keys: Iterable[Ed25519PublicKey]) -> RevocationList:
    """A list as a kiosk admits it: size, JSON, signature by a trusted key, schema, no self-revocation.

    Raises :class:`RevocationRejected` with one line naming what failed.
    """
    try:
        signed, canonical, signature = _envelope(data)
        signer = verify_signature(canonical, signature, trusted_keys, _SIGNATURE_NAME)
        revocations = _parsed(signed, data)
    except BundleError as exc:
        raise _rejected(exc) from None
    if revocations.signer != signer:
        raise RevocationRejected(f"signed by key {signer}, but the list names {revocations.signer}")
    if signer in revocations.revoked:
        raise RevocationRejected(
            f"key {signer} cannot revoke itself: sign the list with another trusted key "
            "(python -m trainer keygen, then add its public key to the kiosks first)"
        )
    return revocations


def read_unverified(data: bytes) -> RevocationList:
    """A list's content without checking its signature: for the workstation extending its own file."""
    try:
        signed, _, _ = _envelope(data)
        return _parsed(signed, data)
    except BundleError as exc:
        raise _rejected(exc) from None


def build_revocations(revoked: Iterable[str], serial: int, private_key: Ed25519PrivateKey) -> bytes:
    """The signed list's bytes; refused (RevocationRejected) if a kiosk would refuse it."""
    signer = key_id(private_key)
    signed = {
        "kind": KIND,
        "serial": serial,
        "issued_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "key_id": signer,
        "revoked": sorted(set(revoked)),
    }
    signature = private_key.sign(manifest_bytes_of(signed))
    data = (json.dumps({"signed": signed, "signature": signature.hex()}, indent=2) + "\n").encode()
    read_revocations(data, [private_key.public_key()])  # the kiosk's own checks, before anyone sees it
    return data


def check_successor(current: RevocationList | None, new: RevocationList) -> bool:
    """Whether ``new`` replaces the list in force (True), is the same list again (False), or is
    refused (:class:`RevocationRejected`): serials only rise and revocations are permanent."""
    if current is None:
        return True
    if new.signer in current.revoked:
        raise RevocationRejected(
            f"signed by key {new.signer}, which the list in force (serial {current.serial}) revokes: "
            "a revoked key cannot sign a newer list"
        )
    if new.serial < current.serial or (new.serial == current.serial and new.revoked != current.revoked):
        raise RevocationRejected(
            f"serial {new.serial} is not newer than the list in force (serial {current.serial}): make "
            "the new list from the newest one (python -m trainer revoke-key … --out THAT_FILE)"
        )
    if new.serial == current.serial:
        return False
    dropped = sorted(current.revoked - new.revoked)
    if dropped:
        raise RevocationRejected(
            f"it no longer revokes {', '.join(dropped)}, which the list in force (serial "
            f"{current.serial}) revokes: a revocation is permanent; make the new list from the newest one"
        )
    return True


# --------------------------------------------------------------------------- on a kiosk


@dataclass(frozen=True)
class Accepted:
    """The answer to a list delivered over the API."""

    revocations: RevocationList
    changed: bool

    def as_dict(self) -> dict[str, Any]:
        now = self.revocations
        verb = "is now in force" if self.changed else "was already in force; nothing changed"
        return {
            "serial": now.serial,
            "signer": now.signer,
            "revoked": sorted(now.revoked),
            "changed": self.changed,
            "detail": f"key revocation list serial {now.serial} {verb} ({len(now.revoked)} key(s) revoked)",
        }


def beside_keys(trusted_keys: Sequence[Path]) -> list[Path]:
    """``revocations.json`` in each folder that holds a trusted key, each folder once."""
    return list(dict.fromkeys(Path(key).parent / FILE_NAME for key in trusted_keys))


def loadable_keys(trusted_keys: Sequence[Path]) -> list[Ed25519PublicKey]:
    """The trusted keys that load; one that does not is reported where bundles are verified."""
    keys = []
    for path in trusted_keys:
        try:
            keys.append(load_public_key(path))
        except BundleError:
            continue
    return keys


def newest_beside(trusted_keys: Sequence[Path]) -> RevocationList | None:
    """The newest valid list beside the trusted keys (for checks outside a kiosk's store)."""
    keeper = RevocationKeeper(None, trusted_keys)
    return keeper.in_force


class RevocationKeeper:
    """The list in force: loaded at start from the kiosk's state and the files beside its keys.

    ``state`` is where an accepted list is kept (None: nothing is stored, as for replay). A list
    that is unreadable, badly signed or older than the one in force is logged and ignored: the
    kiosk starts all the same, with the newest list it can verify. Not thread-safe: the model
    store calls it under its change lock.
    """

    def __init__(self, state: Path | None, trusted_keys: Sequence[Path]) -> None:
        self.state = state
        self.trusted_keys = tuple(Path(key) for key in trusted_keys)
        self.in_force: RevocationList | None = None
        self.problems: list[str] = []
        """One line per list ignored at start, for the log and the operator."""
        keys = loadable_keys(self.trusted_keys)
        if state is not None and state.exists():
            self._load(state, keys, stored=True)
        for path in beside_keys(self.trusted_keys):
            if path.exists():
                self._load(path, keys, stored=False)

    @property
    def revoked(self) -> frozenset[str]:
        return frozenset() if self.in_force is None else self.in_force.revoked

    def accept(self, data: bytes) -> Accepted:
        """A list delivered over the API: admitted, checked against the one in force, kept.

        A list that cannot be stored is still honoured until the next start (it only refuses
        more), and the refusal says so.
        """
        revocations = read_revocations(data, loadable_keys(self.trusted_keys))
        changed = check_successor(self.in_force, revocations)
        if changed:
            self.in_force = revocations
            problem = self._store(revocations)
            if problem:
                raise RevocationRejected(
                    f"in force until the next start only: {problem}; put it beside the trusted keys too"
                )
        log.info("key revocation list accepted", extra={"serial": revocations.serial, "changed": changed})
        return Accepted(revocations, changed)

    def _load(self, path: Path, keys: list[Ed25519PublicKey], stored: bool) -> None:
        try:
            data = path.read_bytes()[: MAX_LIST_SIZE + 1]
            revocations = read_revocations(data, keys)
            if check_successor(self.in_force, revocations):
                self.in_force = revocations
                problem = None if stored else self._store(revocations)
                if problem:  # read again from beside the keys at every start: nothing is lost
                    log.warning("key revocation list not stored", extra={"reason": problem})
        except (OSError, RevocationRejected) as exc:
            reason = f"{path}: {exc.strerror if isinstance(exc, OSError) else exc}"
            if stored:  # damaged, or no longer verifiable with the trusted keys: kept for inspection
                reason += f" (moved aside as {self._move_aside(path).name})"
            self.problems.append(reason)
            log.error("key revocation list ignored", extra={"reason": reason})

    def _store(self, revocations: RevocationList) -> str | None:
        """Keep the list in force under the state folder; the reason when that fails."""
        if self.state is None:
            return None
        try:
            write_atomic(self.state, revocations.document, durable=True)
        except OSError as exc:
            return f"{self.state}: cannot store the list ({exc.strerror})"
        return None

    @staticmethod
    def _move_aside(path: Path) -> Path:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        try:
            path.rename(aside)
        except OSError:
            return path
        return aside
