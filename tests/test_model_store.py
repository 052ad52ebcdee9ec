"""The model store on the device: install, list, activate, rollback, pruning, restart, every refusal.

Real bundles exported by the trainer from the session's trained model, real SQLite files, the
real ``python -m device models`` entry point. Each refusal must name its step and leave the
previously active version active.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import PoseBundle
from model_bundles import BadBundle, bad_bundles, members, padded, resigned, size_limit, versions_of

from device.__main__ import main as device_main
from device.config import ConfigError, parse_config
from device.model.store import ModelRejected, ModelStore


@pytest.fixture(scope="module")
def versions(pose_model: PoseBundle, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Bundles of versions 1.0.0 (the fixture's), 2.0.0 and 3.0.0 of the same trained model."""
    return versions_of(pose_model, tmp_path_factory.mktemp("versions"), "2.0.0", "3.0.0")


@pytest.fixture(scope="module")
def bad(
    versions: dict[str, bytes], pose_model: PoseBundle, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, BadBundle]:
    good = versions["1.0.0"]
    return bad_bundles(good, pose_model, tmp_path_factory.mktemp("bad"), size_limit(good))


def open_store(state: Path, model: PoseBundle, versions: dict[str, bytes], keep: int = 3) -> ModelStore:
    limit = size_limit(versions["1.0.0"])
    return ModelStore(state, [model.public_key], keep_versions=keep, max_bundle_bytes=limit)


@pytest.fixture
def store(tmp_path: Path, pose_model: PoseBundle, versions: dict[str, bytes]) -> ModelStore:
    return open_store(tmp_path / "state", pose_model, versions)


def stored_files(store: ModelStore) -> list[str]:
    """The bundle files (and any leftover), without the registry and the rollback and revocation state."""
    state = ("registry", "rollback.json", "revocations.json")
    return sorted(path.name for path in store.folder.iterdir() if not path.name.startswith(state))


def test_install_list_and_a_new_store_on_the_same_folder(
    store: ModelStore, versions: dict[str, bytes], pose_model: PoseBundle
) -> None:
    assert store.active() is None and store.list() == []
    first = store.install(versions["1.0.0"])
    assert first.changed and first.previous is None and first.model is not None
    assert first.model.info.version == "1.0.0"
    second = store.install(versions["2.0.0"])
    assert second.as_dict() == {
        "version": "2.0.0",
        "model_id": "poses",
        "status": "active",
        "previous": "1.0.0",
        "changed": True,
        "detail": "poses 2.0.0 is active (previous: 1.0.0)",
    }
    listed = store.list()
    assert [(m["version"], m["status"]) for m in listed] == [("2.0.0", "active"), ("1.0.0", "available")]
    manifest = json.loads(members(versions["2.0.0"])["manifest.json"])
    assert listed[0]["sha256"] == manifest["sha256"]  # the model file's, as model/state shows it
    assert listed[0]["model_id"] == "poses" and listed[0]["runtime"] == "sklearn"
    assert listed[0]["installed_at"].endswith("+00:00")
    assert "Squat" in listed[0]["labels"]
    # the bundles are stored byte for byte, the registry is in WAL mode
    assert (store.folder / "2.0.0.zip").read_bytes() == versions["2.0.0"]
    assert stored_files(store) == ["1.0.0.zip", "2.0.0.zip"]
    with sqlite3.connect(store.registry) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    again = open_store(store.folder.parent, pose_model, versions)  # a restart
    assert again.active() == "2.0.0" and again.list() == listed


def test_installing_the_active_version_again_changes_nothing_unless_forced(
    store: ModelStore, versions: dict[str, bytes]
) -> None:
    store.install(versions["1.0.0"])
    same = store.install(versions["1.0.0"])
    assert not same.changed and same.model is None
    assert same.detail == "poses 1.0.0 is already active; nothing changed (force reloads it)"
    assert store.install(versions["1.0.0"], force=True).changed
    assert not store.activate("1.0.0").changed and store.activate("1.0.0", force=True).changed
    assert [m["version"] for m in store.list()] == ["1.0.0"]


