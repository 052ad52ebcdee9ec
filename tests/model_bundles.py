"""Real model versions and bad bundles for the model store's tests (device and over HTTP).

Every bad bundle is made from a real, validly signed one: re-zipped without a member, with a
flipped byte, an edited manifest, a zip-slip name, an extra member; or signed properly but by
another key, with sample probabilities the model does not reproduce, or for a newer device.
Each comes with the start of the refusal it must cause (``"<step>: <check>"``).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import PoseBundle

from device.model.bundle import MANIFEST, build_bundle, load_private_key

MODEL = "model.skops"
SIZE_MARGIN = 4096


def versions_of(model: PoseBundle, work: Path, *versions: str) -> dict[str, bytes]:
    """The fixture's bundle (1.0.0) and its run exported again as each of ``versions``.

    The export runs through the trainer's own command, as a user would make a new version.
    """
    from trainer.__main__ import main as trainer

    made = {"1.0.0": model.bundle.read_bytes()}
    for version in versions:
        bundle = work / f"model-{version}.zip"
        command = ["export", str(model.run_dir), "--out", str(bundle), "--key", str(model.signing_key)]
        # skops like the fixture's 1.0.0, so the tampering below finds the same member
        assert trainer([*command, "--model-id", "poses", "--version", version, "--runtime", "sklearn"]) == 0
        made[version] = bundle.read_bytes()
    return made


def members(bundle: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def rezip(files: dict[str, bytes], comment: bytes = b"") -> bytes:
    """A zip of ``files`` in the given order (names taken literally, ``../evil`` included)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
        archive.comment = comment
    return buffer.getvalue()


def size_limit(good: bytes) -> int:
    """A size limit that admits every version of ``good`` (its members inflated, plus room), not padded()."""
    with zipfile.ZipFile(io.BytesIO(good)) as archive:
        return sum(info.file_size for info in archive.infolist()) + SIZE_MARGIN


def padded(bundle: bytes, limit: int) -> bytes:
    """The same valid bundle, one byte over ``limit``: behind a prefix, which zip readers skip."""
    return bytes(limit + 1 - len(bundle)) + bundle


def resigned(bundle: bytes, key: Path, **changes: Any) -> bytes:
    """The bundle's manifest with ``changes``, properly signed by ``key`` (key id and hash filled in)."""
    files = members(bundle)
    manifest = json.loads(files[MANIFEST])
    return build_bundle({**manifest, **changes}, files[MODEL], load_private_key(key))


BAD_BUNDLES = (
    "unsigned",
    "wrong key",
    "flipped byte in the model",
    "edited manifest",
    "zip slip",
    "extra member",
    "over the size limit",
    "not a zip",
    "fails its smoke test",
    "needs a newer device",
)
"""The names of :func:`bad_bundles`' cases, for parametrizing tests before the bundles exist."""


@dataclass(frozen=True)
class BadBundle:
    name: str
    data: bytes
    refusal: str
    """How ``str(ModelRejected)`` starts: the step, then the check."""


def bad_bundles(good: bytes, model: PoseBundle, work: Path, limit: int) -> dict[str, BadBundle]:
    """Every way a bundle must be refused, made from ``good`` (version 1.0.0); ``limit`` is the size limit.

    The properly signed ones carry version 9.0.0, newer than any good version, so the store's
    downgrade rule does not catch them before the step they are meant for.
    """
    from trainer.__main__ import main as trainer

    assert trainer(["keygen", "--out", str(work / "other-key")]) == 0
    other_key = work / "other-key" / "signing.key"
    files = members(good)
    manifest = json.loads(files[MANIFEST])
    flipped = bytearray(files[MODEL])
    flipped[len(flipped) // 2] ^= 0x01
    edited = json.dumps({**manifest, "labels": list(reversed(manifest["labels"]))}, indent=2).encode()
    wrong_samples = [[p + 0.01 for p in row] for row in manifest["samples"]["probabilities"]]
    made = [
        BadBundle("unsigned", rezip({MANIFEST: files[MANIFEST], MODEL: files[MODEL]}), "verify: layout:"),
        BadBundle("wrong key", resigned(good, other_key, version="9.0.0"), "verify: signature:"),
        BadBundle("flipped byte in the model", rezip({**files, MODEL: bytes(flipped)}), "verify: hash:"),
        BadBundle("edited manifest", rezip({**files, MANIFEST: edited}), "verify: signature:"),
        BadBundle("zip slip", rezip({**files, "../evil": b"x"}), "verify: layout:"),
        BadBundle("extra member", rezip({**files, "notes.txt": b"x"}), "verify: layout:"),
        BadBundle("over the size limit", padded(good, limit), "verify: size:"),
        BadBundle("not a zip", b"PK\x03\x04 but nothing else", "verify: zip:"),
        BadBundle(
            "fails its smoke test",
            resigned(
                good,
                model.signing_key,
                version="9.0.0",
                samples={**manifest["samples"], "probabilities": wrong_samples},
            ),
            "smoke test: sample probabilities differ",
        ),
        BadBundle(
            "needs a newer device",
            resigned(good, model.signing_key, version="9.0.0", min_device_version="99.0.0"),
            "compatibility: the model needs device version 99.0.0",
        ),
    ]
    assert [bundle.name for bundle in made] == list(BAD_BUNDLES)
    return {bundle.name: bundle for bundle in made}
