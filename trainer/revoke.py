"""``python -m trainer revoke-key``: sign the list of key ids kiosks must no longer accept bundles from.

The list is one file that grows: each run reads the list at ``--out`` (when there is one), adds
the keys, raises the serial by one and signs it again, because a kiosk accepts only a list newer
than the one it holds that still revokes every key that one revokes (:mod:`device.model.revocation`).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from device.cli import Command, ExitStatus, UsageError
from device.model.bundle import BundleError, key_id, load_private_key, load_public_key, write_atomic
from device.model.revocation import RevocationRejected, build_revocations, read_unverified

_KEY_ID = re.compile(r"[0-9a-f]{16}")

DESCRIPTION = """\
Revoke signing keys: write a revocation list, signed with another trusted key, that makes every
kiosk refuse bundles signed by the revoked keys — at install, and at start for a model already
installed. If --out exists it is the list to extend: its keys stay revoked and its serial rises by
one (a kiosk refuses a list that is not newer than its own, or that drops a revoked key).
A key cannot revoke itself: sign with the new key after rotating (see the README, key rotation).

Deliver the list to each kiosk beside its trusted keys (as revocations.json, read at start), or at
once by POSTing it with the device token ($KIOSK is the kiosk's base URL):
  curl -H "Authorization: Bearer $TOKEN" --data-binary @revocations.json $KIOSK/api/keys/revocations

Examples:
  python -m trainer revoke-key 51936a523525bb3f --key new/signing.key --out revocations.json
  python -m trainer revoke-key old/signing.pub --key new/signing.key --out revocations.json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "keys", nargs="+", metavar="KEY", help="key id (16 hex digits, as keygen prints) or public key file"
    )
    parser.add_argument(
        "--key", type=Path, required=True, metavar="FILE", help="private key signing the list (not revoked)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="the list to write; extended if it exists"
    )


def _key_id(text: str) -> str:
    """A key id as given, or the id of the public key file it names."""
    if _KEY_ID.fullmatch(text):
        return text
    path = Path(text)
    if not path.is_file():
        raise UsageError(f"KEY {text!r}: neither a key id (16 lowercase hex digits) nor a public key file")
    try:
        return key_id(load_public_key(path))
    except BundleError as exc:
        raise UsageError(f"KEY {exc.message}") from exc


def run(args: argparse.Namespace) -> int:
    revoked = {_key_id(text) for text in args.keys}
    try:
        signing = load_private_key(args.key)
    except BundleError as exc:
        raise UsageError(f"--key {exc.message}") from exc
    signer = key_id(signing)
    if signer in revoked:
        raise UsageError(f"--key {args.key} is key {signer}, which this list revokes: sign with another key")
    serial = 1
    if args.out.exists():
        try:
            previous = read_unverified(args.out.read_bytes())
        except (OSError, RevocationRejected) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else exc.message
            raise UsageError(f"--out {args.out}: cannot extend it ({reason}); give another file") from exc
        if signer in previous.revoked:
            raise UsageError(f"--key {args.key} is key {signer}, which {args.out} already revokes")
        revoked |= previous.revoked
        serial = previous.serial + 1
    data = build_revocations(revoked, serial, signing)
    try:
        write_atomic(args.out, data)
    except OSError as exc:
        raise UsageError(f"--out {args.out}: cannot write ({exc.strerror})") from exc
    print(f"wrote {args.out}: serial {serial}, revoking {', '.join(sorted(revoked))}; signed by key {signer}")
    return ExitStatus.OK


COMMAND = Command(
    description=DESCRIPTION,
    add_arguments=add_arguments,
    run=run,
)
