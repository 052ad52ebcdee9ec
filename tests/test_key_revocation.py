"""Key revocation (issue 14, finding 9): a signed list of revoked key ids that kiosks honour.

Two real trusted keys: the "old" one signed the session's model versions, the "new" one is
what rotation adds and what signs the list. The model store with real files; the trainer's
``revoke-key`` command as a user runs it; a real daemon (real MediaPipe on a real video, a real
mosquitto) receiving the list over real HTTP and starting again with it in force.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto, Subscriber
from conftest import PoseBundle, eventually
from model_bundles import resigned, size_limit, versions_of
from test_model_api import AUTH, TOPIC, call, keeps_classifying, kiosk, snapshot

from device.config import Config
from device.daemon import Daemon
from device.model.bundle import key_id, load_private_key, manifest_bytes_of
from device.model.revocation import KIND, RevocationRejected, build_revocations
from device.model.store import ModelRejected, ModelStore, open_model
from trainer.__main__ import main as trainer


@dataclass(frozen=True)
class Keys:
    folder: Path  # both public keys, and where a kiosk looks for revocations.json
    old: Path  # the session model's private key
    new: Path
    old_id: str
    new_id: str

    @property
    def trusted(self) -> list[Path]:
        return [self.folder / "old.pub", self.folder / "new.pub"]


@pytest.fixture
def keys(tmp_path: Path, pose_model: PoseBundle) -> Keys:
    assert trainer(["keygen", "--out", str(tmp_path / "rotated")]) == 0
    folder = tmp_path / "trusted"
    folder.mkdir()
    shutil.copy(pose_model.public_key, folder / "old.pub")
    shutil.copy(tmp_path / "rotated" / "signing.pub", folder / "new.pub")
    old, new = pose_model.signing_key, tmp_path / "rotated" / "signing.key"
    return Keys(folder, old, new, key_id(load_private_key(old)), key_id(load_private_key(new)))


@pytest.fixture(scope="module")
def versions(pose_model: PoseBundle, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return versions_of(pose_model, tmp_path_factory.mktemp("versions"), "2.0.0")


def revocations(key: Path, revoked: list[str], serial: int) -> bytes:
    return build_revocations(revoked, serial, load_private_key(key))


def signed_as_is(key: Path, **content: Any) -> bytes:
    """A list with exactly ``content``, signed: for lists the builder itself refuses to make."""
    private = load_private_key(key)
    signed = {"kind": KIND, "serial": 1, "issued_at": "2026-05-01T10:00:00+00:00", "key_id": key_id(private)}
    signed.update(content)
    return json.dumps({"signed": signed, "signature": private.sign(manifest_bytes_of(signed)).hex()}).encode()


def open_store(state: Path, keys: Keys, versions: dict[str, bytes]) -> ModelStore:
    return ModelStore(state, keys.trusted, max_bundle_bytes=size_limit(versions["1.0.0"]))


# --------------------------------------------------------------------------- the model store


def test_a_revoked_key_signs_nothing_a_kiosk_installs_or_loads_again(
    tmp_path: Path, keys: Keys, versions: dict[str, bytes]
) -> None:
    store = open_store(tmp_path / "state", keys, versions)
    store.install(versions["1.0.0"])  # signed by the old key
    accepted = store.accept_revocations(revocations(keys.new, [keys.old_id], 1))
    assert accepted.as_dict() == {
        "serial": 1,
        "signer": keys.new_id,
        "revoked": [keys.old_id],
        "changed": True,
        "detail": "key revocation list serial 1 is now in force (1 key(s) revoked)",
    }
    refusal = f"verify: revoked: signed by key {keys.old_id}, which the key revocation list in force revokes"
    with pytest.raises(ModelRejected, match=f"^{refusal}"):
        store.install(versions["2.0.0"])
    with pytest.raises(ModelRejected, match=f"^{refusal}"):
        store.activate("1.0.0", force=True)  # what the daemon does at start

    restarted = open_store(tmp_path / "state", keys, versions)
    with pytest.raises(ModelRejected, match=f"^{refusal}"):
        restarted.activate("1.0.0", force=True)
    rotated = resigned(versions["2.0.0"], keys.new, version="3.0.0")
    assert restarted.install(rotated).version == "3.0.0"


def test_a_list_is_refused_unless_it_is_newer_signed_by_an_unrevoked_key_and_keeps_every_revocation(
    tmp_path: Path, keys: Keys, versions: dict[str, bytes], pose_model: PoseBundle
) -> None:
    other = "0123456789abcdef"
    store = open_store(tmp_path / "state", keys, versions)
    second = revocations(keys.new, [keys.old_id, other], 2)
    assert store.accept_revocations(second).changed
    assert not store.accept_revocations(second).changed  # delivered twice: nothing changes
    assert trainer(["keygen", "--out", str(tmp_path / "stranger")]) == 0
    flipped = json.loads(second)
    flipped["signed"]["serial"] = 3
    refused = {
        "older": revocations(keys.new, [keys.old_id, other], 1),
        "same serial, other keys": revocations(keys.new, [keys.old_id], 2),
        "drops a revoked key": revocations(keys.new, [keys.old_id], 3),
        "signed by a revoked key": revocations(keys.old, [other, "fedcba9876543210"], 3),
        "revokes its signer": signed_as_is(keys.new, serial=3, revoked=[keys.old_id, keys.new_id]),
        "untrusted signer": revocations(tmp_path / "stranger" / "signing.key", [keys.new_id], 3),
        "edited after signing": json.dumps(flipped).encode(),
        "not JSON": b"revoked: everything",
    }
    messages = {}
    for case, data in refused.items():
        with pytest.raises(RevocationRejected) as error:
            store.accept_revocations(data)
        assert isinstance(error.value, ValueError)  # the web API answers 422
        messages[case] = str(error.value)
    assert messages == {
        "older": "revocations: serial 1 is not newer than the list in force (serial 2): make the new list "
        "from the newest one (python -m trainer revoke-key … --out THAT_FILE)",
        "same serial, other keys": "revocations: serial 2 is not newer than the list in force (serial 2): "
        "make the new list from the newest one (python -m trainer revoke-key … --out THAT_FILE)",
        "drops a revoked key": f"revocations: it no longer revokes {other}, which the list in force (serial "
        "2) revokes: a revocation is permanent; make the new list from the newest one",
        "signed by a revoked key": f"revocations: signed by key {keys.old_id}, which the list in force "
        "(serial 2) revokes: a revoked key cannot sign a newer list",
        "revokes its signer": f"revocations: key {keys.new_id} cannot revoke itself: sign the list with "
        "another trusted key (python -m trainer keygen, then add its public key to the kiosks first)",
        "untrusted signer": "revocations: signature: the revocation list's signature does not verify "
        "with any trusted key",
        "edited after signing": "revocations: signature: the revocation list's signature does not verify "
        "with any trusted key",
        "not JSON": "revocations: the list is not valid JSON (Expecting value: line 1 column 1 (char 0))",
    }
    assert store.revocations.in_force is not None and store.revocations.in_force.serial == 2


def test_the_list_beside_the_trusted_keys_is_read_at_start_and_a_damaged_one_is_reported(
    tmp_path: Path, keys: Keys, versions: dict[str, bytes]
) -> None:
    state = tmp_path / "state"
    open_store(state, keys, versions).install(versions["1.0.0"])
    (keys.folder / "revocations.json").write_bytes(revocations(keys.new, [keys.old_id], 1))
    store = open_store(state, keys, versions)
    assert store.revocations.revoked == {keys.old_id} and store.revocations.problems == []
    with pytest.raises(ModelRejected, match="^verify: revoked: "):
        store.activate("1.0.0", force=True)
    kept = state / "models" / "revocations.json"
    assert kept.read_bytes() == (keys.folder / "revocations.json").read_bytes()  # kept in the state

    kept.write_bytes(kept.read_bytes()[:-40])  # a damaged copy in the state: moved aside, reported
    (keys.folder / "revocations.json").write_text("{}")
    damaged = open_store(state, keys, versions)
    assert damaged.revocations.revoked == frozenset()
    assert [line.split(": ", 1)[1][:30] for line in damaged.revocations.problems] == [
        "revocations: the list is not v",
        "revocations: missing key 'sign",
    ]
    assert "(moved aside as revocations.json.corrupt-" in damaged.revocations.problems[0]
    assert len(list((state / "models").glob("revocations.json.corrupt-*"))) == 1


def test_replay_and_the_python_api_honour_the_list_beside_the_keys(
    tmp_path: Path, keys: Keys, pose_model: PoseBundle
) -> None:
    assert open_model(pose_model.bundle, keys.trusted).info.version == "1.0.0"
    (keys.folder / "revocations.json").write_bytes(revocations(keys.new, [keys.old_id], 1))
    with pytest.raises(ModelRejected, match=f"^verify: revoked: signed by key {keys.old_id}"):
        open_model(pose_model.bundle, keys.trusted)


# --------------------------------------------------------------------------- the workstation command


def test_revoke_key_writes_a_list_each_run_extends_and_refuses_mistakes_in_one_line(
    tmp_path: Path, keys: Keys, versions: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "revocations.json"
    signing = ["--key", str(keys.new), "--out", str(out)]
    assert trainer(["revoke-key", str(keys.folder / "old.pub"), *signing]) == 0
    first = capsys.readouterr().out
    assert first == f"wrote {out}: serial 1, revoking {keys.old_id}; signed by key {keys.new_id}\n"
    other = "0123456789abcdef"
    assert trainer(["revoke-key", other, *signing]) == 0
    assert f"serial 2, revoking {', '.join(sorted([other, keys.old_id]))}" in capsys.readouterr().out
    store = open_store(tmp_path / "state", keys, versions)
    assert store.accept_revocations(out.read_bytes()).as_dict()["revoked"] == sorted([keys.old_id, other])

    garbage = tmp_path / "garbage.json"
    garbage.write_text("not a list")
    mistakes = [
        (
            [keys.new_id, *signing],
            f"--key {keys.new} is key {keys.new_id}, which this list revokes: sign with another key",
        ),
        ([other, "--key", str(keys.old), "--out", str(out)], f"--key {keys.old} is key {keys.old_id}, which"),
        (["old.pub", *signing], "KEY 'old.pub': neither a key id (16 lowercase hex digits) nor a public key"),
        ([other, "--key", str(keys.new), "--out", str(garbage)], f"--out {garbage}: cannot extend it ("),
    ]
    for argv, message in mistakes:
        case = argv[0]
        assert trainer(["revoke-key", *argv]) == 2, case
        err = capsys.readouterr().err
        assert err.startswith(f"trainer revoke-key: error: {message}"), (case, err)
        assert len(err.splitlines()) == 1, case
    with pytest.raises(SystemExit):
        trainer(["revoke-key", "--help"])
    assert "Examples:\n  python -m trainer revoke-key " in capsys.readouterr().out


# --------------------------------------------------------------------------- a running kiosk


def test_a_kiosk_takes_a_list_over_http_and_no_longer_loads_the_revoked_model_at_start(
    tmp_path: Path,
    keys: Keys,
    pose_model: PoseBundle,
    versions: dict[str, bytes],
    data_dir: Path,
    run_daemon: Callable[[Config], Daemon],
) -> None:
    limit = size_limit(versions["1.0.0"])
    listed = revocations(keys.new, [keys.old_id], 1)
    with Mosquitto() as broker, Subscriber(broker.port, f"{TOPIC}/#") as sub:
        configured = kiosk(tmp_path / "state", pose_model, data_dir, limit, broker.port)
        model = configured.model.model_copy(update={"trusted_keys": keys.trusted})
        config = configured.model_copy(update={"model": model})
        daemon = run_daemon(config)
        keeps_classifying(daemon, "1.0.0")  # the configured bundle, signed by the old key

        assert call(daemon, "/api/keys/revocations", listed, {})[0] == 401
        status, body = call(daemon, "/api/keys/revocations", listed, AUTH)
        assert status == 200 and body["changed"] and body["revoked"] == [keys.old_id]
        assert body["detail"].endswith(
            f"poses 1.0.0 is signed by revoked key {keys.old_id}; it will not load at the next start: "
            "install one signed by another key"
        )
        assert snapshot(daemon)["model"]["status"] == "rejected"
        keeps_classifying(daemon, "1.0.0")  # it runs until a replacement arrives
        status, body = call(daemon, "/api/models", versions["2.0.0"], AUTH)
        assert status == 422 and body["error"].startswith(f"verify: revoked: signed by key {keys.old_id}")
        assert call(daemon, "/api/keys/revocations", listed, AUTH)[1]["changed"] is False
        status, body = call(daemon, "/api/keys/revocations", b"[]", AUTH)
        assert status == 422 and body["error"].startswith("revocations: ")
        daemon.stop()

        restarted = run_daemon(config)  # the active 1.0.0 and the configured bundle: both refused
        state = sub.wait_until(
            f"{TOPIC}/model/state",
            lambda m: "verify: revoked: " in m.json().get("detail", "") and m.json()["version"] is None,
            timeout=15,
        ).json()
        assert state["status"] == "rejected"
        assert snapshot(restarted)["model"] is None
        rotated = resigned(versions["2.0.0"], keys.new, version="3.0.0")
        status, body = call(restarted, "/api/models", rotated, AUTH)
        assert status == 201, body
        eventually(lambda: snapshot(restarted)["model"] is not None, 10, "the rotated model")
        keeps_classifying(restarted, "3.0.0")
