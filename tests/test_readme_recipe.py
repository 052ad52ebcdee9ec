"""The README's recipes run as written: the trainer's (extract -> dataset -> train -> keygen -> export
-> verify) and the fleet's (keygen -> init-device -> install.sh -> export -> verify -> push -> status).

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
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from broker import free_port
from conftest import DATA, REPO

from device.config import Config, load_config
from device.daemon import Daemon
from device.model.bundle import load_public_key, open_bundle
from provisioning.__main__ import main as provisioning
from trainer.__main__ import main as trainer
from trainer.recipes import PoseBundle

MARKER = "<!-- recipe: trainer -->"
FLEET_MARKER = "<!-- recipe: provisioning -->"
ENTRY_POINTS: dict[str, Callable[[Sequence[str]], int]] = {"trainer": trainer, "provisioning": provisioning}
RELATIVE_INPUTS = {"../shared/data/": DATA, "examples/": REPO / "examples"}


def recipe_commands(readme: str, marker: str = MARKER) -> list[list[str]]:
    """The commands of the ``sh`` block right after ``marker``: continuations joined, comments dropped."""
    _, marked, after = readme.partition(marker)
    assert marked, f"README.md has no {marker} block"
    block = re.match(r"\s*```sh\n(.*?)\n```", after, re.DOTALL)
    assert block, f"{marker} is not followed by a ```sh block"
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


def test_the_readme_fleet_recipe_provisions_a_kiosk_on_loopback_and_pushes_to_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pose_model: PoseBundle,
    squats: Path,
    run_daemon: Callable[[Config], Daemon],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every line as written, on this machine instead of a network: init-device also gets the
    loopback address (``--url``, ``--port``) and a video for a camera; install.sh runs in its
    ``--root`` mode (no sudo, nothing outside the tree); the kiosk is the daemon run from the
    config install.sh installed, listening on 127.0.0.1; ``runs/poses`` is a trained run."""
    commands = recipe_commands((REPO / "README.md").read_text(encoding="utf-8"), FLEET_MARKER)
    steps = [" ".join(words[2:4]) if words[0] == "python" else words[1] for words in commands]
    assert steps == [
        "trainer keygen", "provisioning init-device", "provisioning/install.sh", "trainer export",
        "trainer verify", "provisioning push", "provisioning status",
    ]
    workstation, kiosk_side = tmp_path / "workstation", tmp_path / "kiosk"
    workstation.mkdir()
    kiosk_side.mkdir()
    (workstation / "runs").mkdir()
    (workstation / "runs" / "poses").symlink_to(pose_model.run_dir)
    port = free_port()
    monkeypatch.chdir(workstation)
    root = tmp_path / "root"
    for words in commands:
        if words[0] == "sudo":  # on the kiosk, with kiosks/kiosk-1/ copied over
            shutil.copytree(workstation / "kiosks" / "kiosk-1", kiosk_side / "kiosk-1")
            installed = subprocess.run(
                ["sh", str(REPO / words[1]), "--root", str(root), "--no-venv", *words[2:]],
                cwd=kiosk_side,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert installed.returncode == 0, installed.stderr
            config = root / "etc/movement-edge/device.toml"
            text = config.read_text().replace('bind = "0.0.0.0"', 'bind = "127.0.0.1"')
            text = text.replace('state_dir = "/var/lib/movement-edge"', f'state_dir = "{tmp_path / "state"}"')
            config.write_text(text)
            run_daemon(load_config(config, env={}))
            continue
        args = [absolute(arg) for arg in words[3:]]
        if args[:1] == ["init-device"]:
            args += ["--url", f"https://127.0.0.1:{port}", "--port", str(port), "--source", "file",
                     "--video", str(squats), "--no-mqtt"]
        code = ENTRY_POINTS[words[2]](args)
        assert code == 0, f"{shlex.join(words)} exited {code}:\n{capsys.readouterr()}"
    printed = capsys.readouterr().out
    # push reported the kiosk running the bundle; status shows it
    assert re.search(r"kiosk-1\s+ok\s+poses \S+ active", printed), printed
    assert re.search(r"kiosk-1\s+poses\s", printed), printed
    assert not list((kiosk_side / "kiosk-1").glob("*.token"))  # the tokens never left the workstation
