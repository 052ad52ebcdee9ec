"""Device side of model bundles: keys, the manifest schema, every check of ``open_bundle``, the runtimes.

Models are real scikit-learn pipelines fitted on features of the real BODY-25 pose table; bundles
are tampered with byte by byte, and each refusal must name the check that caught it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from device.features import FeatureEngine, FeatureSpec
from device.keypoints import read_body25_table
from device.model.bundle import (
    SCHEMA_VERSION,
    BundleError,
    Manifest,
    build_bundle,
    key_id,
    load_private_key,
    load_public_key,
    open_bundle,
    write_bundle,
)
from device.model.fields import compare_versions
from device.model.runtimes import SklearnRuntime, check_samples, check_skops_types, load_runtime

SPEC = FeatureSpec(normalized=(), presets=("seed",))
CLASSES = ("Plank", "Squat", "Stand")


def real_examples(
    data_dir: Path, classes: tuple[str, ...], per_class: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Features of real poses (BodyPose_Dataset.csv, seed preset + angles + distances), NaN kept.

    Returns ``(X, y, columns)`` with ``per_class`` rows of each class, shuffled.
    """
    table = read_body25_table(data_dir / "keypoints" / "BodyPose_Dataset.csv")
    rng = np.random.default_rng(seed)
    picked = np.concatenate(
        [rng.choice(np.flatnonzero(table.labels == c), per_class, replace=False) for c in classes]
    )
    rng.shuffle(picked)
    engine = FeatureEngine(SPEC)
    return engine.compute(table.points[picked]), table.labels[picked].astype(str), engine.names


def sklearn_manifest(pipeline: Any, rows: np.ndarray, columns: tuple[str, ...]) -> dict[str, Any]:
    """A contract manifest for a scikit-learn bundle (signing fills in key_id and sha256)."""
    probabilities = pipeline.predict_proba(rows[:5])
    return {
        "schema_version": SCHEMA_VERSION,
        "model_id": "pose-test",
        "version": "2026.11.24.220000",
        "created_at": "2026-11-24T22:00:00+00:00",
        "runtime": "sklearn",
        "model_file": "model.skops",
        "target": "label",
        "feature_spec": SPEC.to_dict(),
        "columns": list(columns),
        "labels": [str(c) for c in pipeline.classes_],
        "window": None,
        "preprocessing": None,
        "decision": {
            "threshold": 0.0,
            "smoothing": {"kind": "none", "span_s": 0.0, "enter": 0.6, "exit": 0.4},
            "no_person": "skip",
        },
        "label_names": {},
        "activities": {},
        "metrics": {"macro_f1": 0.9, "accuracy": 0.9, "balanced_accuracy": 0.9},
        "dataset_fingerprint": "sha256:" + "0" * 64,
        "min_device_version": "0.1.0",
        "library_versions": {"sklearn": "1.9.1", "numpy": "1.26.4"},
        "samples": {
            "rows": [[None if np.isnan(v) else float(v) for v in row] for row in rows[:5]],
            "probabilities": probabilities.tolist(),
        },
    }