def test_activate_rolls_back_and_forward_without_force(store: ModelStore, versions: dict[str, bytes]) -> None:
    store.install(versions["1.0.0"])
    store.install(versions["2.0.0"])
    back = store.activate("1.0.0")
    assert back.changed and back.rolled_back and back.previous == "2.0.0"
    assert back.detail == "poses 1.0.0 is active (rolled back from 2.0.0)"
    assert store.active() == "1.0.0"
    forward = store.activate("2.0")  # numerically the same version as 2.0.0
    assert forward.version == "2.0.0" and not forward.rolled_back and store.active() == "2.0.0"
    with pytest.raises(ModelRejected, match=r"^activate: version '7.0.0' is not stored \(stored: "):
        store.activate("7.0.0")
    with pytest.raises(ModelRejected, match="^activate: version '../../etc' is not stored"):
        store.activate("../../etc")
    assert store.active() == "2.0.0"


def test_a_downgrade_to_a_version_that_ran_needs_force_and_is_then_a_rollback(
    store: ModelStore, versions: dict[str, bytes]
) -> None:
    store.install(versions["1.0.0"])
    store.install(versions["2.0.0"])
    (store.folder / "1.0.0.zip").unlink()  # gone from disk, as a pruned version is: installed again
    with pytest.raises(ModelRejected) as refused:
        store.install(versions["1.0.0"])
    assert refused.value.step == "compatibility"
    assert str(refused.value).startswith("compatibility: version 1.0.0 is older than the active 2.0.0")
    assert store.active() == "2.0.0" and stored_files(store) == ["2.0.0.zip"]
    forced = store.install(versions["1.0.0"], force=True)
    assert forced.rolled_back and store.active() == "1.0.0"


def test_keep_versions_prunes_but_keeps_the_active_and_the_previous_one(
    tmp_path: Path, pose_model: PoseBundle, versions: dict[str, bytes]
) -> None:
    store = open_store(tmp_path, pose_model, versions, keep=1)
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        store.install(versions[version])
    assert [m["version"] for m in store.list()] == ["3.0.0", "2.0.0"]  # 1 kept + the previous one
    assert stored_files(store) == ["2.0.0.zip", "3.0.0.zip"]
    assert store.activate("2.0.0").rolled_back  # the rollback target survived
    with pytest.raises(ModelRejected, match="^activate: version '1.0.0' is not stored"):
        store.activate("1.0.0")

    roomy = open_store(tmp_path / "roomy", pose_model, versions, keep=3)
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        roomy.install(versions[version])
    roomy.activate("1.0.0")  # the most recently activated are kept, whatever their number
    assert [m["version"] for m in roomy.list()] == ["3.0.0", "2.0.0", "1.0.0"]


def test_each_bad_bundle_is_refused_at_its_step_and_the_previous_version_stays(
    store: ModelStore, versions: dict[str, bytes], bad: dict[str, BadBundle]
) -> None:
    store.install(versions["1.0.0"])
    before = (store.list(), stored_files(store))
    for case in bad.values():
        with pytest.raises(ModelRejected) as refused:
            store.install(case.data)
        assert str(refused.value).startswith(case.refusal), case.name
        assert isinstance(refused.value, ValueError)  # the web API turns it into a 422
        assert (store.list(), stored_files(store)) == before, case.name
        assert store.active() == "1.0.0"


def test_the_size_limit_is_the_stores(store: ModelStore, versions: dict[str, bytes]) -> None:
    big = padded(versions["2.0.0"], store.max_bundle_bytes)
    with pytest.raises(
        ModelRejected, match=f"^verify: size: bundle is larger than the limit of {store.max_bundle_bytes}"
    ):
        store.install(big)
    roomy = ModelStore(store.folder.parent / "roomy", store.trusted_keys)
    assert roomy.install(big).version == "2.0.0"


