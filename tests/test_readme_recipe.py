"""The README's trainer recipe runs as written: extract -> dataset -> train -> keygen -> export -> verify.

The commands are read from README.md itself (the fenced block under ``<!-- recipe: trainer -->``),
so the README cannot drift from what works. The recipe runs from the repository's folder; here it
runs from a temporary one, so the paths into ``../shared/data`` and ``examples/`` are made
absolute and everything it writes lands in the temporary folder. Nothing else is changed. Each
``python -m PACKAGE ARGS`` runs in-process through that package's ``main``.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from conftest import DATA, REPO

from device.model.bundle import load_public_key, open_bundle
from trainer.__main__ import main as trainer

MARKER = "<!-- recipe: trainer -->"
ENTRY_POINTS: dict[str, Callable[[Sequence[str]], int]] = {"trainer": trainer}
RELATIVE_INPUTS = {"../shared/data/": DATA, "examples/": REPO / "examples"}


def recipe_commands(readme: str) -> list[list[str]]:
    """The commands of the ``sh`` block right after :data:`MARKER`: continuations joined, comments dropped."""
    _, marked, after = readme.partition(MARKER)
    assert marked, f"README.md has no {MARKER} block"
    block = re.match(r"\s*```sh\n(.*?)\n```", after, re.DOTALL)
    assert block, f"{MARKER} is not followed by a ```sh block"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    return [words for line in lines if (words := shlex.split(line, comments=True))]


def absolute(arg: str) -> str:
    """An input path the recipe gives relative to the repository's folder, made absolute."""
    for prefix, folder in RELATIVE_INPUTS.items():
        if arg.startswith(prefix):
            return str(folder / arg.removeprefix(prefix))
    return arg


def test_the_readme_trainer_recipe_runs_as_written(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    task_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    commands = recipe_commands((REPO / "README.md").read_text(encoding="utf-8"))
    assert [words[:3] for words in commands] == [["python", "-m", "trainer"]] * len(commands)
    assert [words[3] for words in commands] == ["extract", "dataset", "train", "keygen", "export", "verify"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MOVEMENT_EDGE_CACHE", str(task_path.parent))  # the session's pose model
    for words in commands:
        code = ENTRY_POINTS[words[2]]([absolute(arg) for arg in words[3:]])
        assert code == 0, f"{shlex.join(words)} exited {code}:\n{capsys.readouterr().err}"
    printed = capsys.readouterr()
    assert printed.out.rstrip().endswith("OK")  # verify's verdict
    assert "decision threshold" in printed.out and "train: warning: " in printed.err

    run = json.loads((tmp_path / "runs" / "steps" / "run.json").read_text())
    assert run["split"]["kind"] == "time" and run["split"]["requested"] == "auto"
    assert "class=warning" in (tmp_path / "runs" / "steps" / "report.html").read_text()
    public_key = load_public_key(tmp_path / "keys" / "signing.pub")
    manifest = open_bundle(tmp_path / "steps.zip", [public_key]).manifest
    assert set(manifest.labels) == {"Left Step", "Right Step"}
    window = manifest.window
    assert window is not None and (window.size, window.stride) == (30, 5)
    assert window.fps == pytest.approx(30, rel=0.05)  # the video's rate, from its frames' timestamps
    assert manifest.decision.smoothing.kind == "mean" and manifest.decision.smoothing.span_s == 1.0
