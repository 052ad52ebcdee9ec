"""``python -m benchmarks table`` runs end to end and writes a well-formed table (speeds are not checked).

``--quick`` shrinks every benchmark to a few frames and seconds: the numbers mean nothing, but
every benchmark's real code runs (real MediaPipe, a real daemon process, mosquitto, the load
tool), so a benchmark broken by a change shows up here rather than at the next ``make bench``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHES = ["features", "dataset", "train", "device", "memory", "load", "replay", "activities", "startup"]


def benchmarks(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_quick_table_has_every_benchmark_with_its_baseline_and_ratio(tmp_path: Path) -> None:
    out = tmp_path / "table.json"
    done = benchmarks("table", "--quick", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    table = json.loads(out.read_text())
    rows = table["rows"]

    assert list(dict.fromkeys(r["bench"] for r in rows)) == BENCHES
    assert {"date", "machine", "command"} <= set(table["context"])
    for row in rows:
        assert math.isfinite(row["value"]), row
        if row["baseline"] is None:
            assert row["ratio"] is None
        else:
            assert row["ratio"] == pytest.approx(row["value"] / row["baseline"])
    # only the seed's figures are not measured in the same run
    assert {r["bench"] for r in rows if not r["same_run"]} == {"dataset"}
    errors = next(r for r in rows if r["bench"] == "load" and "failed requests" in r["measure"])
    assert errors["value"] == 0, done.stdout
    # --quick times each package's --help once, against the bare interpreter
    startup = [r["measure"] for r in rows if r["bench"] == "startup"]
    packages = ("device", "trainer", "provisioning")
    assert startup == [f"python -m {package} --help, best of 1" for package in packages]
    # the terminal shows the same rows
    for row in rows:
        assert row["measure"] in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["table", "--out", "{tmp}/table.txt"], "--out {tmp}/table.txt: the name must end in .json or .md"),
        (["table", "--out", "{tmp}/missing/table.md"], "folder {tmp}/missing does not exist"),
        (["table", "--soak-seconds", "-1"], "--soak-seconds must be 0 or more"),
        (["load", "--clients", "0"], "--clients must be 1 or more"),
        (["startup", "--repeat", "0"], "--repeat must be 1 or more"),
        (["nonsense"], "unknown benchmark 'nonsense'"),
    ],
)
def test_usage_mistakes_end_with_one_line_and_status_2_before_measuring(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = benchmarks(*(a.format(tmp=tmp_path) for a in args), timeout=60)
    assert done.returncode == 2
    assert message.format(tmp=tmp_path) in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []
