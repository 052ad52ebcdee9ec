"""Hostile model bundles: ``open_bundle`` admits a bundle or refuses it with a ``BundleError``.

Three kinds of attack, each property-based (hypothesis): zip bytes mutated after writing (flipped
bytes, truncation, every compression method zipfile knows), manifests that are signed with the
trusted test key — so the signature check passes and the manifest schema is what stands between
the bytes and the device — with any value changed, removed or added anywhere in the document,
and arbitrary bytes as a signed manifest. The model file is opaque bytes here: ``open_bundle``
hashes it and never loads it (loading is the runtime's step, tested in test_bundle.py).
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_bundles import members, rezip
from test_hostile_files import JSON_VALUES

from device.features import FeatureEngine, FeatureSpec
from device.model.bundle import (
    MANIFEST,
    MAX_DIRECTORY_SIZE,
    MAX_MEMBERS,
    SCHEMA_VERSION,
    SIGNATURE,
    BundleError,
    VerifiedBundle,
    build_bundle,
    open_bundle,
    sign_manifest,
)

KEY = Ed25519PrivateKey.generate()
TRUSTED = [KEY.public_key()]
MODEL_BYTES = b"an opaque model file: open_bundle checks its hash and never deserializes it"
COLUMNS = list(FeatureEngine(FeatureSpec()).names[:4])
STEPS = {"zip", "size", "layout", "signature", "manifest", "hash", "compatibility"}
"""Every check ``open_bundle`` names; a refusal must be one of them."""
BASE: dict[str, Any] = {
    "schema_version": SCHEMA_VERSION,
    "model_id": "hostile",
    "version": "1.0.0",
    "created_at": "2026-11-24T22:00:00+00:00",
    "runtime": "sklearn",
    "model_file": "model.skops",
    "target": "label",
    "feature_spec": FeatureSpec().to_dict(),
    "columns": COLUMNS,
    "labels": ["a", "b"],
    "window": {"size": 5, "stride": 1, "flatten": False, "pool": ["mean"], "fps": 30.0},
    "preprocessing": None,
    "decision": {
        "threshold": 0.5,
        "smoothing": {"kind": "mean", "span_s": 0.5, "enter": 0.6, "exit": 0.4},
        "no_person": "skip",
    },
    "label_names": {"a": "Label A"},
    "activities": {"a_hold": {"kind": "hold", "label": "a", "min_confidence": 0.7, "rest_s": 2.0}},
    "metrics": {"accuracy": 0.9},
    "dataset_fingerprint": "sha256:" + "0" * 64,
    "min_device_version": "0.1.0",
    "library_versions": {"numpy": "1.26.4"},
    "samples": {"rows": [[0.1, None, 0.3, 0.4]], "probabilities": [[0.4, 0.6]]},
}
BASE["columns"] = [f"mean.{c}" for c in COLUMNS]
GOOD = build_bundle(BASE, MODEL_BYTES, KEY)
SIGNED_MANIFEST: dict[str, Any] = json.loads(members(GOOD)[MANIFEST])

# Each case opens one small in-memory bundle (well under a millisecond apart from hypothesis).
BUNDLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def opened(data: bytes) -> VerifiedBundle | BundleError:
    try:
        return open_bundle(data, TRUSTED, max_size=1 << 20, max_model_size=1 << 20)
    except BundleError as exc:
        assert exc.step in STEPS and exc.message, exc
        return exc


def signed(manifest: bytes, model: bytes = MODEL_BYTES) -> bytes:
    """A bundle whose manifest is ``manifest`` exactly, signed with the trusted key."""
    return rezip({MANIFEST: manifest, "model.skops": model, SIGNATURE: sign_manifest(manifest, KEY)})


def test_the_unmutated_bundle_opens() -> None:
    assert isinstance(opened(GOOD), VerifiedBundle)
    assert isinstance(opened(signed(json.dumps(SIGNED_MANIFEST).encode())), VerifiedBundle)


# --------------------------------------------------------------------------- zip bytes

COMPRESSIONS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]


def compressed(method: int) -> bytes:
    with zipfile.ZipFile(io.BytesIO(GOOD)) as source:
        files = {info.filename: source.read(info) for info in source.infolist()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, payload in files.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


VARIANTS = {method: compressed(method) for method in COMPRESSIONS}


@BUNDLES
@given(
    method=st.sampled_from(COMPRESSIONS),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.just(0), st.integers(1, 300)),
)
def test_mutated_zip_bytes_are_refused_by_name(method: int, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(VARIANTS[method])
    for position, mask in flips:
        data[position % len(data)] ^= mask
    result = opened(bytes(data[: len(data) - cut]))
    if isinstance(result, VerifiedBundle):  # a flip the zip format ignores (a timestamp, say)
        assert result.model_bytes == MODEL_BYTES and result.manifest.model_id == "hostile"


@settings(max_examples=100, deadline=None)
@given(data=st.one_of(st.binary(max_size=400), st.binary(max_size=60).map(lambda b: b"PK\x03\x04" + b)))
def test_bytes_that_are_not_a_bundle_are_refused(data: bytes) -> None:
    assert isinstance(opened(data), BundleError)


# --------------------------------------------------------------------------- many members


def with_members(count: int) -> bytes:
    """The good bundle's three members followed by empty ones up to ``count`` (a few bytes each)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(GOOD)) as source, zipfile.ZipFile(buffer, "w") as archive:
        for info in source.infolist():
            archive.writestr(info, source.read(info))
        for index in range(count - 3):
            archive.writestr(zipfile.ZipInfo(f"{index}", date_time=(1980, 1, 1, 0, 0, 0)), b"")
    return buffer.getvalue()


