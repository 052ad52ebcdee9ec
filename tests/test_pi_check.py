"""``make pi-check`` (scripts/pi_check.py) without emulation: its command line, its refusals, and the
parts that keep the machine safe (mounts undone before deleting, processes in the chroot ended).

The emulated run itself takes ~25 minutes and is not part of ``make test``; these tests run the
script's real entry point and its real helpers on real files, mounts and processes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "pi_check.py"
sys.path.insert(0, str(SCRIPT.parent))

import pi_check  # noqa: E402

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts and chroot need root")


def run_script(*args: str, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    """The script as ``make pi-check`` runs it; ``as_nobody`` drops to uid 65534 when we are root."""
    command = [sys.executable, str(SCRIPT), *args]
    if as_nobody and os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_help_describes_every_step_and_when_to_run_it() -> None:
    done = run_script("--help")
    assert done.returncode == 0, done.stderr
    for step in pi_check.STEPS:
        assert step.name in done.stdout
    assert "before a release and after" in done.stdout
    assert "--daemon-seconds" in done.stdout


def test_list_prints_the_steps_in_order_without_needing_root() -> None:
    done = run_script("--list", as_nobody=True)
    assert done.returncode == 0, done.stderr
    names = [line.split(". ", 1)[1].split(":")[0] for line in done.stdout.splitlines()]
    assert names == [step.name for step in pi_check.STEPS]
    assert names[:3] == ["host packages", "binfmt_misc", "root filesystem"]
    assert names[-1] == "daemon + push"


def test_every_step_needs_only_steps_before_it() -> None:
    seen: set[str] = set()
    for step in pi_check.STEPS:
        assert set(step.needs) <= seen, step.name
        seen.add(step.name)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--frames", "0"], "--frames"),
        (["--frames", "three"], "--frames"),
        (["--daemon-seconds", "-5"], "--daemon-seconds"),
        (["--bogus"], "--bogus"),
    ],
)
def test_a_bad_option_is_one_line_naming_it(args: list[str], option: str) -> None:
    done = run_script(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("pi-check: error:") and option in lines[0]


def test_without_root_it_refuses_in_one_line_and_touches_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    done = run_script("--cache", str(cache), as_nobody=True)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"pi-check: error: {pi_check.root_problem(65534)}"]
    assert "needs root" in done.stderr and "sudo make pi-check" in done.stderr
    assert not cache.exists()


def binfmt_entry(folder: Path, *lines: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "qemu-aarch64").write_text("\n".join(lines) + "\n")
    return folder


REGISTERED = ("interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P", "offset 0")


def test_binfmt_without_the_qemu_entry_is_refused_naming_the_fix(tmp_path: Path) -> None:
    problem = pi_check.binfmt_problem(tmp_path)
    assert problem is not None
    assert str(tmp_path / "qemu-aarch64") in problem and "update-binfmts --enable qemu-aarch64" in problem


def test_binfmt_with_a_disabled_entry_is_refused(tmp_path: Path) -> None:
    folder = binfmt_entry(tmp_path / "binfmt", "disabled", *REGISTERED, "flags: PF")
    assert "is disabled" in str(pi_check.binfmt_problem(folder))


def test_binfmt_without_fix_binary_is_refused(tmp_path: Path) -> None:
    folder = binfmt_entry(tmp_path / "binfmt", "enabled", *REGISTERED, "flags: P")
    assert "without F" in str(pi_check.binfmt_problem(folder))


def test_binfmt_enabled_with_fix_binary_is_accepted(tmp_path: Path) -> None:
    folder = binfmt_entry(tmp_path / "binfmt", "enabled", *REGISTERED, "flags: PF")
    assert pi_check.binfmt_problem(folder) is None


def test_the_daemon_runs_as_the_installed_unit_says(tmp_path: Path) -> None:
    """User, group, home, directory, environment and interpreter come from the unit install.sh put there."""
    check = pi_check.PiCheck(tmp_path, 1, 1.0, fresh=False, stack=contextlib.ExitStack())
    unit = check.inside(pi_check.UNIT)
    unit.parent.mkdir(parents=True)
    shutil.copy(REPO / "systemd" / "movement-edge.service", unit)
    check.inside("/etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "movement-edge:x:999:996:movement-edge kiosk daemon:/var/lib/movement-edge:/usr/sbin/nologin\n"
    )
    user = check.service_user()
    assert (user.user, user.group, user.home) == ("movement-edge", "movement-edge", "/var/lib/movement-edge")
    assert user.directory == "/opt/movement-edge"
    assert user.python == "/opt/movement-edge/venv/bin/python"
    assert user.exec_start[1:] == ["-m", "device", "run", "--config", pi_check.DEVICE_CONFIG]
    assert user.environment["MOVEMENT_EDGE_CACHE"] == "/var/cache/movement-edge"
    command, env = check.in_chroot([user.python, "-V"], user)
    assert command[:2] == ["chroot", str(check.root)]
    assert "--reuid=movement-edge" in command and "--chdir=/opt/movement-edge" in command
    assert env["QEMU_CPU"] == pi_check.QEMU_CPU and env["HOME"] == "/var/lib/movement-edge"


def frames(*offsets: float | None) -> dict[str, object]:
    """A pose probe's answer: one frame per offset (None: nobody), 33 joints shifted by the offset."""
    joints = range(33)
    return {
        "frames": [None if dx is None else [[100.0 + j + dx, 200.0 + j] for j in joints] for dx in offsets],
        "per_frame_s": 6.0,
        "load_s": 30.0,
    }


