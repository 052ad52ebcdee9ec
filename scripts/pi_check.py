"""``make pi-check``: install and run the kiosk on emulated Raspberry Pi OS 64-bit, start to finish.

What a Raspberry Pi 4 or 5 on Raspberry Pi OS (Debian 12 "bookworm", arm64) does with this checkout,
done on this x86-64 machine under qemu-user:

- a Debian 12 arm64 root filesystem made with debootstrap (cached: the emulated second stage alone
  takes ~8 minutes), copied afresh for every run so each run installs on a clean system;
- the aarch64 wheels of every pin of ``requirements/device.txt`` and of mediapipe, downloaded once
  per pin set with every manylinux tag glibc 2.36 accepts (cached);
- ``provisioning/install.sh`` itself, as root inside the chroot, from those wheels (no index);
- then, as the service user with the unit's environment: the imports, the offline pose model on
  ``squats.mp4`` (compared with the same frames on x86), ``check-config``, ``models install`` of a
  TFLite and a skops bundle, and the daemon for a minute on the video while the host pushes a new
  model to it over HTTPS (``provisioning push``) and counts what it publishes to a host mosquitto.

Each step prints PASS, FAIL or SKIP (a step it needs failed) with its time; the exit status is 0
only when every step passed. Not part of ``make test``: it needs root (debootstrap, chroot, mounts),
binfmt_misc and the package index, and takes ~20 minutes from scratch, ~12 with the cache in
``.cache/pi-root/`` on 2 shared cores (emulated code runs ~100x slower than native; install.sh's
pip alone takes 5-7 minutes). Run it before a release and after
changing dependencies (requirements, the mediapipe pin, install.sh, the unit).

Two quirks of this kind of machine, not of a Pi (../shared/FACTS.md): ai-edge-litert's interpreter
crashes unless ``/proc/cpuinfo`` describes an ARM CPU, and qemu-user shows the x86 host's, so a
Raspberry Pi 4's is bind-mounted over the chroot's (with ``QEMU_CPU=cortex-a72``); and the pip of
this host reaches the index through a TLS proxy, which is why the wheels are fetched here and the
chroot installs them offline. Every mount is undone and every process inside the chroot ended when
the run finishes, fails or is interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, NoReturn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the packages live beside it

from device import logs  # noqa: E402
from device.cli import ExitStatus  # noqa: E402

if TYPE_CHECKING:
    from tests.broker import Received

PROG = "pi-check"
DATA = REPO.parent / "shared" / "data"
SQUATS = DATA / "videos" / "squats.mp4"
FITNESS_TABLE = DATA / "keypoints" / "fitness_pose_samples.csv"
DEFAULT_CACHE = REPO / ".cache" / "pi-root"

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
DEBOOTSTRAP = ("debootstrap", "--arch=arm64", "--variant=minbase", f"--include={BASE_PACKAGES}")
HOST_PACKAGES = ("debootstrap", "qemu-user-static", "binfmt-support", "mosquitto")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_ENTRY = "qemu-aarch64"
QEMU_CPU = "cortex-a72"  # the Raspberry Pi 4's core
# pip on the host must be told every tag the Pi's glibc 2.36 accepts: ai-edge-litert's only
# aarch64 wheel is manylinux_2_27, and a list that stops early reports it missing.
PLATFORMS = ("manylinux2014_aarch64", *(f"manylinux_2_{minor}_aarch64" for minor in range(17, 37)))
PYTHON_VERSION = "3.11"

# Paths inside the chroot.
SRC = "/srv/movement-edge"  # the checkout install.sh runs from
SRV = "/srv/pi-check"  # wheels, bundles, the kiosk's folder and its video
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNIT = "/etc/systemd/system/movement-edge.service"
DEVICE_CONFIG = "/etc/movement-edge/device.toml"
KIOSK = "pi-kiosk"
# What install.sh needs of the checkout; nothing of .venv, caches or the tests goes in.
CHECKOUT = (
    *("device", "trainer", "provisioning", "requirements", "systemd"),
    *("pyproject.toml", "README.md", "Makefile"),
)

MIN_PAGE_ALIGN = 16 * 1024  # Raspberry Pi 5's kernel uses 16 KB pages: every LOAD segment must allow them
POSE_TOLERANCE_PX = 8.0  # mean joint distance arm64 vs x86; measured 1.4 px (5.5 max) on 720x1280
MODEL_VERSIONS = {"1.0.0": "tflite", "2.0.0": "sklearn", "3.0.0": "tflite"}  # installed, installed, pushed
PUSHED = "3.0.0"
PUSHED_RESULT_S = 300.0  # after --daemon-seconds, how long to wait for the pushed model's first result

# Runs inside the chroot and here, so both see the same frames through the same code.
POSE_PROBE = """
import json, sys, time
import cv2
from device.pose import PoseEstimator, main_pose
video, count = sys.argv[1], int(sys.argv[2])
capture = cv2.VideoCapture(video)
step_ms = 1000.0 / (capture.get(cv2.CAP_PROP_FPS) or 30.0)
started = time.monotonic()
frames = []
with PoseEstimator() as estimator:
    ready = time.monotonic()
    while len(frames) < count:
        ok, bgr = capture.read()
        if not ok:
            break
        person = main_pose(estimator.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), len(frames) * step_ms))
        frames.append(None if person is None else person[:, :2].tolist())