def refusal(data: bytes) -> BundleError:
    """Why a bundle within the device's default size limit (64 MiB) is refused."""
    with pytest.raises(BundleError) as refused:
        open_bundle(data, TRUSTED)
    return refused.value


def stating(data: bytes, count: int) -> bytes:
    """The zip with its end record claiming ``count`` members (the directory itself unchanged)."""
    end = len(data) - 22  # the end record, as zipfile writes it without a comment
    assert data[end : end + 4] == b"PK\x05\x06"
    return data[: end + 8] + struct.pack("<HH", count, count) + data[end + 12 :]


def test_a_zip_of_100000_members_is_refused_by_its_count_before_its_directory_is_read() -> None:
    """Issue 14 finding 12: 100,000 entries held model changes for 107 s in quadratic name checks."""
    data = with_members(100_000)  # more than 65,535: zipfile writes a zip64 end record
    print(f"a zip of 100000 members, {len(data)} bytes: {refusal(data)}")
    assert str(refusal(data)) == f"size: the zip lists 100000 members (a bundle has 3; limit {MAX_MEMBERS})"


def test_a_zip_understating_its_members_is_refused_by_its_directory_or_its_count() -> None:
    """zipfile walks the directory by its size, not by the count the end record states."""
    big = refusal(stating(with_members(60_000), 3))
    print(f"60000 members stated as 3: {big}")
    assert big.step == "size" and big.message.startswith("the zip's directory is ")
    assert big.message.endswith(f"bytes (limit {MAX_DIRECTORY_SIZE})")
    small = refusal(stating(with_members(MAX_MEMBERS + 1), 3))
    assert small.message == f"the zip lists {MAX_MEMBERS + 1} members (a bundle has 3; limit {MAX_MEMBERS})"
    extra = refusal(with_members(4))  # within the limits, an extra member is named by the layout check
    assert str(extra) == "layout: unexpected member '0'"


# --------------------------------------------------------------------------- signed, hostile manifests


def paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document a value sits, parents before children."""
    found = [prefix] if prefix else []
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += paths(value, (*prefix, index))
    return found


PLACES = paths(SIGNED_MANIFEST)
HOSTILE = st.one_of(
    JSON_VALUES,
    st.integers(-(2**80), 2**80),
    st.sampled_from([10**400, -1, 0, 10**6, 2**31, "", "0" * 5000 + "1", "9." * 300 + "9", "../x"]),
    st.integers(1, 5000).map(lambda n: [[]] * n),
)


@st.composite
def hostile_manifests(draw: st.DrawFn) -> bytes:
    """The signed manifest with one to three places changed, removed or given an unknown sibling."""
    document = json.loads(json.dumps(SIGNED_MANIFEST))
    for _ in range(draw(st.integers(1, 3))):
        place = draw(st.sampled_from(PLACES))
        parent: Any = document
        try:
            for step in place[:-1]:
                parent = parent[step]
            action = draw(st.sampled_from(["set", "set", "set", "remove", "add"]))
            if action == "set":
                parent[place[-1]] = draw(HOSTILE)
            elif action == "remove":
                del parent[place[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=8))] = draw(HOSTILE)
        except (KeyError, IndexError, TypeError):  # an earlier change removed or replaced this place
            continue
    return json.dumps(document, indent=2).encode()  # NaN and Infinity included when drawn: JSON has neither


@BUNDLES
@given(manifest=hostile_manifests(), nesting=st.sampled_from([0] * 9 + [50_000]))
def test_signed_hostile_manifests_are_refused_by_the_schema(manifest: bytes, nesting: int) -> None:
    manifest = b"[" * nesting + manifest + b"]" * nesting
    result = opened(signed(manifest))
    if isinstance(result, VerifiedBundle):
        assert result.manifest_bytes == manifest and result.signer
    else:
        assert result.step in {"manifest", "signature", "layout", "compatibility"}, result


@settings(max_examples=100, deadline=None)
@given(manifest=st.one_of(st.binary(max_size=200), JSON_VALUES.map(lambda v: json.dumps(v).encode())))
def test_signed_manifests_that_are_not_manifests_are_refused(manifest: bytes) -> None:
    result = opened(signed(manifest))
    assert isinstance(result, BundleError) and result.step == "manifest", result


@pytest.mark.parametrize("size", [10**9, 10**7])
def test_a_signed_manifest_asking_for_a_huge_window_is_refused_at_once(size: int) -> None:
    """Found by reasoning about the schema: checking its columns would name ``size`` × features frames."""
    window = {**SIGNED_MANIFEST["window"], "size": size, "flatten": True}
    result = opened(signed(json.dumps({**SIGNED_MANIFEST, "window": window}).encode()))
    assert isinstance(result, BundleError) and result.message.startswith("window: size: must be <= ")