def test_poses_within_the_tolerance_of_x86_pass_with_the_distances() -> None:
    summary = pi_check.compare_poses(frames(1.0, 3.0, None), frames(0.0, 0.0, None))
    assert "3 frames, a person in 2" in summary
    assert "2.0 px mean, 3.0 px max" in summary


def test_poses_beyond_the_tolerance_fail() -> None:
    with pytest.raises(pi_check.CheckFailed, match="over 8.0 px"):
        pi_check.compare_poses(frames(9.0, 9.0), frames(0.0, 0.0))


def test_a_person_x86_finds_but_arm64_misses_fails_naming_the_frame() -> None:
    with pytest.raises(pi_check.CheckFailed, match=r"frames \[1\]"):
        pi_check.compare_poses(frames(0.0, None), frames(0.0, 0.0))


def elf(path: Path, machine: int, *aligns: int) -> Path:
    """A 64-bit little-endian ELF header with one LOAD program header per alignment."""
    header = bytearray(64)
    header[:5] = b"\x7fELF\x02"
    struct.pack_into("<H", header, 18, machine)
    struct.pack_into("<Q", header, 32, 64)  # program headers right after the ELF header
    struct.pack_into("<HH", header, 54, 56, len(aligns))
    table = bytearray(56 * len(aligns))
    for i, align in enumerate(aligns):
        struct.pack_into("<I", table, i * 56, 1)
        struct.pack_into("<Q", table, i * 56 + 48, align)
    path.write_bytes(bytes(header + table))
    return path


def test_the_smallest_load_alignment_of_an_arm64_object_is_read(tmp_path: Path) -> None:
    assert pi_check.elf_load_alignment(elf(tmp_path / "a.so", 183, 65536, 4096)) == 4096
    assert pi_check.elf_load_alignment(elf(tmp_path / "b.so", 183, 65536, 65536)) == 65536


def test_objects_for_other_machines_and_other_files_are_ignored(tmp_path: Path) -> None:
    assert pi_check.elf_load_alignment(elf(tmp_path / "x86.so", 62, 4096)) is None
    (tmp_path / "notes.so.txt").write_text("not an ELF file")
    assert pi_check.elf_load_alignment(tmp_path / "notes.so.txt") is None


@needs_root
def test_removing_a_root_filesystem_unmounts_first_and_spares_what_was_bound(tmp_path: Path) -> None:
    """A bound /dev must be unmounted, never emptied: rm would go through a bind of the same filesystem."""
    outside = tmp_path / "host-dev"
    outside.mkdir()
    (outside / "node").write_text("precious")
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(outside), str(root / "dev")], check=True)
    try:
        assert pi_check.mounts_under(root) == [str(root / "dev")]
        pi_check.remove_tree(root)
    finally:
        if pi_check.mounts_under(root):
            subprocess.run(["umount", str(root / "dev")], check=False)
    assert not root.exists()
    assert (outside / "node").read_text() == "precious"
    assert pi_check.mounts_under(tmp_path) == []


@needs_root
def test_processes_left_in_the_chroot_are_ended_and_none_outside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    stay = "import os, sys, time; os.chroot(sys.argv[1]); print('in', flush=True); time.sleep(120)"
    inside = subprocess.Popen([sys.executable, "-c", stay, str(root)], stdout=subprocess.PIPE, text=True)
    outside = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        assert inside.stdout is not None and inside.stdout.readline() == "in\n"
        assert pi_check.processes_in(root) == [inside.pid]
        assert pi_check.end_processes_in(root, grace_s=10) == [inside.pid]
        assert inside.wait(10) == -signal.SIGTERM
        assert outside.poll() is None
        assert pi_check.processes_in(root) == []
    finally:
        for process in (inside, outside):
            if process.poll() is None:
                process.kill()
            process.wait(10)