per_frame_s = (time.monotonic() - ready) / max(len(frames), 1)
print(json.dumps({"frames": frames, "load_s": ready - started, "per_frame_s": per_frame_s}))
"""

IMPORTS_PROBE = """
import json, platform
import ai_edge_litert, cv2, mediapipe, numpy, sklearn, skops
from ai_edge_litert.interpreter import Interpreter
import device.daemon, device.model.runtimes, device.pose
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
    "numpy": numpy.__version__, "opencv": cv2.__version__, "mediapipe": mediapipe.__version__,
    "ai-edge-litert": ai_edge_litert.__version__, "scikit-learn": sklearn.__version__,
    "skops": skops.__version__}))
"""

# A Raspberry Pi 4's /proc/cpuinfo (four Cortex-A72 cores), for the libraries that read it.
PI_CPUINFO = (
    "".join(
        f"processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
        "CPU revision\t: 3\n\n"
        for n in range(4)
    )
    + "Hardware\t: BCM2835\nRevision\t: c03111\nSerial\t\t: 100000000000pi00\n"
    "Model\t\t: Raspberry Pi 4 Model B Rev 1.1\n"
)


class CheckFailed(Exception):
    """A step's one-line reason to fail; its log (printed below the line) has the details."""


@dataclass(frozen=True)
class ServiceUser:
    """How the unit runs the daemon, read from the installed unit file: who, where, with what."""

    user: str
    group: str
    home: str
    directory: str
    environment: dict[str, str]
    exec_start: list[str]

    @property
    def python(self) -> str:
        """The venv's interpreter, as ExecStart names it."""
        return self.exec_start[0]


