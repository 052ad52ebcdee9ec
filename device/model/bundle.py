"""Signed model bundles: the manifest schema, Ed25519 keys, and the checks that admit a bundle.

A bundle is a zip of exactly ``manifest.json``, ``manifest.sig`` (the raw 64-byte Ed25519
signature of the manifest's bytes) and one model file (docs/trainer-contracts.md). The kiosk
runs what it is sent, so :func:`open_bundle` trusts nothing before it has checked, in order:
the zip's end record (at most :data:`MAX_MEMBERS` members and a small directory, before zipfile
parses a single entry: a 100,000-entry zip costs nothing); the zip is readable; sizes, both the
real ones and those the zip declares (zip bombs); the member names (zip slip, symlinks, extras);
the signature against the device's trusted keys; that the signing key is not revoked
(:mod:`device.model.revocation`); the manifest's schema; the model file's sha256; that this
device is as new as the manifest's ``min_device_version``. Only then is anything handed to a
runtime. Every check is linear in the number of members (sets, not nested scans). The manifest itself is not
parsed before its signature verifies, so every trusted key is tried (a handful at most) rather
than looking one up by the unverified ``key_id``, which must then match the key that verified.
Every failure is a :class:`BundleError` naming the check, so an operator knows what was wrong.

The signature check and the strict JSON reading are shared with the key revocation list, the
other signed document a kiosk accepts.

This module is imported by the daemon: it stays free of pandas, skops and the trainer.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from device import __version__ as DEVICE_VERSION
from device.activity_specs import Activity, ActivityError, check_against_model, parse_activities
from device.features import FeatureEngine, FeatureSpec, FeatureSpecError, WindowSpec, window_names
from device.model.fields import (
    HEX16,
    MODEL_ID,
    SHA256,
    BundleError,
    Invalid,
    bool_field,
    compare_versions,
    exact_keys,
    int_field,
    list_field,
    mapping_field,
    nested,
    number_field,
    parse_strict_json,
    text_field,
    timestamp_field,
    version_field,
)
from device.smoothing import SMOOTHING_KINDS

SCHEMA_VERSION = 2
"""2: windows carry their frame rate (``window.fps``), smoothing spans are seconds, labels may
have display names, and activities (repetitions, sets, holds) travel with the model. A version-1
bundle is refused with a hint to export it again."""
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MODEL_FILES: Mapping[str, str] = MappingProxyType({"sklearn": "model.skops", "tflite": "model.tflite"})
"""The model file of each runtime; a bundle holds exactly one."""
MAX_SMOOTHING_S = 60.0
NO_PERSON_POLICIES: tuple[str, ...] = ("skip", "reset")

MAX_BUNDLE_SIZE = 64 * 1024 * 1024
MAX_MODEL_SIZE = 64 * 1024 * 1024
MAX_MANIFEST_SIZE = 4 * 1024 * 1024  # 20 sample rows of a few thousand window columns fit easily
SIGNATURE_SIZE = 64
MAX_MEMBERS = 8
"""A bundle has 3 members; up to this many are listed so the layout check can name an extra one.
More are refused from the zip's end record, before zipfile builds an object per entry."""
MAX_DIRECTORY_SIZE = 64 * 1024
"""The zip's central directory: 3 entries take a few hundred bytes. zipfile walks as many bytes
as the end record claims, whatever member count it states, so both are bounded."""
MAX_WINDOW_FRAMES = 3600
"""Two minutes at 30 fps. The device keeps a window in memory and the schema check names its
columns, so a (signed) manifest asking for millions of frames must be refused, not attempted."""
_S_IFMT, _S_IFLNK = 0o170000, 0o120000  # file-type bits of a zip entry's Unix mode
_COMPRESSIONS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})

_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")