def test_a_version_number_cannot_be_reused_for_another_bundle_without_force(
    store: ModelStore, versions: dict[str, bytes], pose_model: PoseBundle
) -> None:
    store.install(versions["1.0.0"])
    store.install(versions["2.0.0"])
    other = resigned(versions["1.0.0"], pose_model.signing_key, metrics={"macro_f1": 0.5})
    with pytest.raises(
        ModelRejected, match="^compatibility: version 1.0.0 is already stored with a different"
    ):
        store.install(other)
    assert store.active() == "2.0.0"
    replaced = store.install(other, force=True)
    assert replaced.rolled_back and (store.folder / "1.0.0.zip").read_bytes() == other


def test_a_stored_bundle_is_verified_again_when_it_is_loaded(
    store: ModelStore, versions: dict[str, bytes]
) -> None:
    store.install(versions["1.0.0"])
    store.install(versions["2.0.0"])
    stored = store.folder / "1.0.0.zip"
    stored.write_bytes(versions["3.0.0"])  # validly signed, but not what was installed as 1.0.0
    with pytest.raises(ModelRejected, match=r"^verify: 1.0.0.zip changed on disk"):
        store.activate("1.0.0")
    stored.unlink()
    with pytest.raises(ModelRejected, match=r"^verify: .*1.0.0.zip: cannot read"):
        store.activate("1.0.0")
    assert store.active() == "2.0.0"


def test_a_trusted_key_file_that_cannot_be_read_is_a_verify_failure(
    tmp_path: Path, versions: dict[str, bytes]
) -> None:
    store = ModelStore(tmp_path, [tmp_path / "missing.pub"])
    with pytest.raises(ModelRejected, match=r"^verify: key: .*missing.pub: cannot read"):
        store.install(versions["1.0.0"])


def test_concurrent_changes_and_reads_stay_consistent(store: ModelStore, versions: dict[str, bytes]) -> None:
    """HTTP threads call the store while others read it: every read sees exactly one active version."""
    store.install(versions["1.0.0"])
    store.install(versions["2.0.0"])
    failures: list[BaseException] = []

    def switch(version: str) -> None:
        try:
            for _ in range(5):
                store.activate(version, force=True)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    writers = [threading.Thread(target=switch, args=(v,)) for v in ("1.0.0", "2.0.0")]
    for writer in writers:
        writer.start()
    while any(writer.is_alive() for writer in writers):  # bounded: ten activations
        listed = store.list()
        assert [m["status"] for m in listed].count("active") == 1
        assert store.active() in {"1.0.0", "2.0.0"}
    for writer in writers:
        writer.join()
    assert failures == []
    assert [m["version"] for m in store.list()] == ["2.0.0", "1.0.0"]


def test_a_damaged_registry_is_moved_aside(tmp_path: Path, pose_model: PoseBundle) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "registry.sqlite").write_bytes(b"this is not a database" * 100)
    store = ModelStore(tmp_path, [pose_model.public_key])
    assert store.active() is None
    assert [p.name for p in folder.glob("registry.sqlite.corrupt-*")]


# --------------------------------------------------------------------------- rollback protection


def floors(store: ModelStore) -> dict[str, Any]:
    return json.loads((store.folder / "rollback.json").read_text())["models"]


def test_force_cannot_install_an_older_version_this_kiosk_never_ran(
    store: ModelStore, versions: dict[str, bytes]
) -> None:
    """Issue 14 finding 9: a stolen token and any old signed bundle used to be a forced rollback."""
    store.install(versions["1.0.0"])
    store.install(versions["3.0.0"])
    with pytest.raises(ModelRejected) as refused:
        store.install(versions["2.0.0"], force=True)
    assert str(refused.value) == (
        "rollback: poses 2.0.0 is older than 3.0.0, the newest poses this kiosk ran, and it never "
        "ran here, which force does not change: export the model again with a version above 3.0.0 "
        "and install that"
    )
    assert store.active() == "3.0.0" and stored_files(store) == ["1.0.0.zip", "3.0.0.zip"]
    assert floors(store) == {"poses": {"floor": "1.0.0", "ran": ["1.0.0", "3.0.0"]}}
    assert store.activate("1.0.0").rolled_back  # what did run here stays a rollback target

    fresh = ModelStore(store.folder.parent / "fresh", store.trusted_keys)
    fresh.install(versions["3.0.0"])
    below = "^rollback: poses 1.0.0 is below this kiosk's version floor 3.0.0"
    with pytest.raises(ModelRejected, match=below):
        fresh.install(versions["1.0.0"], force=True)


