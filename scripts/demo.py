"""``make demo``: the whole system on this machine, from sample data to live MQTT messages.

1. trains a model from a table in ``demo/data`` with the trainer (reused when the data and code
   have not changed), signs it with a demo key and checks the bundle: by default (``--model
   fitness``) the squat/push-up key poses with their rep counters, or (``--model poses``) the
   20-pose classifier of the BODY-25 table;
2. starts a local mosquitto broker on a free loopback port;
3. runs the daemon on the bundled sample videos in a loop, status page on http://127.0.0.1:8080;
4. prints the page's URL and a ``mosquitto_sub`` command that shows the live messages.

Ctrl-C (or SIGTERM) stops everything. All state goes to ``.demo/`` in the repository (safe to
delete), or to ``$DEMO_STATE``; ``$DEMO_HTTP_PORT`` moves the page from port 8080 (the tests run
the demo this way, beside whatever else the machine runs).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the packages live beside it

from trainer.recipes import FITNESS_ACTIVITIES, PoseBundle, fitness_bundle, pose_bundle  # noqa: E402

DATA = REPO / "demo" / "data"
STATE = Path(os.environ.get("DEMO_STATE", REPO / ".demo")).resolve()
PYTHON = sys.executable
HTTP_PORT = int(os.environ.get("DEMO_HTTP_PORT", "8080"))


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


@dataclass(frozen=True)
class DemoModel:
    """A model the demo can train: its table, what it is, its trainer recipe and the files it reads."""

    table: Path
    about: str
    recipe: Callable[[Path, Path], PoseBundle]  # (table, work folder) -> the signed bundle
    inputs: tuple[Path, ...] = ()  # read by the recipe besides the table and the code


MODELS: dict[str, DemoModel] = {
    "fitness": DemoModel(
        DATA / "fitness_pose_samples.csv.gz",
        "squat and push-up key poses, BlazePose, counting reps",
        fitness_bundle,
        (FITNESS_ACTIVITIES,),
    ),
    "poses": DemoModel(
        DATA / "BodyPose_Dataset.csv.gz",
        "20 poses, BODY-25",
        functools.partial(pose_bundle, extra_export=("--smoothing", "mean:0.5"), cv=5),
    ),
}


def fingerprint(model: DemoModel) -> str:
    """A demo model depends on its data, the files its recipe reads, and the trainer, keypoint
    and feature code."""
    digest = hashlib.sha256()
    code = [
        *sorted((REPO / "trainer").glob("*.py")),
        REPO / "device" / "keypoints.py",
        REPO / "device" / "features.py",
    ]
    for path in [model.table, *model.inputs, *code]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def demo_model(name: str) -> tuple[Path, Path]:
    """Train, sign and verify the demo model, or reuse the one built from the same inputs.

    Each model has its own folder in ``.demo/``, so switching between them retrains neither.
    """
    model, work = MODELS[name], STATE / name
    bundle, stamp = work / "model.zip", work / "model.fingerprint"
    if bundle.exists() and stamp.exists() and stamp.read_text() == fingerprint(model):
        step(f"reusing the demo model {bundle} (delete {STATE} to retrain)")
        return bundle, work / "keys" / "signing.pub"
    step(f"training the demo model from {model.table.relative_to(REPO)} ({model.about})")
    work.mkdir(exist_ok=True)
    made = model.recipe(model.table, work)
    stamp.write_text(fingerprint(model))
    return made.bundle, made.public_key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_broker() -> tuple[subprocess.Popen, int]:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        sys.exit("demo: mosquitto is not installed; run `make system` (or apt-get install mosquitto)")
    port = free_port()
    config = STATE / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen(
        [mosquitto, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return broker, port
        except OSError:
            time.sleep(0.1)
    broker.kill()
    sys.exit(f"demo: mosquitto did not start on port {port}")


def write_config(bundle: Path, public_key: Path, mqtt_port: int) -> Path:
    config = STATE / "device.toml"
    config.write_text(
        f"""# written by `make demo`
[device]
id = "demo-kiosk"
name = "Demo kiosk"
state_dir = "{STATE / 'state'}"

[source]
kind = "file"
paths = ["{DATA / 'squats.mp4'}", "{DATA / 'dance.mp4'}"]
loop = true
pace = "realtime"

[model]
bundle = "{bundle}"
trusted_keys = ["{public_key}"]

[mqtt]
port = {mqtt_port}
prefix = "movement"
stats_interval_s = 5

[http]
bind = "127.0.0.1"
port = {HTTP_PORT}
"""
    )
    return config


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo like Ctrl-C: daemon first, then the broker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The whole system here: a demo model, a local broker, the daemon on sample videos."
    )
    parser.add_argument(
        "--model", choices=list(MODELS), default="fitness", help="the model to run (default fitness)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    STATE.mkdir(exist_ok=True)
    bundle, public_key = demo_model(args.model)
    step("starting a local MQTT broker")
    broker, mqtt_port = start_broker()
    config = write_config(bundle, public_key, mqtt_port)
    step("starting the daemon on demo/data/squats.mp4 and dance.mp4 (looping)")
    with (STATE / "daemon.log").open("w") as log:
        daemon = subprocess.Popen(
            [PYTHON, "-m", "device", "run", "--config", str(config)], cwd=REPO, stdout=log, stderr=log
        )
        print(
            f"""
  status page   http://127.0.0.1:{HTTP_PORT}/
  live messages mosquitto_sub -h 127.0.0.1 -p {mqtt_port} -t 'movement/#' -v
  daemon log    {STATE / "daemon.log"}
  config        {config}

Ctrl-C stops everything.""",
            flush=True,
        )
        return supervise(daemon, broker)


def supervise(daemon: subprocess.Popen, broker: subprocess.Popen) -> int:
    """Wait until Ctrl-C or until a process dies; then stop both, daemon first."""
    try:
        while daemon.poll() is None and broker.poll() is None:
            time.sleep(0.5)
        print(f"demo: the daemon exited; see {STATE / 'daemon.log'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
        return 0
    finally:
        for process in (daemon, broker):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    sys.exit(main())