# --------------------------------------------------------------------------- keys


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw 32-byte public key (the contract's key id)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BundleError("key", f"{path}: cannot read ({exc.strerror})") from exc


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """An unencrypted PKCS#8 PEM Ed25519 private key, as written by ``trainer keygen``."""
    path = Path(path)
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BundleError("key", f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError("key", f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """A SubjectPublicKeyInfo PEM Ed25519 public key, as written by ``trainer keygen``."""
    path = Path(path)
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BundleError("key", f"{path}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError("key", f"{path}: not an Ed25519 public key")
    return key


def sign_manifest(manifest_bytes: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """The raw 64-byte signature stored as ``manifest.sig``."""
    return private_key.sign(manifest_bytes)


# --------------------------------------------------------------------------- manifest schema


def _feature_spec(value: Any) -> FeatureSpec:
    data = exact_keys(value, FeatureSpec().to_dict())
    try:
        return FeatureSpec.from_dict(data)
    except (ValueError, TypeError, OverflowError) as exc:  # FeatureSpecError, or a value of the wrong kind
        raise Invalid(str(exc)) from None


def _window(value: Any) -> WindowSpec | None:
    if value is None:
        return None
    data = exact_keys(value, ("size", "stride", "flatten", "pool", "fps"))
    try:
        return WindowSpec(
            size=nested("size", lambda v: int_field(v, maximum=MAX_WINDOW_FRAMES), data["size"]),
            stride=nested("stride", lambda v: int_field(v, maximum=MAX_WINDOW_FRAMES), data["stride"]),
            flatten=nested("flatten", bool_field, data["flatten"]),
            pool=nested("pool", lambda v: list_field(v, text_field, unique=True), data["pool"]),
            fps=nested("fps", number_field, data["fps"]),
        )
    except FeatureSpecError as exc:
        raise Invalid(str(exc)) from None


def _nullable_number(value: Any) -> float:
    """A sample cell: JSON has no NaN, so a missing feature is written as ``null``."""
    return math.nan if value is None else number_field(value)


@dataclass(frozen=True)
class Preprocessing:
    """What runs before a TFLite model: NaN -> the imputer's fill value, per column."""

    fill: tuple[float, ...]

    @classmethod
    def parse(cls, value: Any) -> Preprocessing | None:
        if value is None:
            return None
        data = exact_keys(value, ("fill",))
        return cls(fill=nested("fill", lambda v: list_field(v, number_field), data["fill"]))


def _probability(value: Any) -> float:
    number = number_field(value)
    if not 0.0 <= number <= 1.0:
        raise Invalid(f"must be within 0..1, got {number}")
    return number


@dataclass(frozen=True)
class Smoothing:
    """How decisions are steadied (:mod:`device.smoothing`): ``mean`` averages the probabilities
    of the last ``span_s`` seconds; ``hysteresis`` keeps a label until it drops below ``exit``
    and switches only to one at or above ``enter``."""

    kind: str
    span_s: float
    enter: float
    exit: float

    @classmethod
    def parse(cls, value: Any) -> Smoothing:
        data = exact_keys(value, ("kind", "span_s", "enter", "exit"))
        smoothing = cls(
            kind=nested("kind", lambda v: text_field(v, choices=SMOOTHING_KINDS), data["kind"]),
            span_s=nested("span_s", number_field, data["span_s"]),
            enter=nested("enter", _probability, data["enter"]),
            exit=nested("exit", _probability, data["exit"]),
        )
        if not 0.0 <= smoothing.span_s <= MAX_SMOOTHING_S:
            raise Invalid(f"span_s: must be within 0..{MAX_SMOOTHING_S:g} seconds, got {smoothing.span_s}")
        if smoothing.exit > smoothing.enter:
            raise Invalid(f"exit: must not exceed enter ({smoothing.enter}), got {smoothing.exit}")
        return smoothing


@dataclass(frozen=True)
class Decision:
    """How the device turns probabilities into a published label."""

    threshold: float
    smoothing: Smoothing
    no_person: str

    @classmethod
    def parse(cls, value: Any) -> Decision:
        data = exact_keys(value, ("threshold", "smoothing", "no_person"))
        return cls(
            threshold=nested("threshold", _probability, data["threshold"]),
            smoothing=nested("smoothing", Smoothing.parse, data["smoothing"]),
            no_person=nested(
                "no_person", lambda v: text_field(v, choices=NO_PERSON_POLICIES), data["no_person"]
            ),
        )


@dataclass(frozen=True)
class Samples:
    """Rows (NaN where missing) and the probabilities the exporting runtime gave for them."""

    rows: tuple[tuple[float, ...], ...]
    probabilities: tuple[tuple[float, ...], ...]

    @classmethod
    def parse(cls, value: Any) -> Samples:
        data = exact_keys(value, ("rows", "probabilities"))
        return cls(
            rows=nested(
                "rows", lambda v: list_field(v, lambda r: list_field(r, _nullable_number)), data["rows"]
            ),
            probabilities=nested(
                "probabilities",
                lambda v: list_field(v, lambda r: list_field(r, number_field)),
                data["probabilities"],
            ),
        )


def _activities(value: Any) -> tuple[Activity, ...]:
    try:
        return parse_activities(value)
    except ActivityError as exc:
        raise Invalid(str(exc)) from None


def _schema_version(value: Any) -> int:
    if int_field(value) != SCHEMA_VERSION:
        raise Invalid(
            f"{value} is not supported (this device: {SCHEMA_VERSION}); "
            "export the model again with this version's trainer"
        )
    return value


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "schema_version": _schema_version,
    "model_id": lambda v: text_field(v, MODEL_ID),
    "version": version_field,
    "created_at": timestamp_field,
    "key_id": lambda v: text_field(v, HEX16),
    "runtime": lambda v: text_field(v, choices=MODEL_FILES),
    "model_file": lambda v: text_field(v, choices=MODEL_FILES.values()),
    "sha256": lambda v: text_field(v, SHA256),
    "target": text_field,
    "feature_spec": _feature_spec,
    "columns": lambda v: list_field(v, text_field, unique=True),
    "labels": lambda v: list_field(v, text_field, unique=True),
    "window": _window,
    "preprocessing": Preprocessing.parse,
    "decision": Decision.parse,
    "label_names": lambda v: mapping_field(v, text_field),
    "activities": _activities,
    "metrics": lambda v: mapping_field(v, number_field),
    "dataset_fingerprint": lambda v: text_field(v, _FINGERPRINT),
    "min_device_version": version_field,
    "library_versions": lambda v: mapping_field(v, text_field),
    "samples": Samples.parse,
}


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of a bundle, validated (docs/trainer-contracts.md)."""

    schema_version: int
    model_id: str
    version: str
    created_at: str
    key_id: str
    runtime: str
    model_file: str
    sha256: str
    target: str
    feature_spec: FeatureSpec
    columns: tuple[str, ...]
    labels: tuple[str, ...]
    window: WindowSpec | None
    preprocessing: Preprocessing | None
    decision: Decision
    label_names: Mapping[str, str]
    """Display names for some or all labels (the page, Home Assistant); payloads keep the labels."""
    activities: tuple[Activity, ...]
    """Repetitions, sets and holds the kiosk counts (DESIGN.md §8); may be empty."""
    metrics: Mapping[str, float]
    dataset_fingerprint: str
    min_device_version: str
    library_versions: Mapping[str, str]
    samples: Samples

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse and validate manifest bytes; errors are ``BundleError("manifest", ...)``."""
        return cls.from_dict(parse_strict_json(data, "manifest", MANIFEST))

    @classmethod
    def from_dict(cls, document: Any) -> Manifest:
        """Validate every key (refusing unknown and missing ones), then the keys against each other."""
        try:
            if isinstance(document, dict) and "schema_version" in document:
                # first, so an old bundle is told to be exported again rather than which key it lacks
                nested("schema_version", _schema_version, document["schema_version"])
            data = exact_keys(document, (f.name for f in fields(cls)))
            manifest = cls(**{key: nested(key, parse, data[key]) for key, parse in _PARSERS.items()})
            manifest._check_consistency()
        except Invalid as exc:
            raise BundleError("manifest", str(exc)) from None
        return manifest

    def _check_consistency(self) -> None:
        if self.model_file != MODEL_FILES[self.runtime]:
            raise Invalid(f"model_file: runtime {self.runtime} needs {MODEL_FILES[self.runtime]}")
        if len(self.labels) < 2:
            raise Invalid("labels: a classifier needs at least 2 labels")
        if (self.preprocessing is not None) != (self.runtime == "tflite"):
            raise Invalid("preprocessing: required for tflite, null for sklearn")
        if self.preprocessing is not None and len(self.preprocessing.fill) != len(self.columns):
            raise Invalid(
                f"preprocessing: fill has {len(self.preprocessing.fill)} values for "
                f"{len(self.columns)} columns"
            )
        unnamed = [label for label in self.label_names if label not in self.labels]
        if unnamed:
            raise Invalid(f"label_names: {unnamed[0]!r} is not one of the labels")
        try:
            check_against_model(self.activities, self.labels, FeatureEngine(self.feature_spec).names)
        except ActivityError as exc:
            raise Invalid(f"activities: {exc}") from None
        self._check_columns()
        self._check_samples()

    def _check_columns(self) -> None:
        """The device must be able to compute every column the model reads."""
        names = FeatureEngine(self.feature_spec).names
        computable = set(names if self.window is None else window_names(names, self.window))
        unknown = [c for c in self.columns if c not in computable]
        if unknown:
            where = "per frame" if self.window is None else "with this window"
            raise Invalid(f"columns: {unknown[0]!r} cannot be computed from feature_spec {where}")

    def _check_samples(self) -> None:
        rows, probabilities = self.samples.rows, self.samples.probabilities
        if not rows or len(rows) != len(probabilities):
            raise Invalid("samples: need one or more rows and one probability vector per row")
        if any(len(r) != len(self.columns) for r in rows):
            raise Invalid(f"samples: every row needs {len(self.columns)} values (one per column)")
        if any(len(p) != len(self.labels) for p in probabilities):
            raise Invalid(f"samples: every probability vector needs {len(self.labels)} values")


# --------------------------------------------------------------------------- reading a bundle


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle that passed every check; ``model_bytes`` is safe to hand to its runtime."""

    manifest: Manifest
    manifest_bytes: bytes
    model_bytes: bytes
    signer: str  # key id of the trusted key that verified the signature


def _read_source(source: str | Path | bytes, max_size: int) -> bytes:
    """The whole bundle, read once: every check then sees the same bytes (no re-reads, no races)."""
    if isinstance(source, bytes):
        data = source
    else:
        try:
            with open(source, "rb") as handle:
                data = handle.read(max_size + 1)
        except OSError as exc:
            raise BundleError("zip", f"{source}: cannot read ({exc.strerror})") from exc
    if len(data) > max_size:
        raise BundleError("size", f"bundle is larger than the limit of {max_size} bytes")
    return data


def _check_member_count(count: int) -> None:
    if count > MAX_MEMBERS:
        raise BundleError("size", f"the zip lists {count} members (a bundle has 3; limit {MAX_MEMBERS})")


def _check_directory(data: bytes) -> None:
    """The member count and directory size from the zip's end record, before zipfile parses entries.

    zipfile makes an object per directory entry and walks as many bytes as the end record claims,
    so a hostile zip of 100,000 empty entries (a few MB) would cost time and memory before any
    check ran. The record is read with zipfile's own reader, so it is the one ZipFile then uses
    (zip64 included); the entries actually parsed are counted again afterwards.
    """
    try:
        end = zipfile._EndRecData(io.BytesIO(data))  # type: ignore[attr-defined]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BundleError("zip", f"not a readable zip file ({exc})") from exc
    if end is None:
        raise BundleError("zip", "not a readable zip file (no end of central directory record)")
    _check_member_count(end[zipfile._ECD_ENTRIES_TOTAL])  # type: ignore[attr-defined]
    size = end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if size > MAX_DIRECTORY_SIZE:
        raise BundleError("size", f"the zip's directory is {size} bytes (limit {MAX_DIRECTORY_SIZE})")


def _member_limit(name: str, max_model_size: int) -> int:
    return {MANIFEST: MAX_MANIFEST_SIZE, SIGNATURE: SIGNATURE_SIZE}.get(name, max_model_size)


def _check_sizes(infos: list[zipfile.ZipInfo], max_size: int, max_model_size: int) -> None:
    """Declared uncompressed sizes, before anything is inflated: a zip bomb stops here."""
    for info in infos:
        limit = _member_limit(info.filename, max_model_size)
        if info.file_size > limit:
            raise BundleError(
                "size", f"member {info.filename!r} declares {info.file_size} bytes " f"(limit {limit})"
            )
    total = sum(info.file_size for info in infos)
    if total > max_size:
        raise BundleError("size", f"members declare {total} bytes uncompressed (limit {max_size})")


def _unsafe_name(info: zipfile.ZipInfo) -> bool:
    name = info.filename
    return (
        not name
        or name.startswith("/")
        or "\\" in name
        or ":" in name
        or ".." in name.split("/")
        or info.is_dir()
        or (info.external_attr >> 16) & _S_IFMT == _S_IFLNK
    )


def _check_layout(infos: list[zipfile.ZipInfo]) -> str:
    """Exactly manifest, signature and one known model file; returns the model file's name.

    One pass per rule, each lookup in a set: the cost grows with the number of members, not its square.
    """
    for info in infos:
        if _unsafe_name(info):
            raise BundleError("layout", f"member {info.filename!r} is not allowed")
        if info.compress_type not in _COMPRESSIONS:  # what build_bundle writes; no other decompressor runs
            raise BundleError("layout", f"member {info.filename!r} is not stored or deflated")
    names: dict[str, None] = {}  # insertion-ordered set
    for info in infos:
        if info.filename in names:
            raise BundleError("layout", f"member {info.filename!r} appears twice")
        names[info.filename] = None
    for required in (MANIFEST, SIGNATURE):
        if required not in names:
            raise BundleError("layout", f"missing member {required!r}")
    models = [n for n in names if n not in (MANIFEST, SIGNATURE)]
    extra = [n for n in models if n not in MODEL_FILES.values()]
    if extra:
        raise BundleError("layout", f"unexpected member {extra[0]!r}")
    if len(models) > 1:
        raise BundleError("layout", f"more than one model file: {', '.join(models)}")
    if not models:
        raise BundleError("layout", f"missing the model file ({' or '.join(MODEL_FILES.values())})")
    return models[0]


def _read_member(archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """Inflate at most ``limit + 1`` bytes, so a member lying about its size cannot blow up memory."""
    try:
        with archive.open(name) as handle:
            data = handle.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, OSError, EOFError) as exc:
        raise BundleError("zip", f"cannot read member {name!r} ({exc})") from exc
    if len(data) > limit:
        raise BundleError("size", f"member {name!r} is larger than the limit of {limit} bytes")
    return data


def verify_signature(
    signed: bytes, signature: bytes, trusted_keys: Iterable[Ed25519PublicKey], name: str = SIGNATURE
) -> str:
    """The key id of the trusted key whose signature ``signature`` is over ``signed``.

    Every key is tried (a handful at most): the document is not parsed before one verifies it,
    so the key id it names cannot be used to pick one. ``name`` says which signature failed.
    """
    trusted_keys = list(trusted_keys)
    if not trusted_keys:
        raise BundleError("signature", f"no trusted keys to verify {name} with")
    if len(signature) != SIGNATURE_SIZE:
        raise BundleError("signature", f"{name} is not a {SIGNATURE_SIZE}-byte Ed25519 signature")
    for key in trusted_keys:
        try:
            key.verify(signature, signed)
        except InvalidSignature:
            continue
        return key_id(key)
    raise BundleError("signature", f"{name} does not verify with any trusted key")


def open_bundle(
    source: str | Path | bytes,
    trusted_keys: Iterable[Ed25519PublicKey],
    max_size: int = MAX_BUNDLE_SIZE,
    max_model_size: int = MAX_MODEL_SIZE,
    revoked: Collection[str] = frozenset(),
) -> VerifiedBundle:
    """Check a bundle file (or its bytes) completely; raise :class:`BundleError` at the first failure.

    ``revoked`` holds the key ids a revocation list in force retires: a bundle they signed is
    refused right after its signature verifies, before its manifest is parsed.
    """
    data = _read_source(source, max_size)
    _check_directory(data)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, ValueError) as exc:
        raise BundleError("zip", f"not a readable zip file ({exc})") from exc
    with archive:
        infos = archive.infolist()
        _check_member_count(len(infos))  # the directory may hold more entries than its end record says
        _check_sizes(infos, max_size, max_model_size)
        model_file = _check_layout(infos)
        manifest_bytes = _read_member(archive, MANIFEST, MAX_MANIFEST_SIZE)
        signer = verify_signature(
            manifest_bytes, _read_member(archive, SIGNATURE, SIGNATURE_SIZE), trusted_keys
        )
        if signer in revoked:
            raise BundleError(
                "revoked",
                f"signed by key {signer}, which the key revocation list in force revokes; "
                "sign the model again with a key that is not revoked",
            )
        manifest = Manifest.from_json(manifest_bytes)
        if manifest.key_id != signer:
            raise BundleError(
                "signature", f"signed by key {signer}, but the manifest names {manifest.key_id}"
            )
        if manifest.model_file != model_file:
            raise BundleError(
                "layout", f"the manifest names {manifest.model_file}, the bundle has {model_file}"
            )
        model_bytes = _read_member(archive, model_file, max_model_size)
    if hashlib.sha256(model_bytes).hexdigest() != manifest.sha256:
        raise BundleError("hash", f"{model_file} sha256 mismatch")
    if compare_versions(manifest.min_device_version, DEVICE_VERSION) > 0:
        raise BundleError(
            "compatibility",
            f"the model needs device version {manifest.min_device_version} "
            f"or newer (this device: {DEVICE_VERSION})",
        )
    return VerifiedBundle(manifest, manifest_bytes, model_bytes, signer)


# --------------------------------------------------------------------------- writing a bundle


def manifest_bytes_of(manifest: Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed: UTF-8 JSON, 2-space indent, no NaN (JSON has none)."""
    return (json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def build_bundle(manifest: Mapping[str, Any], model_bytes: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """A signed bundle in memory. ``key_id`` and ``sha256`` are filled in from the key and the model.

    The manifest is validated with the device's own schema first, so the trainer cannot sign
    something a device would refuse; its keys are written in the contract's order.
    """
    filled = {**manifest, "key_id": key_id(private_key), "sha256": hashlib.sha256(model_bytes).hexdigest()}
    order = {f.name: i for i, f in enumerate(fields(Manifest))}
    encoded = manifest_bytes_of(dict(sorted(filled.items(), key=lambda item: order.get(item[0], len(order)))))
    parsed = Manifest.from_json(encoded)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, payload in (
            (MANIFEST, encoded),
            (parsed.model_file, model_bytes),
            (SIGNATURE, sign_manifest(encoded, private_key)),
        ):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # reproducible bytes
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            archive.writestr(info, payload)
    return buffer.getvalue()


def write_atomic(path: str | Path, data: bytes, mode: int = 0o644, durable: bool = False) -> Path:
    """Write a file so that readers see the old content or the new, never half of it.

    ``durable`` also fsyncs the file before the rename and the folder after it, so that after a
    power cut the file is whole (old or new) — what a kiosk's state needs; on a workstation the
    rename alone is enough.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # whatever the umask or an older file said
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    if durable:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return path


def write_bundle(
    out_path: str | Path, manifest: Mapping[str, Any], model_bytes: bytes, private_key: Ed25519PrivateKey
) -> Path:
    """Build a bundle and write it atomically (temporary file + ``os.replace``): never half a zip."""
    return write_atomic(out_path, build_bundle(manifest, model_bytes, private_key))