def test_the_floor_rises_as_versions_are_pruned_and_nothing_goes_below_it(
    tmp_path: Path, pose_model: PoseBundle, versions: dict[str, bytes]
) -> None:
    store = open_store(tmp_path, pose_model, versions, keep=1)  # keeps 2: the active and the previous
    store.install(versions["1.0.0"])
    store.install(versions["2.0.0"])
    assert floors(store)["poses"] == {"floor": "1.0.0", "ran": ["1.0.0", "2.0.0"]}
    store.install(versions["3.0.0"])  # 1.0.0 is pruned: the floor rises to the oldest kept
    assert floors(store)["poses"] == {"floor": "2.0.0", "ran": ["2.0.0", "3.0.0"]}
    below = "rollback: poses 1.0.0 is below this kiosk's version floor 2.0.0, which force does not lower"
    with pytest.raises(ModelRejected, match=f"^{below}: export the model again with a version above 3.0.0"):
        store.install(versions["1.0.0"], force=True)  # it ran here once, but is below the floor
    assert store.activate("2.0.0").rolled_back  # a rollback to what the store keeps stays possible

    again = open_store(tmp_path, pose_model, versions, keep=1)  # a restart
    with pytest.raises(ModelRejected, match=f"^{below}"):
        again.install(versions["1.0.0"], force=True)

    # a damaged registry is moved aside and forgotten; the floors are not
    (again.folder / "registry.sqlite").write_bytes(b"this is not a database" * 100)
    for sidecar in ("registry.sqlite-wal", "registry.sqlite-shm"):
        (again.folder / sidecar).unlink(missing_ok=True)
    reset = open_store(tmp_path, pose_model, versions, keep=1)
    assert reset.active() is None
    with pytest.raises(ModelRejected, match=f"^{below}"):
        reset.install(versions["1.0.0"], force=True)
    assert reset.install(versions["2.0.0"], force=True).version == "2.0.0"  # ran here, at the floor


@pytest.mark.parametrize("damage", ["missing", "damaged"])
def test_a_missing_or_damaged_floor_file_never_lowers_a_floor(
    tmp_path: Path, pose_model: PoseBundle, versions: dict[str, bytes], damage: str
) -> None:
    store = open_store(tmp_path, pose_model, versions)
    for version in ("1.0.0", "2.0.0"):
        store.install(versions[version])
    assert store.activate("1.0.0").rolled_back and store.activate("2.0.0").changed  # both allowed
    state = store.folder / "rollback.json"
    if damage == "missing":
        state.unlink()
    else:
        state.write_text('{"format": 1, "models": {"poses": {"floor": "0"')

    reopened = open_store(tmp_path, pose_model, versions)
    assert reopened.activate("2.0.0", force=True).changed  # the running version loads, as at start
    with pytest.raises(ModelRejected) as refused:
        reopened.activate("1.0.0")
    message = str(refused.value)
    assert message.startswith(
        "rollback: poses 1.0.0 is below this kiosk's version floor 2.0.0, which force does not lower"
    )
    assert f"(the floors were rebuilt: rollback.json was {damage}" in message
    assert reopened.active() == "2.0.0"
    assert floors(reopened) == {"poses": {"floor": "2.0.0", "ran": ["2.0.0"]}}
    assert len(list(reopened.folder.glob("rollback.json.corrupt-*"))) == (damage == "damaged")
    assert reopened.install(versions["3.0.0"]).changed  # a newer version is the way forward


