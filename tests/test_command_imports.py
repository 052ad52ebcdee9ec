"""A trainer command line that names its command loads that command's module alone.

Checked in fresh processes, where nothing the test suite imported can hide what a command line
imports (as ``tests/test_cli_startup.py`` does for the heavy libraries). The list of all commands
(``trainer --help``) still loads every command, for their help lines.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

LOADED = """
import contextlib, io, json, sys
from trainer.__main__ import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main([*sys.argv[1:], "--help"])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("trainer", "cryptography"))))
"""


def loaded(*argv: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", LOADED, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


@pytest.mark.parametrize(
    ("argv", "modules"),
    [
        (["dataset"], {"trainer.dataset", "trainer.frame_columns", "trainer.messages"}),
        (["--traceback", "keypoints-cache"], {"trainer.keypoints_cache"}),
    ],
)
def test_a_command_line_loads_only_its_commands_module(argv: list[str], modules: set[str]) -> None:
    assert loaded(*argv) == {"trainer", "trainer.__main__", *modules}  # no signing, cluster or training code


def test_the_list_of_commands_loads_them_all() -> None:
    assert {"trainer.export", "trainer.extract", "trainer.dataset", "trainer.revoke"} <= loaded()
