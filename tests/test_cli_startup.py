"""Starting a command: the console scripts, what ``--help`` imports, one-line usage errors, and the
native libraries' chatter kept off stderr.

Start-up is tested in fresh processes, where nothing the test suite imported can hide what a
command imports. How long it takes is measured by ``python -m benchmarks startup``; no test here
depends on timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from conftest import REPO

from device.__main__ import main as device
from provisioning.__main__ import main as provisioning
from trainer.__main__ import main as trainer
from trainer.recipes import PoseBundle

BIN = Path(sys.executable).parent
SCRIPTS = {"movement-trainer": "trainer", "movement-device": "device", "movement-provision": "provisioning"}
HEAVY = ("mediapipe", "sklearn", "skops", "pandas", "pyarrow", "cv2", "paho", "flask", "mlflow", "dask")
CHATTER = ("XNNPACK", "GPU suport", "absl::InitializeLog", "inference_feedback_manager")


def run(argv: Sequence[object], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_console_script_is_installed_and_answers_help(script: str) -> None:
    done = run([BIN / script, "--help"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {SCRIPTS[script]} [-h] [--traceback] COMMAND ...")
    assert done.stderr == ""


HELP_OF_EVERY_COMMAND = f"""
import contextlib, io, json, sys
from importlib import import_module

cli = import_module(sys.argv[1] + ".__main__")
for argv in ([], *([name] for name in cli.COMMANDS)):
    with contextlib.redirect_stdout(io.StringIO()) as shown, contextlib.suppress(SystemExit):
        cli.main([*argv, "--help"])
    assert shown.getvalue().startswith("usage: "), argv
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in {HEAVY!r})))
"""


@pytest.mark.parametrize("package", SCRIPTS.values())
def test_help_of_every_command_imports_no_heavy_library(package: str) -> None:
    done = run([sys.executable, "-c", HELP_OF_EVERY_COMMAND, package])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


Main = Callable[[Sequence[str]], int]
USAGE_ERRORS: list[tuple[Main, list[str], str]] = [
    (trainer, [], "trainer: error: the following arguments are required: COMMAND"),
    (trainer, ["trian"], "trainer: error: argument COMMAND: invalid choice: 'trian' (choose from "),
    (
        trainer,
        ["dataset", "--keypoints", "k", "--out", "d.csv", "--strategy", "windows"],
        "trainer dataset: error: argument --strategy: invalid choice: 'windows' (choose from 'none', ",
    ),
    (
        trainer,
        ["train", "--dataset", "d.csv", "--target", "t", "--out", "run", "--test-size", "a fifth"],
        "trainer train: error: argument --test-size: invalid float value: 'a fifth'",
    ),
    (device, ["check-config"], "device check-config: error: the following arguments are required: config"),
    (device, ["models", "remove"], "device models: error: argument ACTION: invalid choice: 'remove'"),
    (provisioning, ["push", "model.zip"], "provisioning push: error: the following arguments are required"),
]


@pytest.mark.parametrize(("main", "argv", "start"), USAGE_ERRORS)
def test_a_mistyped_command_line_is_one_line_and_status_2(
    main: Main, argv: list[str], start: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert err.startswith(start) and err.rstrip().endswith("(see --help)"), err


def test_verify_prints_no_native_chatter(fitness_model: PoseBundle) -> None:
    done = run([BIN / "movement-trainer", "verify", fitness_model.bundle, "--pub", fitness_model.public_key])
    assert done.returncode == 0 and done.stdout.endswith("OK\n"), done.stderr
    assert done.stderr == ""

    # the check above would catch the chatter: loading the same TFLite model without it prints it
    load = "from device.model.store import open_model; import sys; open_model(sys.argv[1], [sys.argv[2]])"
    bare = run([sys.executable, "-c", load, fitness_model.bundle, fitness_model.public_key])
    assert bare.returncode == 0 and "XNNPACK" in bare.stderr


def test_replay_prints_no_native_chatter_from_mediapipe(
    fitness_model: PoseBundle, squats: Path, tmp_path: Path
) -> None:
    argv = [BIN / "movement-device", "replay", squats, "--bundle", fitness_model.bundle]
    done = run([*argv, "--trusted-key", fitness_model.public_key, "--out", tmp_path / "squats.jsonl"], 300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("squats.mp4: 65 frames")  # replay's own summary is all there is
    assert not [line for line in done.stderr.splitlines() if any(word in line for word in CHATTER)]


def test_a_native_fatal_error_still_reaches_stderr_when_the_process_aborts() -> None:
    crash = (
        "import os; from device import logs; logs.quiet_native_logs(); "
        "os.write(2, b'I0000 00:00:17.5 42 task_runner.cc:85] GPU suport is not available\\n'"
        " b'F0000 00:00:17.6 42 graph.cc:7] Check failed: boom\\n'); os.abort()"
    )
    done = run([sys.executable, "-c", crash])
    assert done.returncode < 0  # killed by SIGABRT
    assert done.stderr == "F0000 00:00:17.6 42 graph.cc:7] Check failed: boom\n"
