"""The desired-model message (device/model/desired.py): signed before anything in it is used, every
field checked, fuzzed as the bundle manifest is (tests/test_hostile_bundles.py).

A kiosk reads these messages from a broker anyone with broker credentials can publish to, so
``read_desired`` must admit a message or refuse it with a ``BundleError`` naming the check —
never raise anything else, whatever the bytes, including messages properly signed by the trusted
key whose body is hostile (the signature then verifies and the schema is what stands between the
bytes and the kiosk).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile_bundles import HOSTILE, paths
from test_hostile_files import JSON_VALUES

from device.model.bundle import BundleError, key_id, manifest_bytes_of
from device.model.desired import (
    KIND,
    MAX_INLINE_BYTES,
    MAX_MESSAGE_BYTES,
    Desired,
    desired_topic,
    encode_inline,
    in_canary,
    read_desired,
    sign_desired,
)

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
TRUSTED = [KEY.public_key()]
BUNDLE = b"PK\x03\x04 an opaque bundle: the message only carries it and names its hash"
BODY: dict[str, Any] = {
    "group": "lobby",
    "release": 7,
    "issued_at": "2026-12-02T12:00:00+00:00",
    "model_id": "poses",
    "version": "2.0.0",
    "sha256": hashlib.sha256(BUNDLE).hexdigest(),
    "size": len(BUNDLE),
    "bundle": encode_inline(BUNDLE),
    "url": None,
    "canary_percent": 100,
}
GOOD = sign_desired(BODY, KEY)
SIGNED_BODY: dict[str, Any] = json.loads(json.loads(GOOD)["body"])
STEPS = {"size", "message", "signature", "revoked", "group"}
MESSAGES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def envelope(body: Any, key: Ed25519PrivateKey = KEY) -> bytes:
    """A message whose body is ``body`` exactly (any JSON, as text), properly signed by ``key``."""
    text = body if isinstance(body, str) else json.dumps(body, indent=2)
    return json.dumps(
        {"body": text, "signature": key.sign(text.encode("utf-8", "surrogatepass")).hex()}
    ).encode()


def read(payload: bytes, group: str = "lobby") -> Desired | BundleError:
    try:
        return read_desired(payload, group, TRUSTED)
    except BundleError as exc:
        assert exc.step in STEPS and exc.message, exc
        return exc


def test_a_signed_message_reads_back_with_everything_it_names() -> None:
    desired = read_desired(GOOD, "lobby", TRUSTED)
    assert (desired.group, desired.release, desired.label, desired.bundle) == (
        "lobby",
        7,
        "poses 2.0.0",
        BUNDLE,
    )
    assert desired.signer == key_id(KEY) and desired.url is None and desired.canary_percent == 100
    assert SIGNED_BODY["kind"] == KIND and SIGNED_BODY["key_id"] == key_id(KEY)
    assert desired_topic("movement", "lobby") == "movement/fleet/lobby/model/desired"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"group": "hall"}, "group: the message is for group 'hall', received on 'lobby''s topic"),
        ({"group": "a/b"}, "message: group: 'a/b' does not match"),
        ({"release": 0}, "message: release: must be >= 1"),
        ({"release": 2**60}, "message: release: must be <= "),
        ({"release": "7"}, "message: release: expected an integer, got str"),
        ({"release": True}, "message: release: expected an integer, got bool"),
        (
            {"kind": "movement-edge key revocations"},
            "message: kind: 'movement-edge key revocations' is not one of",
        ),
        (
            {"key_id": key_id(OTHER)},
            f"signature: signed by key {key_id(KEY)}, but the body names {key_id(OTHER)}",
        ),
        ({"model_id": "../etc"}, "message: model_id: '../etc' does not match"),
        ({"version": "2.x"}, "message: version: '2.x' is not a dotted-integer version"),
        ({"sha256": "ab"}, "message: sha256: 'ab' does not match"),
        ({"size": 0}, "message: size: must be >= 1"),
        ({"size": 3}, f"message: bundle: {len(BUNDLE)} bytes, but size says 3"),
        ({"bundle": "not base64!"}, "message: bundle: not base64"),
        (
            {"bundle": "A" * ((MAX_INLINE_BYTES + 2) // 3 * 4 + 4)},
            f"message: bundle: more than {MAX_INLINE_BYTES} bytes",
        ),
        ({"bundle": None}, "message: exactly one of bundle and url must be given"),
        ({"url": "https://files.example.org/m.zip"}, "message: exactly one of bundle and url must be given"),
        (
            {"bundle": None, "url": "http://files.example.org/m.zip"},
            "message: url: 'http://files.example.org/m.zip': plain http",
        ),
        ({"bundle": None, "url": "ftp://x/m.zip"}, "message: url: 'ftp://x/m.zip' is not an https:// URL"),
        ({"bundle": None, "url": "https://user:pw@x/m.zip"}, "message: url: must not carry credentials"),
        ({"bundle": None, "url": "https://x:99999/m.zip"}, "message: url: not a URL"),
        ({"bundle": None, "url": "https://x/m zip"}, "message: url: contains spaces"),
        ({"canary_percent": 0}, "message: canary_percent: must be >= 1"),
        ({"canary_percent": 101}, "message: canary_percent: must be <= 100"),
        ({"issued_at": "yesterday"}, "message: issued_at: 'yesterday' is not an ISO 8601 time"),
        ({"extra": 1}, "message: unknown key 'extra'"),
    ],
)
def test_every_field_is_checked_and_the_refusal_names_it(change: dict[str, Any], message: str) -> None:
    result = read(envelope({**SIGNED_BODY, **change}))
    assert isinstance(result, BundleError) and str(result).startswith(message), result


@pytest.mark.parametrize(
    "url",
    [
        "https://files.example.org/models/poses.zip?X-Amz-Signature=ab",
        "http://127.0.0.1:8000/m.zip",
        "http://[::1]/m.zip",
        "http://localhost/m.zip",
    ],
)
def test_https_urls_and_loopback_http_are_accepted(url: str) -> None:
    result = read(envelope({**SIGNED_BODY, "bundle": None, "url": url}))
    assert isinstance(result, Desired) and result.url == url and result.bundle is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (envelope(SIGNED_BODY, OTHER), "signature: the desired model message's signature does not verify"),
        (GOOD.replace(b'\\"release\\": 7', b'\\"release\\": 8'), "signature: "),
        (json.dumps({"body": "{}", "signature": "00" * 64}).encode(), "signature: "),
        (json.dumps({"body": "{}"}).encode(), "message: missing key 'signature'"),
        (json.dumps({"body": "{}", "signature": "zz"}).encode(), "message: signature: 'zz' does not match"),
        (b'{"body": "a", "body": "b", "signature": ""}', "message: duplicate key 'body'"),
        (b"[" * 100_000, "message: the message is nested too deeply"),
        (b"\xff\xfe", "message: the message is not valid JSON"),
        (b" " * (MAX_MESSAGE_BYTES + 1), "size: the message is larger than the limit"),
    ],
)
def test_nothing_in_the_body_is_used_before_the_signature_verifies(payload: bytes, message: str) -> None:
    result = read(payload)
    assert isinstance(result, BundleError) and str(result).startswith(message), result


def test_a_message_signed_by_a_revoked_key_is_refused() -> None:
    with pytest.raises(BundleError, match="^revoked: signed by key"):
        read_desired(GOOD, "lobby", TRUSTED, revoked={key_id(KEY)})


def test_sign_desired_refuses_what_a_kiosk_would_refuse() -> None:
    with pytest.raises(BundleError, match="canary_percent: must be <= 100"):
        sign_desired({**BODY, "canary_percent": 150}, KEY)


def test_the_canary_is_stable_and_takes_about_its_share() -> None:
    devices = [f"kiosk-{i}" for i in range(4000)]
    for percent in (1, 10, 50):
        taken = [d for d in devices if in_canary(d, "lobby", 3, percent)]
        assert taken == [d for d in devices if in_canary(d, "lobby", 3, percent)]  # the same every time
        assert abs(len(taken) - 40 * percent) < 4 * (40 * percent) ** 0.5 + 5, (percent, len(taken))
        wider = {d for d in devices if in_canary(d, "lobby", 3, percent + 20)}
        assert set(taken) <= wider  # a larger share keeps the canary's kiosks
    assert all(in_canary(d, "lobby", 3, 100) for d in devices)
    next_release = {d for d in devices if in_canary(d, "lobby", 4, 10)}
    assert next_release != {d for d in devices if in_canary(d, "lobby", 3, 10)}  # a new canary each release


# --------------------------------------------------------------------------- fuzzing


@MESSAGES
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 50),
)
def test_mutated_message_bytes_are_refused_by_name(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(GOOD)
    for position, mask in flips:
        data[position % len(data)] ^= mask
    result = read(bytes(data[: len(data) - cut]))
    if isinstance(result, Desired):  # a flip JSON ignores (whitespace between the envelope's keys)
        assert result == read_desired(GOOD, "lobby", TRUSTED)


PLACES = paths(SIGNED_BODY)


@st.composite
def hostile_bodies(draw: st.DrawFn) -> Any:
    """The signed body with one to three fields changed, removed or given an unknown sibling."""
    document = json.loads(json.dumps(SIGNED_BODY))
    for _ in range(draw(st.integers(1, 3))):
        place = draw(st.sampled_from(PLACES))
        action = draw(st.sampled_from(["set", "set", "set", "remove", "add"]))
        if place[0] not in document:
            continue
        if action == "set":
            document[place[0]] = draw(st.one_of(HOSTILE, st.text(max_size=40)))
        elif action == "remove":
            del document[place[0]]
        else:
            document[draw(st.text(min_size=1, max_size=8))] = draw(HOSTILE)
    return document


@MESSAGES
@given(body=hostile_bodies(), nesting=st.sampled_from([0] * 9 + [50_000]))
def test_signed_hostile_bodies_are_refused_by_the_schema(body: Any, nesting: int) -> None:
    text = "[" * nesting + json.dumps(body, indent=2) + "]" * nesting
    result = read(envelope(text))
    if isinstance(result, Desired):
        assert result.release >= 1 and 1 <= result.canary_percent <= 100
        assert (result.bundle is None) != (result.url is None)
    else:
        assert result.step in {"message", "signature", "group"}, result


@settings(max_examples=200, deadline=None)
@given(body=st.one_of(st.text(max_size=200), JSON_VALUES.map(json.dumps)))
def test_signed_bodies_that_are_not_bodies_are_refused(body: str) -> None:
    result = read(envelope(body))
    assert isinstance(result, BundleError) and result.step == "message", result


@settings(max_examples=200, deadline=None)
@given(payload=st.one_of(st.binary(max_size=300), JSON_VALUES.map(lambda v: json.dumps(v).encode())))
def test_bytes_that_are_not_a_message_are_refused(payload: bytes) -> None:
    assert isinstance(read(payload), BundleError)


def test_the_canonical_body_is_what_was_signed() -> None:
    """The kiosk verifies the body's exact bytes: re-encoding it must not be needed (nor done)."""
    text = json.loads(GOOD)["body"]
    assert text.encode() == manifest_bytes_of(SIGNED_BODY)
    assert base64.b64decode(SIGNED_BODY["bundle"]) == BUNDLE
