"""The squat/push-up recipe end to end: keygen, dataset --blazepose, train, export --activities, verify.

:func:`trainer.recipes.fitness_bundle` runs the commands a user types, in-process, on ML Kit's
812 key poses; the bundle it signs is what ``make demo`` runs, so these tests check what the demo
shows: four key poses told apart reliably, and the two rep counters signed with them. The README's
commands for the same bundle (the ``sh`` block under ``<!-- recipe: fitness -->``) run as written.
"""

from __future__ import annotations

import json
import shlex
import tomllib
from pathlib import Path

import pytest
from conftest import REPO
from test_readme_recipe import ENTRY_POINTS, MARKER, absolute, recipe_commands

from device.activity_specs import parse_activities
from device.model.bundle import Manifest, load_public_key, open_bundle
from trainer.recipes import FITNESS_ACTIVITIES, PoseBundle

KEY_POSES = {"squats_up", "squats_down", "pushups_up", "pushups_down"}
FITNESS_MARKER = "<!-- recipe: fitness -->"


@pytest.fixture(scope="module")
def fitness(fitness_model: PoseBundle) -> PoseBundle:
    """The session's recipe run (conftest's ``fitness_model``: ``trainer.recipes.fitness_bundle``)."""
    return fitness_model


@pytest.fixture(scope="module")
def manifest(fitness: PoseBundle) -> Manifest:
    return open_bundle(fitness.bundle, [load_public_key(fitness.public_key)]).manifest


def test_the_bundle_tells_the_four_key_poses_apart(fitness: PoseBundle, manifest: Manifest) -> None:
    assert set(manifest.labels) == KEY_POSES
    assert (manifest.model_id, manifest.version, manifest.window) == ("fitness", "1.0.0", None)
    metrics = json.loads((fitness.run_dir / "metrics.json").read_text())
    run = json.loads((fitness.run_dir / "run.json").read_text())
    print(f"fitness: held-out macro F1 {metrics['macro_f1']:.4f} ({run['split']['kind']} split)")
    assert run["split"]["kind"] == "stratified"  # auto's choice for single poses
    assert metrics["macro_f1"] >= 0.8


def test_the_bundle_carries_the_squat_and_push_up_counters(manifest: Manifest) -> None:
    assert [activity.name for activity in manifest.activities] == ["squat", "pushup"]
    expected = parse_activities(tomllib.loads(FITNESS_ACTIVITIES.read_text())["activity"])
    assert manifest.activities == expected
    assert manifest.decision.smoothing.kind == "mean" and manifest.decision.smoothing.span_s == 0.3


def test_the_readme_recipe_makes_the_bundle_by_hand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, marked, after = (REPO / "README.md").read_text(encoding="utf-8").partition(FITNESS_MARKER)
    assert marked, f"README.md has no {FITNESS_MARKER} block"
    commands = recipe_commands(MARKER + after)  # the trainer recipe's reader, on the block after ours
    assert [words[:4] for words in commands] == [
        ["python", "-m", "trainer", step] for step in ("keygen", "dataset", "train", "export")
    ]
    monkeypatch.chdir(tmp_path)  # what the recipe writes lands here; its inputs are the repository's
    for words in commands:
        args = [str(REPO / a) if a.startswith("demo/data/") else absolute(a) for a in words[3:]]
        code = ENTRY_POINTS[words[2]](args)
        assert code == 0, f"{shlex.join(words)} exited {code}:\n{capsys.readouterr().err}"
    manifest = open_bundle(
        tmp_path / "fitness.zip", [load_public_key(tmp_path / "keys" / "signing.pub")]
    ).manifest
    assert set(manifest.labels) == KEY_POSES
    assert [activity.name for activity in manifest.activities] == ["squat", "pushup"]