def test_a_refused_rollback_is_one_line_from_the_models_command(
    tmp_path: Path, pose_model: PoseBundle, versions: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(write_config(tmp_path, pose_model))
    for version in ("2.0.0", "1.0.0"):
        (tmp_path / f"{version}.zip").write_bytes(versions[version])
    assert device_main(["models", "install", str(tmp_path / "2.0.0.zip"), "--config", config]) == 0
    capsys.readouterr()
    status = device_main(["models", "install", str(tmp_path / "1.0.0.zip"), "--force", "--config", config])
    out, err = capsys.readouterr()
    assert (status, out) == (2, "") and len(err.splitlines()) == 1
    assert err.startswith("device models: error: rollback: poses 1.0.0 is below this kiosk's version floor")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"keep_versions": 0}, "model.keep_versions: Input should be greater than or equal to 1"),
        ({"max_bundle_mb": 0}, "model.max_bundle_mb: Input should be greater than 0"),
    ],
)
def test_model_settings_are_validated(model: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"source": {"kind": "camera"}, "model": model}, env={})


# --------------------------------------------------------------------------- the CLI


def write_config(tmp_path: Path, model: PoseBundle) -> Path:
    path = tmp_path / "device.toml"
    path.write_text(
        f'[device]\nstate_dir = "{tmp_path / "state"}"\n'
        '[source]\nkind = "camera"\n'
        f'[model]\ntrusted_keys = ["{model.public_key}"]\nkeep_versions = 2\n'
    )
    return path


def test_models_commands(
    tmp_path: Path, pose_model: PoseBundle, versions: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(write_config(tmp_path, pose_model))
    files = {}
    for version, data in versions.items():
        files[version] = tmp_path / f"{version}.zip"
        files[version].write_bytes(data)

    def run(*argv: str) -> tuple[int, str, str]:
        status = device_main(["models", *argv, "--config", config])
        out, err = capsys.readouterr()
        return status, out, err

    assert run("list") == (0, f"no models in {tmp_path / 'state' / 'models'}\n", "")
    assert run("install", str(files["1.0.0"])) == (0, "poses 1.0.0 is active\n", "")
    assert run("install", str(files["2.0.0"])) == (0, "poses 2.0.0 is active (previous: 1.0.0)\n", "")
    status, out, _ = run("list")
    lines = out.splitlines()
    assert status == 0 and len(lines) == 2
    assert lines[0].split()[:3] == ["2.0.0", "active", "poses"] and lines[1].split()[:2] == [
        "1.0.0",
        "available",
    ]
    assert run("activate", "1.0.0") == (0, "poses 1.0.0 is active (rolled back from 2.0.0)\n", "")

    status, out, err = run("install", str(files["2.0.0"]))  # newer than the active 1.0.0: fine
    assert status == 0
    status, out, err = run("install", str(files["1.0.0"]))
    assert status == 2 and out == "" and err.startswith("device models: error: compatibility: version 1.0.0")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert run("install", str(files["1.0.0"]), "--force")[0] == 0

    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"not a zip")
    status, out, err = run("install", str(corrupt))
    assert (status, out) == (2, "") and err.startswith(
        "device models: error: verify: zip: not a readable zip"
    )
    status, _, err = run("install", str(tmp_path / "missing.zip"))
    assert status == 2 and err.startswith("device models: error: verify: ") and "cannot read" in err
    status, _, err = run("activate", "3.0.0")
    assert (
        status == 2
        and err == "device models: error: activate: version '3.0.0' is not stored (stored: 1.0.0, 2.0.0)\n"
    )

    # the daemon's store sees what the command did
    store = ModelStore(tmp_path / "state", [pose_model.public_key])
    assert store.active() == "1.0.0" and (store.folder / "1.0.0.zip").read_bytes() == versions["1.0.0"]
