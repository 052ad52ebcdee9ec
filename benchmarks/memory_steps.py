"""The memory breakdown's child process: a fresh interpreter loads the daemon's parts one at a time.

``python -m benchmarks.memory_steps CONFIG VIDEO`` (run by :mod:`benchmarks.memory_bench`, not by
hand) prints one JSON object: the resident memory after each step, cumulative, and the modules (per
top-level package) the daemon of CONFIG has imported once it classifies frames. Every import here is inside a
step, so a step's growth is that step's alone; nothing imports the trainer or the benchmarks'
helpers (only the ``benchmarks`` package itself, whose ``__init__`` imports ``argparse``, which
``device run`` imports too). The steps hold what they load, as the daemon does; so the last step,
which builds and starts the daemon itself (a second pose graph and model), reports only which
modules it imported, not its memory.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def rss_mb() -> float:
    """This process's resident memory (``VmRSS``), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def modules_per_package() -> dict[str, int]:
    """How many modules of each top-level package ``sys.modules`` holds (private ones like ``_ssl`` too)."""
    counts: dict[str, int] = {}
    for name in sys.modules:
        top = name.split(".")[0]
        counts[top] = counts.get(top, 0) + 1
    return dict(sorted(counts.items()))


def steps(config_path: Path, video: Path) -> dict[str, Any]:
    """RSS after each step (cumulative, MB), the bundle's runtime and the modules the running daemon
    imported, per top-level package."""
    memory = [("interpreter", rss_mb())]

    import cv2
    import numpy as np

    memory.append(("numpy and OpenCV", rss_mb()))

    import mediapipe  # noqa: F401  (what device.pose imports: MediaPipe, TFLite's runtime, matplotlib)
    from mediapipe.tasks.python import vision  # noqa: F401

    memory.append(("MediaPipe imported", rss_mb()))

    import device.outbox

    memory.append(("the outbox (sqlite_utils, which imports pandas wherever it is installed)", rss_mb()))

    import device.tracking

    memory.append(("person tracking (scipy.optimize)", rss_mb()))

    import device.__main__  # noqa: F401  (device run's own imports: the CLI, logging)
    from device.config import load_config
    from device.daemon import build  # what device run imports before it builds the daemon

    memory.append(("the rest of device run's imports (Flask, waitress, pydantic, paho, …)", rss_mb()))

    from device.pose import PoseEstimator, PoseOptions

    estimator = PoseEstimator(PoseOptions(), mode="video")  # the offline .task: both networks
    capture = cv2.VideoCapture(str(video))
    for n in range(30):  # tensors, XNNPACK's packed weights and the tracker are allocated on use
        ok, image = capture.read()
        if not ok:
            break
        estimator.detect(np.ascontiguousarray(image[:, :, ::-1]), n * 50.0)
    capture.release()
    memory.append(("pose graph built and run (MediaPipe, TFLite)", rss_mb()))

    from device.model.store import open_model

    config = load_config(config_path)
    model = open_model(config.model.bundle, config.model.trusted_keys)  # verified, loaded, smoke-tested
    memory.append((f"classifier model loaded ({model.manifest.runtime})", rss_mb()))
    runtime = model.manifest.runtime

    daemon = build(config)
    daemon.start()
    deadline = time.monotonic() + 120
    while not daemon.status.frames_flowing() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)  # a few classifications, published: the imports of every stage have happened
    flowing = daemon.status.frames_flowing()
    daemon.stop()
    estimator.close()
    return {"rss_mb": memory, "runtime": runtime, "modules": modules_per_package(), "frames_flowing": flowing}


if __name__ == "__main__":
    print(json.dumps(steps(Path(sys.argv[1]), Path(sys.argv[2]))))
