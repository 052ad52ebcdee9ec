"""How long a command takes to answer ``--help``: start-up time, against the bare interpreter's.

Every command of the three packages (``python -m device|trainer|provisioning [COMMAND] --help``)
runs in a fresh process, as a user starts it; the wall time of the best of ``--repeat`` runs
counts (the least disturbed by other work). The baseline is the bare interpreter with the same
site-packages, ``python -c pass``: what no command can go below. A command's work may import
MediaPipe, OpenCV or scikit-learn (seconds); its ``--help`` must not (``device/cli.py``), which
``tests/test_cli_startup.py`` checks without timing anything.

Run: ``python -m benchmarks startup [--repeat N]``.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import command
from benchmarks.rows import Row, render_text

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("device", "trainer", "provisioning")
BASELINE = "bare interpreter, python -c pass"


def every_command() -> tuple[str, ...]:
    """``"trainer"``, ``"trainer train"``, …: each package alone and with each of its commands."""
    found: list[str] = []
    for package in PACKAGES:
        registry = importlib.import_module(f"{package}.__main__").COMMANDS
        found += [package, *(f"{package} {name}" for name in registry)]
    return tuple(found)


def wall_time(argv: Sequence[str], repeat: int) -> float:
    """The best wall time in seconds of ``repeat`` runs of ``argv``, each a fresh process."""
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        best = min(best, time.perf_counter() - began)
    return best


@dataclass(frozen=True)
class StartupNumbers:
    repeat: int
    baseline_s: float
    help_s: dict[str, float]  # "trainer train" -> seconds

    def rows(self) -> list[Row]:
        return [
            Row(
                "startup",
                f"python -m {name} --help, best of {self.repeat}",
                seconds * 1000,
                "ms",
                self.baseline_s * 1000,
                BASELINE,
            )
            for name, seconds in self.help_s.items()
        ]


def measure(repeat: int = 3, commands: Sequence[str] | None = None) -> StartupNumbers:
    """``--help`` of ``commands`` (default: every one) and the bare interpreter, in fresh processes."""
    baseline = wall_time([sys.executable, "-c", "pass"], repeat)
    names = every_command() if commands is None else tuple(commands)
    help_s = {name: wall_time([sys.executable, "-m", *name.split(), "--help"], repeat) for name in names}
    return StartupNumbers(repeat, baseline, help_s)


def main(argv: list[str] | None = None) -> int:
    parser = command("startup", __doc__)
    parser.add_argument("--repeat", type=int, default=3, help="runs per command; the best counts (default 3)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be 1 or more")
    print(render_text(measure(args.repeat).rows()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
