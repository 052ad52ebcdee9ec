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

from benchmarks.seed_bench import SEED_PYTHON

REPO = Path(__file__).resolve().parents[1]
BENCHES = [
    "features",
    "dataset",
    "seed",
    "train",
    "device",
    "memory",
    "load",
    "replay",
    "activities",
    "people",
    "startup",
]


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
    # only the seed's published figures are not measured in the same run, and only without its virtualenv
    published = {r["bench"] for r in rows if not r["same_run"]}
    assert published == (set() if SEED_PYTHON.is_file() else {"seed"})
    assert any("make bench-seed" in note for note in table["notes"]) == bool(published)
    errors = next(r for r in rows if r["bench"] == "load" and "failed requests" in r["measure"])
    assert errors["value"] == 0, done.stdout
    # the kiosk's budget on one core: each number beside its baseline on the same core
    kiosk = "one core, 640×480: "
    one_core = {r["measure"].removeprefix(kiosk): r for r in rows if r["measure"].startswith(kiosk)}
    assert [m.split(" (")[0] for m in one_core] == [
        "daemon, every frame",
        "per-frame overhead without pose, p50",
        "per-frame overhead without pose, p99",
        "glass-to-MQTT latency p50",
        "glass-to-MQTT latency p99",
    ]
    assert all(r["bench"] == "device" and r["baseline"] is not None for r in one_core.values())
    # where the memory goes: every step of the breakdown beside the running daemon's RSS
    memory = [r for r in rows if r["bench"] == "memory"]
    steps = [r for r in memory if r["measure"].startswith("+ ")]
    assert len(steps) == 8 and all(r["baseline_name"].startswith("the daemon's RSS") for r in steps)
    assert any(r["measure"] == "the same with MALLOC_ARENA_MAX=2" for r in memory)
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
        (["device", "--one-core-seconds", "-1"], "--one-core-seconds must be 0 or more"),
        (["memory", "--seconds", "0"], "--seconds must be more than 0"),
        (["load", "--clients", "0"], "--clients must be 1 or more"),
        (["startup", "--repeat", "0"], "--repeat must be 1 or more"),
        (["seed", "--windows", "0"], "--windows must be at least 1"),
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


def test_without_the_seeds_virtualenv_its_published_figures_stand_in_and_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import seed_bench

    monkeypatch.setattr(seed_bench, "SEED_PYTHON", tmp_path / "no-seed-venv" / "bin" / "python")
    numbers = seed_bench.measure(videos=(1,), windows=1)
    rows = numbers.rows()
    assert rows and not numbers.measured
    assert all(not r.same_run and "`make bench-seed` measures it" in r.baseline_name for r in rows)
    assert all(math.isfinite(r.value) and r.ratio is not None and r.ratio > 0 for r in rows)
    assert "is missing: `make bench-seed` installs the seed" in numbers.details[0]
