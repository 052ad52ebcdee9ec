"""A command line loads what it runs and nothing else; the list of commands loads no command.

Checked in fresh processes, where nothing the test suite imported can hide what a command line
imports (as ``tests/test_cli_startup.py`` does for the heavy libraries).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from conftest import REPO

LOADED = """
import contextlib, io, json, sys
from importlib import import_module
package = sys.argv[1]
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    import_module(package + ".__main__").main([*sys.argv[2:], "--help"])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in (package, "cryptography", "numpy"))))
"""


def printed_json(code: str, *argv: str) -> Any:
    """What ``code``, run in a fresh interpreter with ``argv``, printed as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def loaded(package: str, *argv: str) -> set[str]:
    return {
        name
        for name in printed_json(LOADED, package, *argv)
        if name.split(".")[0] == package or "." not in name
    }


@pytest.mark.parametrize(
    ("package", "argv", "modules"),
    [
        ("trainer", ["dataset"], {"trainer.dataset", "trainer.frame_columns", "trainer.messages", "numpy"}),
        ("trainer", ["--traceback", "keypoints-cache"], {"trainer.keypoints_cache", "numpy"}),
        ("trainer", ["train"], {"trainer.train_options", "trainer.tracking"}),
        ("provisioning", ["push"], {"provisioning.fleet_options"}),
        ("provisioning", ["init-device"], {"provisioning.init_options"}),
        ("provisioning", ["release"], {"provisioning.release", "provisioning.broker"}),
        (
            "provisioning",
            ["rollout"],
            {"provisioning.rollout", "provisioning.release", "provisioning.broker"},
        ),
    ],
)
def test_a_command_line_loads_only_its_commands_module(
    package: str, argv: list[str], modules: set[str]
) -> None:
    # no signing, cluster, training, certificate or HTTP code, no numpy unless the options need it
    assert loaded(package, *argv) == {package, f"{package}.__main__", *modules}


@pytest.mark.parametrize("package", ["trainer", "provisioning"])
def test_the_list_of_commands_loads_no_command(package: str) -> None:
    assert loaded(package) == {package, f"{package}.__main__"}


def test_device_help_does_not_load_replay() -> None:
    assert "device.replay" not in loaded("device") | loaded("device", "replay")


DAEMON_IMPORTS = """
import json, sys
from device.daemon import build
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_the_daemon_imports_no_training_code_nor_pandas_or_scipy() -> None:
    # pandas sits beside the device in this venv (the trainer's); sqlite_utils would import it
    packages = set(printed_json(DAEMON_IMPORTS))
    assert {"mediapipe", "cv2", "flask", "paho", "sqlite_utils"} <= packages  # it did import the daemon
    assert not packages & {"pandas", "pyarrow", "scipy", "sklearn", "skops", "trainer", "mlflow", "dask"}