@pytest.fixture(scope="module")
def examples(data_dir: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    return real_examples(data_dir, CLASSES, per_class=120)


@pytest.fixture(scope="module")
def forest(examples: tuple[np.ndarray, np.ndarray, tuple[str, ...]]) -> Pipeline:
    X, y, _ = examples
    steps = [("impute", SimpleImputer(keep_empty_features=True)), ("scale", StandardScaler())]
    return Pipeline([*steps, ("classify", RandomForestClassifier(n_estimators=15, random_state=0))]).fit(X, y)


@pytest.fixture(scope="module")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def manifest(forest: Pipeline, examples: tuple[np.ndarray, np.ndarray, tuple[str, ...]]) -> dict[str, Any]:
    X, _, columns = examples
    return sklearn_manifest(forest, X[-40:], columns)


@pytest.fixture(scope="module")
def model_bytes(forest: Pipeline) -> bytes:
    return skops.io.dumps(forest)


@pytest.fixture(scope="module")
def bundle(manifest: dict[str, Any], model_bytes: bytes, signing_key: Ed25519PrivateKey) -> bytes:
    return build_bundle(manifest, model_bytes, signing_key)


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def rezip(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, payload in entries:
            archive.writestr(name, payload)
    return buffer.getvalue()


# --------------------------------------------------------------------------- keys and versions


def test_key_id_is_the_sha256_prefix_of_the_raw_public_key(signing_key: Ed25519PrivateKey) -> None:
    raw = signing_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id(signing_key) == key_id(signing_key.public_key()) == hashlib.sha256(raw).hexdigest()[:16]


def test_pem_keys_load_and_wrong_files_are_named(signing_key: Ed25519PrivateKey, tmp_path: Path) -> None:
    private, public = tmp_path / "signing.key", tmp_path / "signing.pub"
    private.write_bytes(
        signing_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public.write_bytes(
        signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert key_id(load_private_key(private)) == key_id(load_public_key(public)) == key_id(signing_key)
    with pytest.raises(BundleError, match=r"^key: .*signing\.key: not a PEM public key"):
        load_public_key(private)
    with pytest.raises(BundleError, match=r"^key: .*signing\.pub: not an unencrypted PEM private key"):
        load_private_key(public)
    with pytest.raises(BundleError, match=r"^key: .*absent\.pub: cannot read"):
        load_public_key(tmp_path / "absent.pub")


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.10", "1.9", 1),
        ("2026.11.24.220000", "2026.11.24.215959", 1),
        ("1.0", "1", 0),
        ("0.1.0", "0.2", -1),
    ],
)
def test_versions_compare_numerically(a: str, b: str, expected: int) -> None:
    assert compare_versions(a, b) == expected
    assert compare_versions(b, a) == -expected


@pytest.mark.parametrize("bad", ["1.x", "", "1..2", "v1", " 1.2"])
def test_versions_that_are_not_dotted_integers_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="dotted-integer"):
        compare_versions(bad, "1.0")


# --------------------------------------------------------------------------- manifest schema


WINDOW = {"size": 30, "stride": 5, "flatten": False, "pool": ["mean"], "fps": 30.0}


def _edited(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``document`` with ``a.b.c`` set to ``value`` (or deleted when value is ...)."""
    copy = json.loads(json.dumps(document))
    *parents, last = path.split(".")
    target = copy
    for key in parents:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = {k: v for k, v in value.items() if v is not ...} if isinstance(value, dict) else value
    return copy


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("foo", 1, "unknown key 'foo'"),
        ("labels", ..., "missing key 'labels'"),
        ("schema_version", "1", "schema_version: expected an integer, got str"),
        ("schema_version", True, "schema_version: expected an integer, got bool"),
        ("schema_version", 3, "schema_version: 3 is not supported (this device: 2)"),
        ("version", "1.x", "version: '1.x' is not a dotted-integer version"),
        ("created_at", "yesterday", "created_at: 'yesterday' is not an ISO 8601 time"),
        ("model_id", "../etc", "model_id: '../etc' does not match"),
        ("runtime", "onnx", "runtime: 'onnx' is not one of sklearn, tflite"),
        ("model_file", "model.tflite", "model_file: runtime sklearn needs model.skops"),
        ("columns", ["angle.left_knee", "angle.left_knee"], "columns: duplicate entry 'angle.left_knee'"),
        ("columns", ["foo.bar"], "columns: 'foo.bar' cannot be computed from feature_spec per frame"),
        ("labels", ["only"], "labels: a classifier needs at least 2 labels"),
        ("feature_spec.z", ..., "feature_spec: missing key 'z'"),
        ("feature_spec.angles", ["left_elbow", "wrist"], "feature_spec: unknown angle 'wrist'"),
        ("feature_spec.min_visibility", "high", "feature_spec: could not convert string to float"),
        ("window", {**WINDOW, "pool": ...}, "window: missing key 'pool'"),
        ("window", {**WINDOW, "fps": ...}, "window: missing key 'fps'"),
        ("window", {**WINDOW, "size": 0}, "window: window size"),
        ("window", {**WINDOW, "fps": 0}, "window: window fps"),
        ("preprocessing", {"fill": [0.0]}, "preprocessing: required for tflite, null for sklearn"),
        ("decision.threshold", 1.5, "decision: threshold: must be within 0..1"),
        ("decision.smoothing.kind", "fancy", "decision: smoothing: kind: 'fancy' is not one of"),
        ("decision.smoothing.span_s", -1, "decision: smoothing: span_s: must be within 0..60 seconds"),
        ("decision.smoothing.exit", 0.7, "decision: smoothing: exit: must not exceed enter (0.6)"),
        ("schema_version", 1, "schema_version: 1 is not supported (this device: 2); export the model again"),
        ("label_names.walk", "Walking", "label_names: 'walk' is not one of the labels"),
        ("decision.no_person", "wait", "decision: no_person: 'wait' is not one of skip, reset"),
        ("metrics.accuracy", "high", "metrics: accuracy: expected a finite number"),
        ("dataset_fingerprint", "md5:00", "dataset_fingerprint: 'md5:00' does not match"),
        ("library_versions.numpy", 1.26, "library_versions: numpy: expected a non-empty string"),
        ("samples.rows", [], "samples: need one or more rows"),
        ("samples.probabilities", [[0.5, 0.5]] * 5, "samples: every probability vector needs 3 values"),
    ],
)
def test_manifest_schema_names_the_bad_key(bundle: bytes, path: str, value: Any, message: str) -> None:
    document = json.loads(members(bundle)["manifest.json"])
    Manifest.from_dict(document)  # the unedited manifest is valid
    with pytest.raises(BundleError) as caught:
        Manifest.from_dict(_edited(document, path, value))
    assert caught.value.step == "manifest"
    assert str(caught.value).startswith(f"manifest: {message}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'{"schema_version": 1, "schema_version": 1}', "duplicate key 'schema_version'"),
        (b'{"schema_version": NaN}', "NaN is not valid JSON"),
        (b"\xff", "manifest.json is not valid JSON"),
        (b"[1]", "expected an object, got list"),
    ],
)
def test_manifest_json_must_be_one_unambiguous_object(text: bytes, message: str) -> None:
    with pytest.raises(BundleError, match=f"^manifest: {message}"):
        Manifest.from_json(text)


def test_sample_nulls_become_nan(bundle: bytes) -> None:
    manifest = Manifest.from_json(members(bundle)["manifest.json"])
    rows = np.array(manifest.samples.rows)
    assert rows.shape == (5, len(manifest.columns)) and np.isnan(rows).any()


# --------------------------------------------------------------------------- open_bundle


def test_a_signed_bundle_opens_from_bytes_and_from_a_file(
    bundle: bytes, signing_key: Ed25519PrivateKey, model_bytes: bytes, tmp_path: Path
) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    path = tmp_path / "model.zip"
    path.write_bytes(bundle)
    for source in (bundle, path, str(path)):
        verified = open_bundle(source, [other, signing_key.public_key()])
        assert verified.signer == key_id(signing_key) == verified.manifest.key_id
        assert verified.model_bytes == model_bytes
        assert verified.manifest.labels == CLASSES
        assert verified.manifest.sha256 == hashlib.sha256(model_bytes).hexdigest()


def _flip_model_byte(data: bytes, _key: Ed25519PrivateKey) -> bytes:
    files = members(data)
    model = bytearray(files["model.skops"])
    model[len(model) // 2] ^= 0x01
    return rezip([(n, bytes(model) if n == "model.skops" else p) for n, p in files.items()])


def _edit_manifest(data: bytes, _key: Ed25519PrivateKey) -> bytes:
    files = members(data)
    files["manifest.json"] = files["manifest.json"].replace(b'"pose-test"', b'"pose-evil"')
    return rezip(list(files.items()))


def _sign_with_other_key(data: bytes, _key: Ed25519PrivateKey) -> bytes:
    files = members(data)
    document = json.loads(files["manifest.json"])
    return build_bundle(document, files["model.skops"], Ed25519PrivateKey.generate())


def _claim_other_key_id(data: bytes, key: Ed25519PrivateKey) -> bytes:
    files = members(data)
    encoded = files["manifest.json"].replace(key_id(key).encode(), b"0123456789abcdef")
    return rezip(
        [
            ("manifest.json", encoded),
            ("model.skops", files["model.skops"]),
            ("manifest.sig", key.sign(encoded)),
        ]
    )


def _drop(name: str) -> Callable[[bytes, Ed25519PrivateKey], bytes]:
    return lambda data, _key: rezip([(n, p) for n, p in members(data).items() if n != name])


def _add(entry: str | zipfile.ZipInfo, payload: bytes = b"x") -> Callable[[bytes, Ed25519PrivateKey], bytes]:
    return lambda data, _key: rezip([*members(data).items(), (entry, payload)])


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _replace_signature(data: bytes, _key: Ed25519PrivateKey) -> bytes:
    return rezip([(n, b"short" if n == "manifest.sig" else p) for n, p in members(data).items()])


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_flip_model_byte, "hash: model.skops sha256 mismatch"),
        (_edit_manifest, "signature: manifest.sig does not verify with any trusted key"),
        (_sign_with_other_key, "signature: manifest.sig does not verify with any trusted key"),
        (_claim_other_key_id, "signature: signed by key"),
        (_replace_signature, "signature: manifest.sig is not a 64-byte Ed25519 signature"),
        (_drop("manifest.sig"), "layout: missing member 'manifest.sig'"),
        (_drop("manifest.json"), "layout: missing member 'manifest.json'"),
        (_drop("model.skops"), "layout: missing the model file"),
        (_add("../evil.py"), "layout: member '../evil.py' is not allowed"),
        (_add("/etc/cron.d/evil"), "layout: member '/etc/cron.d/evil' is not allowed"),
        (_add("..\\evil.py"), "layout: member '..\\\\evil.py' is not allowed"),
        (_add("models/"), "layout: member 'models/' is not allowed"),
        (_add(_symlink("link"), b"/etc/passwd"), "layout: member 'link' is not allowed"),
        (_add("notes.txt"), "layout: unexpected member 'notes.txt'"),
        (_add("model.tflite"), "layout: more than one model file"),
        (lambda data, _key: data[: len(data) // 2], "zip: not a readable zip file"),
    ],
    ids=lambda v: getattr(v, "__name__", None) if callable(v) else None,
)
def test_tampered_bundles_are_refused_naming_the_check(
    bundle: bytes,
    signing_key: Ed25519PrivateKey,
    tamper: Callable[[bytes, Ed25519PrivateKey], bytes],
    message: str,
) -> None:
    with pytest.raises(BundleError) as caught:
        open_bundle(tamper(bundle, signing_key), [signing_key.public_key()])
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_duplicated_member_is_refused(bundle: bytes, signing_key: Ed25519PrivateKey) -> None:
    files = members(bundle)
    with pytest.warns(UserWarning, match="Duplicate name"):
        doubled = rezip([*files.items(), ("manifest.json", files["manifest.json"])])
    with pytest.raises(BundleError, match="^layout: member 'manifest.json' appears twice"):
        open_bundle(doubled, [signing_key.public_key()])


def test_no_trusted_keys_means_no_bundle(bundle: bytes) -> None:
    with pytest.raises(BundleError, match="^signature: no trusted keys"):
        open_bundle(bundle, [])


def test_size_limits_apply_to_the_file_and_to_declared_member_sizes(
    bundle: bytes, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    trusted = [signing_key.public_key()]
    path = tmp_path / "model.zip"
    path.write_bytes(bundle)
    with pytest.raises(BundleError, match="^size: bundle is larger than the limit"):
        open_bundle(path, trusted, max_size=len(bundle) - 1)
    model_size = len(members(bundle)["model.skops"])
    with pytest.raises(BundleError, match="^size: member 'model.skops' declares"):
        open_bundle(bundle, trusted, max_model_size=model_size - 1)


def test_a_zip_bomb_is_refused_before_it_is_inflated(bundle: bytes, signing_key: Ed25519PrivateKey) -> None:
    files = members(bundle)
    bomb = rezip([*((n, p) for n, p in files.items() if n != "model.skops"), ("model.skops", bytes(8 << 20))])
    assert len(bomb) < 64 << 10  # 8 MiB of zeros deflate to a few KiB
    with pytest.raises(BundleError, match="^size: member 'model.skops' declares 8388608 bytes"):
        open_bundle(bomb, [signing_key.public_key()], max_size=1 << 20, max_model_size=1 << 20)
    with pytest.raises(BundleError, match="^size: members declare"):
        open_bundle(bomb, [signing_key.public_key()], max_size=1 << 20, max_model_size=16 << 20)


def _understate_size(data: bytes, name: str, size: int) -> bytes:
    """Rewrite the uncompressed size a zip declares for ``name`` (local header and central directory)."""
    patched = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(name)
    patched[info.header_offset + 22 : info.header_offset + 26] = size.to_bytes(4, "little")
    central = 0
    while True:
        central = data.index(b"PK\x01\x02", central)
        length = int.from_bytes(data[central + 28 : central + 30], "little")
        if data[central + 46 : central + 46 + length] == name.encode():
            patched[central + 24 : central + 28] = size.to_bytes(4, "little")
            return bytes(patched)
        central += 46


def test_a_member_lying_about_its_size_is_not_inflated_past_its_claim(
    bundle: bytes, signing_key: Ed25519PrivateKey
) -> None:
    lying = _understate_size(bundle, "model.skops", 1000)
    with pytest.raises(BundleError, match="^zip: cannot read member 'model.skops'"):
        open_bundle(lying, [signing_key.public_key()])


def test_a_model_for_a_newer_device_is_refused(
    manifest: dict[str, Any], model_bytes: bytes, signing_key: Ed25519PrivateKey
) -> None:
    newer = build_bundle({**manifest, "min_device_version": "99.0"}, model_bytes, signing_key)
    with pytest.raises(BundleError, match=r"^compatibility: the model needs device version 99\.0"):
        open_bundle(newer, [signing_key.public_key()])


# --------------------------------------------------------------------------- writing


def test_write_bundle_is_atomic_and_refuses_what_a_device_would_refuse(
    manifest: dict[str, Any], model_bytes: bytes, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    out = tmp_path / "model.zip"
    out.write_bytes(b"old bundle")
    with pytest.raises(BundleError, match="^manifest: unknown key 'extra'"):
        write_bundle(out, {**manifest, "extra": 1}, model_bytes, signing_key)
    assert out.read_bytes() == b"old bundle"
    write_bundle(out, manifest, model_bytes, signing_key)
    assert open_bundle(out, [signing_key.public_key()]).model_bytes == model_bytes
    assert sorted(os.listdir(tmp_path)) == ["model.zip"]
    first_keys = list(json.loads(members(out.read_bytes())["manifest.json"]))
    assert first_keys[:6] == ["schema_version", "model_id", "version", "created_at", "key_id", "runtime"]


# --------------------------------------------------------------------------- runtimes


def test_the_device_runtime_predicts_what_the_fitted_pipeline_predicts(
    bundle: bytes, signing_key: Ed25519PrivateKey, forest: Pipeline, examples: tuple[np.ndarray, ...]
) -> None:
    verified = open_bundle(bundle, [signing_key.public_key()])
    runtime = load_runtime(verified)
    assert isinstance(runtime, SklearnRuntime)
    assert runtime.labels == CLASSES and runtime.columns == examples[2]
    X = examples[0]
    assert np.isnan(X).any()
    np.testing.assert_array_equal(runtime.predict_proba(X), forest.predict_proba(X))
    assert check_samples(runtime, verified.manifest) == 0.0
    with pytest.raises(ValueError, match="expected rows of shape"):
        runtime.predict_proba(X[:, :-1])


def test_samples_the_runtime_does_not_reproduce_fail_the_smoke_test(
    manifest: dict[str, Any], model_bytes: bytes, signing_key: Ed25519PrivateKey
) -> None:
    wrong = json.loads(json.dumps(manifest))
    wrong["samples"]["probabilities"][0] = [p + 1e-3 for p in wrong["samples"]["probabilities"][0]]
    verified = open_bundle(build_bundle(wrong, model_bytes, signing_key), [signing_key.public_key()])
    with pytest.raises(BundleError, match="^smoke test: sample probabilities differ by"):
        check_samples(load_runtime(verified), verified.manifest)


def test_labels_in_another_order_than_the_model_classes_are_refused(
    manifest: dict[str, Any], model_bytes: bytes, signing_key: Ed25519PrivateKey
) -> None:
    swapped = {**manifest, "labels": list(reversed(manifest["labels"]))}
    verified = open_bundle(build_bundle(swapped, model_bytes, signing_key), [signing_key.public_key()])
    with pytest.raises(BundleError, match="^runtime: the model's classes"):
        load_runtime(verified)


def _function_transformer_pipeline(X: np.ndarray, y: np.ndarray) -> bytes:
    steps = [("sin", FunctionTransformer(np.sin)), ("impute", SimpleImputer()), ("scale", StandardScaler())]
    return skops.io.dumps(Pipeline([*steps, ("classify", RandomForestClassifier(n_estimators=2))]).fit(X, y))


def _unknown_module(X: np.ndarray, y: np.ndarray) -> bytes:
    """A skops file naming a module that does not exist: loading it would try to import ``evil``."""
    source = zipfile.ZipFile(io.BytesIO(_function_transformer_pipeline(X, y)))
    buffer = io.BytesIO()
    with source, zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            payload = source.read(info)
            if info.filename == "schema.json":
                payload = payload.replace(b'"sklearn.preprocessing._function_transformer"', b'"evil"')
            target.writestr(info, payload)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "named"),
    [(_function_transformer_pipeline, "FunctionTransformer"), (_unknown_module, "evil.FunctionTransformer")],
)
def test_skops_types_outside_the_allowlist_are_refused_before_loading(
    make: Callable[[np.ndarray, np.ndarray], bytes],
    named: str,
    manifest: dict[str, Any],
    signing_key: Ed25519PrivateKey,
    examples: tuple[np.ndarray, np.ndarray, tuple[str, ...]],
) -> None:
    X, y, _ = examples
    data = make(X, y)
    with pytest.raises(
        BundleError, match=f"^types: model.skops contains types outside the allowlist: .*{named}"
    ):
        check_skops_types(data)
    # signed and hashed correctly: only the type check stands between it and skops
    verified = open_bundle(build_bundle(manifest, data, signing_key), [signing_key.public_key()])
    with pytest.raises(BundleError, match="^types: .*sin"):
        load_runtime(verified)


def test_the_device_modules_import_no_heavy_or_trainer_code() -> None:
    """skops (about 2 s), scikit-learn, pandas and the trainer load only when a bundle needs them."""
    heavy = ("skops", "sklearn", "pandas", "trainer", "ai_edge_litert")
    code = f"import sys, device.model.runtimes; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