@dataclass
class PiCheck:
    """One run: where its files are, what earlier steps made, and what must be undone at the end."""

    cache: Path
    frames: int
    daemon_seconds: float
    fresh: bool
    stack: contextlib.ExitStack
    log: IO[str] | None = None
    bundles: dict[str, Path] = field(default_factory=dict)  # version -> bundle on the host
    fleet: Path | None = None
    mqtt_port: int = 0

    @property
    def work(self) -> Path:
        return self.cache / "run"

    @property
    def root(self) -> Path:
        return self.work / "root"

    @property
    def host(self) -> Path:
        return self.work / "host"

    def inside(self, path: str) -> Path:
        """The host path of ``path`` inside the chroot."""
        return self.root / path.lstrip("/")

    def run(
        self,
        argv: list[str],
        *,
        timeout: float,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        capture: bool = False,
        name: list[str] | None = None,
    ) -> str:
        """Run a command with its output in the step's log; with ``capture`` its stdout is also returned.

        A non-zero exit or the timeout (the command is killed) fails the step, naming the command
        by ``name`` (default: ``argv``).
        """
        assert self.log is not None
        self.log.write(f"$ {shlex.join(argv)}\n")
        self.log.flush()
        what = describe(name or argv)
        try:
            done = subprocess.run(
                argv,
                stdout=subprocess.PIPE if capture else self.log,
                stderr=self.log,
                text=True,
                env=env,
                cwd=cwd,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            self.log.write(exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else "")
            raise CheckFailed(f"{what} did not finish within {timeout:.0f} s") from None
        if capture:
            self.log.write(done.stdout)
        if done.returncode != 0:
            raise CheckFailed(f"{what} exited with status {done.returncode}")
        return done.stdout if capture else ""

    def in_chroot(self, argv: list[str], user: ServiceUser | None = None) -> tuple[list[str], dict[str, str]]:
        """The host command and environment that run ``argv`` in the chroot, as root or as ``user``.

        As the user, it runs the way the unit would start it: that user and group with their
        supplementary groups, the unit's environment and working directory (``env --chdir`` and
        ``setpriv`` exec, so a signal to the returned process reaches the Python process itself).
        """
        env = {"PATH": CHROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8", "QEMU_CPU": QEMU_CPU}
        if user is None:
            return ["chroot", str(self.root), *argv], env
        env |= {"HOME": user.home, **user.environment}
        drop = ["/usr/bin/setpriv", f"--reuid={user.user}", f"--regid={user.group}", "--init-groups", "--"]
        return ["chroot", str(self.root), *drop, "/usr/bin/env", f"--chdir={user.directory}", *argv], env

    def chroot(
        self, argv: list[str], *, timeout: float, user: ServiceUser | None = None, **extra: str
    ) -> str:
        """Run ``argv`` in the chroot (see :meth:`in_chroot`); its stdout is returned."""
        command, env = self.in_chroot(argv, user)
        return self.run(command, timeout=timeout, env=env | extra, capture=True, name=argv)

    def service_user(self) -> ServiceUser:
        """The installed unit's User=, Group=, WorkingDirectory=, Environment= and ExecStart=."""
        settings = unit_settings(self.inside(UNIT).read_text())
        user = settings["User"][-1]
        homes = {
            fields[0]: fields[5]
            for line in self.inside("/etc/passwd").read_text().splitlines()
            if len(fields := line.split(":")) > 5
        }
        environment = dict(
            pair.split("=", 1) for value in settings.get("Environment", []) for pair in shlex.split(value)
        )
        return ServiceUser(
            user=user,
            group=settings.get("Group", [user])[-1],
            home=homes[user],
            directory=settings.get("WorkingDirectory", ["/"])[-1],
            environment=environment,
            exec_start=shlex.split(settings["ExecStart"][-1]),
        )


def describe(argv: list[str]) -> str:
    """A command for a one-line message: its first words, a script given with -c by its first line."""
    words = [(arg.strip().splitlines() or [""])[0] for arg in argv[:6]]
    return shlex.join(words) + (" ..." if len(argv) > 6 else "")


def unit_settings(text: str) -> dict[str, list[str]]:
    """The ``Key=Value`` lines of a systemd unit, every value of a repeated key in order."""
    settings: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


# ------------------------------------------------------------------ mounts and processes


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, the latest first (the order to unmount them in)."""
    prefix = str(path.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return points[::-1]


def unmount_under(path: Path) -> None:
    """Undo every mount at or below ``path`` (lazily when busy); fail if any is left."""
    for point in mounts_under(path):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    left = mounts_under(path)
    if left:
        raise CheckFailed(f"still mounted: {', '.join(left)}")


def remove_tree(path: Path) -> None:
    """Delete a root filesystem tree, never through a mount (a bound /dev must not be emptied)."""
    unmount_under(path)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def processes_in(root: Path) -> list[int]:
    """The processes whose root directory is ``root``: everything this run started in the chroot."""
    target = str(root.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "root") == target:
                    found.append(int(entry.name))
    return found


def end_processes_in(root: Path, grace_s: float = 10.0) -> list[int]:
    """SIGTERM every process in the chroot, SIGKILL what is left after ``grace_s``; the pids ended."""
    ended = processes_in(root)
    for number, sig in ((0, signal.SIGTERM), (1, signal.SIGKILL)):
        for pid in processes_in(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while processes_in(root) and time.monotonic() < deadline and number == 0:
            time.sleep(0.2)
    return ended


# ------------------------------------------------------------------ preflight


def binfmt_problem(folder: Path = BINFMT) -> str | None:
    """Why arm64 programs cannot run here through binfmt_misc, or None when they can.

    The entry must be enabled and fix its interpreter at registration (flag F): the chroot then
    needs no copy of qemu inside it.
    """
    entry = folder / BINFMT_ENTRY
    if not entry.is_file():
        return (
            f"{entry} is missing: arm64 programs cannot run here (binfmt_misc not mounted, or "
            "qemu-user-static not registered: update-binfmts --enable qemu-aarch64)"
        )
    lines = entry.read_text().splitlines()
    if "enabled" not in lines:
        return f"{entry} is disabled: run update-binfmts --enable {BINFMT_ENTRY}"
    flags = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("flags:")), "")
    if "F" not in flags:
        return f"{entry} has flags {flags!r}, without F: register qemu with --fix-binary (as Debian does)"
    return None


def root_problem(euid: int) -> str | None:
    """pi-check changes the machine (packages, binfmt, mounts, chroot): it needs root."""
    if euid != 0:
        return "needs root (debootstrap, chroot and mounts): run it as root, e.g. sudo make pi-check"
    return None


# ------------------------------------------------------------------ steps on the host


def host_packages(check: PiCheck) -> str:
    """debootstrap, qemu-user-static, binfmt-support and mosquitto, installed with apt-get when missing."""
    check.run([str(REPO / "scripts" / "ensure-debian-packages"), *HOST_PACKAGES], timeout=900)
    return ", ".join(HOST_PACKAGES)


def binfmt(check: PiCheck) -> str:
    """binfmt_misc mounted and qemu-aarch64 enabled, so the kernel runs arm64 programs through qemu."""
    if not os.path.ismount(BINFMT):
        check.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], timeout=30)
    if binfmt_problem() is not None:
        check.run(["update-binfmts", "--enable", BINFMT_ENTRY], timeout=30)
    problem = binfmt_problem()
    if problem:
        raise CheckFailed(problem)
    flags = [line for line in (BINFMT / BINFMT_ENTRY).read_text().splitlines() if line.startswith("flags:")]
    return f"{BINFMT_ENTRY} enabled, {flags[0]}"


def base_recipe() -> str:
    """What the cached base was made with: a different recipe makes it again."""
    return shlex.join([*DEBOOTSTRAP, SUITE, MIRROR]) + "\n"


def root_filesystem(check: PiCheck) -> str:
    """The cached Debian 12 arm64 base (built when missing or its recipe changed), copied afresh."""
    base, stamp = check.cache / "base", check.cache / "base.recipe"
    made = "cached"
    if check.fresh or not base.is_dir() or not stamp.is_file() or stamp.read_text() != base_recipe():
        partial = check.cache / "base.partial"
        for stale in (partial, base):
            if stale.exists():
                remove_tree(stale)
        stamp.unlink(missing_ok=True)
        started = time.monotonic()
        check.run([*DEBOOTSTRAP, "--foreign", SUITE, str(partial), MIRROR], timeout=1800)
        first_s = time.monotonic() - started
        try:  # the second stage runs arm64 programs: emulated, ~10 minutes
            check.run(
                ["chroot", str(partial), "/debootstrap/debootstrap", "--second-stage"],
                timeout=3600,
                env={"PATH": CHROOT_PATH, "LANG": "C.UTF-8", "QEMU_CPU": QEMU_CPU},
            )
        finally:
            end_processes_in(partial)  # a timeout ends only the chroot command itself
            unmount_under(partial)  # the second stage mounts /proc and /sys itself
        partial.rename(base)
        stamp.write_text(base_recipe())
        second_s = time.monotonic() - started - first_s
        made = f"built: first stage {first_s:.0f} s, second stage {second_s:.0f} s"
    if check.root.exists():
        remove_tree(check.root)
    check.root.parent.mkdir(parents=True, exist_ok=True)
    check.run(["cp", "-a", str(base), str(check.root)], timeout=900)
    machine = check.chroot(["/usr/bin/uname", "-m"], timeout=120).strip()
    python = check.chroot(["/usr/bin/python3", "--version"], timeout=300).strip()
    if machine != "aarch64":
        raise CheckFailed(f"uname -m in the chroot says {machine!r}, not aarch64")
    return f"Debian 12 arm64 ({made}), fresh copy: {machine}, {python}"


def mediapipe_pin() -> str:
    """The one mediapipe pin, from the Makefile (as install.sh reads it)."""
    found = re.search(r"^MEDIAPIPE := *(\S+)", (REPO / "Makefile").read_text(), re.MULTILINE)
    if not found:
        raise CheckFailed(f"no MEDIAPIPE pin in {REPO / 'Makefile'}")
    return found.group(1)


def build_requirements() -> list[str]:
    """What pip needs to build the kiosk's own package (pyproject's build-system requires)."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]


def wheels(check: PiCheck) -> str:
    """Every pin's aarch64 wheel for CPython 3.11 under glibc 2.36, fetched once per pin set."""
    requirements = REPO / "requirements" / "device.txt"
    pins = [requirements.read_text(), mediapipe_pin(), *build_requirements(), *PLATFORMS]
    recipe = hashlib.sha256("\n".join(pins).encode()).hexdigest()
    folder, stamp = check.cache / "wheels", check.cache / "wheels.recipe"
    made = "cached"
    if check.fresh or not folder.is_dir() or not stamp.is_file() or stamp.read_text() != recipe:
        partial = check.cache / "wheels.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        stamp.unlink(missing_ok=True)
        download = [
            *[sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(partial)],
            *["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"],
            *["--abi", "cp" + PYTHON_VERSION.replace(".", "")],
            *[option for platform in PLATFORMS for option in ("--platform", platform)],
        ]
        check.run([*download, "--requirement", str(requirements), *build_requirements()], timeout=1800)
        # mediapipe's declared dependencies would add a second OpenCV and jax (README, Dependencies)
        check.run([*download, "--no-deps", mediapipe_pin()], timeout=1800)
        partial.rename(folder)
        stamp.write_text(recipe)
        made = "downloaded"
    files = sorted(folder.glob("*.whl"))
    foreign = [f.name for f in files if not f.name.endswith(("-any.whl", "_aarch64.whl"))]
    if foreign:
        raise CheckFailed(f"wheels for another platform: {', '.join(foreign)}")
    size = sum(f.stat().st_size for f in files) / 1e6
    return f"{len(files)} wheels, {size:.0f} MB ({made}): requirements/device.txt, {mediapipe_pin()}"


def bundles(check: PiCheck) -> str:
    """The squat/push-up model trained here, exported as TFLite 1.0.0, skops 2.0.0, TFLite 3.0.0."""
    from trainer.__main__ import main as trainer
    from trainer.recipes import fitness_bundle

    check.host.mkdir(parents=True, exist_ok=True)
    assert check.log is not None
    with contextlib.redirect_stdout(check.log), contextlib.redirect_stderr(check.log):
        made = fitness_bundle(FITNESS_TABLE, check.host / "model", version="1.0.0")
        check.bundles["1.0.0"] = made.bundle
        for version in ("2.0.0", "3.0.0"):
            bundle = check.host / f"model-{version}.zip"
            export = ["export", str(made.run_dir), "--out", str(bundle), "--key", str(made.signing_key)]
            export += ["--model-id", "fitness", "--version", version, "--runtime", MODEL_VERSIONS[version]]
            if trainer(export) != 0:
                raise CheckFailed(f"trainer export of {version} failed (see the log)")
            check.bundles[version] = bundle
    runtimes = {}
    for version, bundle in check.bundles.items():
        with zipfile.ZipFile(bundle) as archive:
            runtimes[version] = json.loads(archive.read("manifest.json"))["runtime"]
    if runtimes != MODEL_VERSIONS:
        raise CheckFailed(f"bundle runtimes {runtimes}, expected {MODEL_VERSIONS}")
    return ", ".join(f"{version} {runtime}" for version, runtime in runtimes.items())


def kiosk_files(check: PiCheck) -> str:
    """A host mosquitto, and the kiosk's folder from ``provisioning init-device`` (as for a real Pi)."""
    from tests.broker import Mosquitto, free_port

    broker = Mosquitto()
    check.stack.enter_context(broker)
    check.mqtt_port = broker.port
    srv = check.inside(SRV)
    srv.mkdir(parents=True, exist_ok=True)
    shutil.copy2(SQUATS, srv / SQUATS.name)
    for version, bundle in check.bundles.items():
        shutil.copy2(bundle, srv / f"model-{version}.zip")
    port = free_port()
    check.fleet = check.host / "fleet.toml"
    check.fleet.unlink(missing_ok=True)
    init = [sys.executable, "-m", "provisioning", "init-device", "--name", KIOSK, "--force"]
    init += ["--out", str(srv / "kiosk"), "--workstation", str(check.host / "workstation")]
    init += ["--trusted-key", str(check.host / "model" / "keys" / "signing.pub"), "--source", "file"]
    init += ["--video", f"{SRV}/{SQUATS.name}", "--port", str(port), "--url", f"https://127.0.0.1:{port}"]
    init += ["--host", "127.0.0.1", "--mqtt-port", str(broker.port), "--fleet", str(check.fleet)]
    check.run(init, timeout=120, cwd=check.host)
    return f"init-device: HTTPS on port {port}, MQTT to the host's mosquitto on port {broker.port}"


def checkout(check: PiCheck) -> None:
    """This checkout's installable files, copied into the chroot for install.sh to run from."""
    target = check.inside(SRC)
    if target.exists():
        shutil.rmtree(target)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in CHECKOUT:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


# ------------------------------------------------------------------ steps in the chroot


def mounts(check: PiCheck) -> str:
    """/proc with a Raspberry Pi's cpuinfo over it, /sys, /dev and a private /dev/shm; undone at the end."""
    cpuinfo = check.work / "cpuinfo"
    cpuinfo.write_text(PI_CPUINFO)
    root = str(check.root)
    for command in (
        ["mount", "-t", "proc", "proc", f"{root}/proc"],
        ["mount", "--bind", str(cpuinfo), f"{root}/proc/cpuinfo"],
        ["mount", "-t", "sysfs", "sysfs", f"{root}/sys"],
        ["mount", "--bind", "/dev", f"{root}/dev"],
        ["mount", "--make-private", f"{root}/dev"],  # what is mounted below must not reach the host's /dev
        ["mount", "-t", "tmpfs", "-o", "mode=1777,size=256m", "tmpfs", f"{root}/dev/shm"],
    ):
        check.run(command, timeout=30)
    model = check.chroot(["/usr/bin/sed", "-n", "s/^Model\\t*: //p", "/proc/cpuinfo"], timeout=120).strip()
    return f"{len(mounts_under(check.root))} mounts; /proc/cpuinfo: {model}"


def install(check: PiCheck) -> str:
    """provisioning/install.sh as root in the chroot, for real (user, files, venv), from the cached wheels."""
    checkout(check)
    wheels_inside = check.inside(f"{SRV}/wheels")
    if wheels_inside.exists():
        shutil.rmtree(wheels_inside)
    check.run(["cp", "-al", str(check.cache / "wheels"), str(wheels_inside)], timeout=120)  # links: instant
    output = check.chroot(
        ["/bin/sh", f"{SRC}/provisioning/install.sh", "--config", f"{SRV}/kiosk/device.toml"],
        timeout=3600,
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=f"{SRV}/wheels",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    last = output.strip().splitlines()[-1].removeprefix("install: ")
    return f"install.sh: {last} (service user {check.service_user().user})"


def imports(check: PiCheck) -> str:
    """The venv's libraries and the daemon's modules import under the service user, as aarch64."""
    user = check.service_user()
    found = json.loads(check.chroot([user.python, "-c", IMPORTS_PROBE], timeout=900, user=user))
    if found.pop("machine") != "aarch64":
        raise CheckFailed("the venv's Python does not run as aarch64")
    return ", ".join(f"{name} {version}" for name, version in found.items())


def page_alignment(check: PiCheck) -> str:
    """Every shared object of the venv loads on 16 KB pages (Raspberry Pi 5's kernel), read on the host."""
    venv = check.inside("/opt/movement-edge/venv")
    files = [path for path in venv.rglob("*.so*") if path.is_file() and not path.is_symlink()]
    aligns = {path: align for path in files if (align := elf_load_alignment(path)) is not None}
    if not aligns:
        raise CheckFailed(f"no arm64 shared objects under {venv}")
    small = sorted(str(path.relative_to(venv)) for path, align in aligns.items() if align < MIN_PAGE_ALIGN)
    if small:
        raise CheckFailed(f"{len(small)} shared objects need pages under 16 KB: {', '.join(small[:5])}")
    return f"{len(aligns)} shared objects, smallest LOAD alignment {min(aligns.values()) // 1024} KB"


def elf_load_alignment(path: Path) -> int | None:
    """The smallest alignment of an AArch64 ELF file's LOAD segments; None for anything else."""
    with path.open("rb") as elf:
        header = elf.read(64)
        if len(header) < 64 or header[:5] != b"\x7fELF\x02" or struct.unpack_from("<H", header, 18)[0] != 183:
            return None
        (phoff,) = struct.unpack_from("<Q", header, 32)
        entry_size, count = struct.unpack_from("<HH", header, 54)
        elf.seek(phoff)
        table = elf.read(entry_size * count)
    loads = [
        struct.unpack_from("<Q", table, i * entry_size + 48)[0]
        for i in range(count)
        if struct.unpack_from("<I", table, i * entry_size)[0] == 1  # PT_LOAD
    ]
    return min(loads) if loads else None


def pose(check: PiCheck) -> str:
    """The offline pose model built and run on the first frames of squats.mp4, against x86."""
    user = check.service_user()
    arm = json.loads(
        check.chroot(
            [user.python, "-c", POSE_PROBE, f"{SRV}/{SQUATS.name}", str(check.frames)],
            timeout=1800,
            user=user,
        ).splitlines()[-1]
    )
    env = os.environ | {"MOVEMENT_EDGE_CACHE": str(check.host / "pose-cache")}
    x86_probe = [sys.executable, "-c", POSE_PROBE, str(SQUATS), str(check.frames)]
    x86 = json.loads(check.run(x86_probe, timeout=600, env=env, capture=True).splitlines()[-1])
    return compare_poses(arm, x86)


def compare_poses(arm: dict, x86: dict) -> str:
    """Fails unless arm64 finds the person x86 finds in every frame, within the tolerance."""
    pairs = list(zip(arm["frames"], x86["frames"], strict=True))
    missed = [i for i, (a, x) in enumerate(pairs) if a is None and x is not None]
    if missed:
        raise CheckFailed(f"no person on arm64 in frames {missed}, where x86 found one")
    if all(x is None for _, x in pairs):
        raise CheckFailed("no person found in any frame, on x86 either")
    distances = [
        ((ax - xx) ** 2 + (ay - xy) ** 2) ** 0.5
        for a, x in pairs
        if a is not None and x is not None
        for (ax, ay), (xx, xy) in zip(a, x, strict=True)
    ]
    mean = sum(distances) / len(distances)
    summary = (
        f"{len(pairs)} frames, a person in {sum(a is not None for a, _ in pairs)}; arm64 vs x86 "
        f"{mean:.1f} px mean, {max(distances):.1f} px max; {arm['per_frame_s']:.1f} s per frame "
        f"(x86 {x86['per_frame_s'] * 1000:.0f} ms), model built and loaded in {arm['load_s']:.0f} s"
    )
    if mean > POSE_TOLERANCE_PX:
        raise CheckFailed(f"{summary}: over {POSE_TOLERANCE_PX} px")
    return summary


def check_config(check: PiCheck) -> str:
    """check-config of the installed device.toml as the service user: files, video, keys, pose model."""
    user = check.service_user()
    command = [user.python, "-m", "device", "check-config", DEVICE_CONFIG]
    output = check.chroot(command, timeout=900, user=user)
    return f"{DEVICE_CONFIG} accepted as {user.user} ({len(output.splitlines())} lines of settings)"


def models_install(version: str) -> Callable[[PiCheck], str]:
    def step(check: PiCheck) -> str:
        user = check.service_user()
        bundle = f"{SRV}/model-{version}.zip"
        models = [user.python, "-m", "device", "models"]
        config = ["--config", DEVICE_CONFIG]
        output = check.chroot([*models, "install", bundle, *config], timeout=1200, user=user)
        listed = check.chroot([*models, "list", *config], timeout=900, user=user)
        if version not in listed:
            raise CheckFailed(f"models list does not show {version}")
        return f"{MODEL_VERSIONS[version]} {version}: {output.strip().splitlines()[-1]}"

    step.__doc__ = f"models install of the {MODEL_VERSIONS[version]} bundle {version}, as the service user."
    return step


def daemon(check: PiCheck) -> str:
    """The unit's ExecStart as its user on squats.mp4 for --daemon-seconds; 3.0.0 pushed from the host."""
    from tests.broker import Subscriber

    user = check.service_user()
    command, env = check.in_chroot(user.exec_start, user)
    topic = f"movement/{KIOSK}"
    assert check.log is not None
    with Subscriber(check.mqtt_port, f"{topic}/#") as messages:
        check.log.write(f"$ {shlex.join(command)}\n")
        check.log.flush()
        process = subprocess.Popen(command, env=env, stdout=check.log, stderr=subprocess.STDOUT)
        try:
            started = time.monotonic()
            wait_for_status(check, process, timeout=900)
            up_s = time.monotonic() - started
            push = [sys.executable, "-m", "provisioning", "push", str(check.bundles[PUSHED])]
            push += ["--fleet", str(check.fleet), "--timeout", "900"]
            pushed = check.run(push, timeout=1000, capture=True)
            while time.monotonic() - started - up_s < check.daemon_seconds:
                if process.poll() is not None:
                    raise CheckFailed(f"the daemon exited with status {process.returncode} while running")
                time.sleep(1)
            # Emulated, a frame takes the pose stage 5-15 s: give the pushed model's first result time.
            with contextlib.suppress(TimeoutError):
                messages.wait_until(f"{topic}/classification", from_pushed_model, timeout=PUSHED_RESULT_S)
            ran_s = time.monotonic() - started - up_s
            status = wait_for_status(check, process, timeout=120)
        finally:
            code = stop(process)
        classifications = messages.payloads(f"{topic}/classification")
        availability = [m.payload.decode() for m in messages.messages(f"{topic}/availability")]
    check.log.write(f"status after the run:\n{status}\n")
    versions = [str(payload.get("model", {}).get("version")) for payload in classifications]
    counts = ", ".join(f"{versions.count(v)} by {v}" for v in sorted(set(versions))) or "none"
    summary = (
        f"up in {up_s:.0f} s, ran {ran_s:.0f} s; push 3.0.0: {pushed_result(pushed)}; classifications: "
        f"{counts}; availability {' -> '.join(availability)}; exit {code}"
    )
    if PUSHED not in versions or code != 0 or availability[-1:] != ["stopped"]:
        raise CheckFailed(summary)  # the push failing already failed the step: push exits 1 then
    return summary


def from_pushed_model(message: Received) -> bool:
    return json.loads(message.payload).get("model", {}).get("version") == PUSHED


def pushed_result(output: str) -> str:
    """The status word of the kiosk's row in ``provisioning push``'s table."""
    row = next((line.split() for line in output.splitlines() if line.startswith(KIOSK)), [])
    return row[1] if len(row) > 1 else "no row"


def wait_for_status(check: PiCheck, process: subprocess.Popen[bytes], timeout: float) -> str:
    """``provisioning status`` until the kiosk answers; fails if the daemon exits first."""
    deadline = time.monotonic() + timeout
    command = [sys.executable, "-m", "provisioning", "status", "--fleet", str(check.fleet), "--timeout", "20"]
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CheckFailed(f"the daemon exited with status {process.returncode} (its log is below)")
        answer = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if answer.returncode == 0:
            return answer.stdout
        time.sleep(5)
    raise CheckFailed(f"the daemon's HTTPS port did not answer within {timeout:.0f} s")


def stop(process: subprocess.Popen[bytes], timeout: float = 180) -> int:
    """SIGTERM, as systemd stops the unit; SIGKILL after ``timeout`` (emulated: slow). The exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)
        return -9


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[PiCheck], str]
    needs: tuple[str, ...] = ()


STEPS = (
    Step("host packages", host_packages),
    Step("binfmt_misc", binfmt, ("host packages",)),
    Step("root filesystem", root_filesystem, ("binfmt_misc",)),
    Step("aarch64 wheels", wheels),
    Step("bundles (x86 trainer)", bundles),
    Step("kiosk files", kiosk_files, ("host packages", "root filesystem", "bundles (x86 trainer)")),
    Step("chroot mounts", mounts, ("root filesystem",)),
    Step("install.sh", install, ("chroot mounts", "aarch64 wheels", "kiosk files")),
    Step("imports", imports, ("install.sh",)),
    Step("16 KB pages", page_alignment, ("install.sh",)),
    Step("pose on squats.mp4", pose, ("install.sh",)),
    Step("check-config", check_config, ("install.sh",)),
    Step("models install tflite", models_install("1.0.0"), ("install.sh",)),
    Step("models install skops", models_install("2.0.0"), ("models install tflite",)),
    Step("daemon + push", daemon, ("models install skops",)),
)


# ------------------------------------------------------------------ running


@dataclass(frozen=True)
class Outcome:
    step: Step
    status: str  # PASS, FAIL or SKIP
    seconds: float
    detail: str


def run_steps(check: PiCheck) -> list[Outcome]:
    """Every step in order, each timed and logged; a step whose needs did not pass is skipped."""
    logs = check.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    passed: set[str] = set()
    for number, step in enumerate(STEPS, 1):
        label = f"[{number:2}/{len(STEPS)}] {step.name}"
        missing = [need for need in step.needs if need not in passed]
        if missing:
            outcomes.append(Outcome(step, "SKIP", 0.0, f"needs {', '.join(missing)}"))
            print(f"SKIP {label}: needs {', '.join(missing)}", flush=True)
            continue
        print(f"==>  {label} ...", flush=True)
        log_path = logs / f"{number:02}-{re.sub(r'[^a-z0-9]+', '-', step.name.lower()).strip('-')}.log"
        started = time.monotonic()
        with log_path.open("w") as check.log:
            try:
                outcome = Outcome(step, "PASS", 0.0, step.run(check))
            except (CheckFailed, OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
                outcome = Outcome(step, "FAIL", 0.0, str(exc) or type(exc).__name__)
        check.log = None
        outcome = Outcome(step, outcome.status, time.monotonic() - started, outcome.detail)
        outcomes.append(outcome)
        print(f"{outcome.status} {label} ({outcome.seconds:.1f} s): {outcome.detail}", flush=True)
        if outcome.status == "PASS":
            passed.add(step.name)
        else:
            tail = log_path.read_text(errors="replace").splitlines()[-25:]
            print("\n".join(f"     | {line}" for line in tail), f"\n     (whole log: {log_path})", flush=True)
    return outcomes


def summary(outcomes: list[Outcome], seconds: float) -> str:
    width = max(len(o.step.name) for o in outcomes)
    rows = [f"{o.status}  {o.step.name:<{width}}  {o.seconds:7.1f} s" for o in outcomes]
    counts = {status: sum(o.status == status for o in outcomes) for status in ("PASS", "FAIL", "SKIP")}
    total = ", ".join(f"{n} {status.lower()}" for status, n in counts.items()) + f" in {seconds / 60:.1f} min"
    return "\n".join(["", "summary:", *rows, total])


class _Parser(argparse.ArgumentParser):
    """One line for a usage mistake (as every command of this repository), not argparse's usage dump."""

    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(ExitStatus.USAGE)


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            whole = "whole " if kind is int else ""
            raise argparse.ArgumentTypeError(f"must be a positive {whole}number, got {text!r}")
        return value

    return parse


def step_lines() -> list[str]:
    """The steps, numbered, each with the first line of what it does."""
    return [
        f"{number:2}. {step.name}: {(step.run.__doc__ or '').strip().splitlines()[0]}"
        for number, step in enumerate(STEPS, 1)
    ]


def parser() -> argparse.ArgumentParser:
    described = _Parser(
        prog=PROG,
        description=(__doc__ or "").strip() + "\n\nSteps:\n" + "\n".join(step_lines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    option = described.add_argument
    option("--cache", type=Path, default=DEFAULT_CACHE, help="root fs, wheels, last run (.cache/pi-root)")
    option("--fresh", action="store_true", help="build the root filesystem and fetch the wheels again")
    option("--frames", type=positive(int), default=5, help="squats.mp4 frames for the pose step (5)")
    option("--daemon-seconds", type=positive(float), default=60.0, help="how long the daemon runs (60)")
    option("--keep", action="store_true", help="keep the run root filesystem after a pass (kept on failure)")
    option("--list", action="store_true", help="print the steps and exit")
    return described


def _interrupt(signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: processes ended, mounts undone


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.list:
        print("\n".join(step_lines()))
        return ExitStatus.OK
    problem = root_problem(os.geteuid())
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return ExitStatus.USAGE
    if not SQUATS.is_file() or not FITNESS_TABLE.is_file():
        print(f"{PROG}: error: sample data not found at {DATA} (expected ../shared/data)", file=sys.stderr)
        return ExitStatus.USAGE
    logs.quiet_native_logs()  # the x86 trainer's TFLite chatter, between the step lines
    signal.signal(signal.SIGTERM, _interrupt)
    cache = args.cache.resolve()
    print(f"{PROG}: the kiosk on emulated Raspberry Pi OS 64-bit (Debian 12 arm64, qemu-user); cache {cache}")
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        check = PiCheck(cache, args.frames, args.daemon_seconds, args.fresh, stack)
        try:
            outcomes = run_steps(check)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted; ending the chroot's processes, undoing its mounts", file=sys.stderr)
            return ExitStatus.INTERRUPTED
        finally:
            release(check.root)
    print(summary(outcomes, time.monotonic() - started), flush=True)
    failed = any(o.status != "PASS" for o in outcomes)
    if failed or args.keep:
        print(f"the run's root filesystem is kept in {check.root}")
    elif check.root.exists():
        remove_tree(check.root)
    return ExitStatus.FAILED if failed else ExitStatus.OK


def release(root: Path) -> None:
    """Whatever happened: no process left in the chroot, none of its mounts left on the host."""
    ended = end_processes_in(root)  # first: a process inside would keep the mounts busy
    if ended:
        print(f"{PROG}: ended {len(ended)} process(es) left in the chroot: {ended}", file=sys.stderr)
    with contextlib.suppress(CheckFailed):
        unmount_under(root)
    left = mounts_under(root)
    if left:
        print(f"{PROG}: warning: still mounted: {', '.join(left)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
