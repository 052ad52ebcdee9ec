"""The status API under 50 concurrent clients while the pipeline classifies: correct, and no starvation.

Functional, not timed (how fast is ``benchmarks/load_bench.py``'s business): the real daemon
runs in this process on a looping real video with real MediaPipe, publishing to a real mosquitto;
50 keep-alive clients hammer ``/api/status`` over loopback from a child process (the benchmark's
load tool, Python fallback, which checks every body), as a kiosk's viewers would from elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from broker import Mosquitto, Subscriber
from test_daemon import TOPIC, device_config

from benchmarks.http_load import load
from device.config import Config, parse_config
from device.daemon import Daemon
from trainer.recipes import PoseBundle

CLIENTS = 50
LOAD_SECONDS = 4.0


def test_fifty_clients_get_valid_status_while_the_pipeline_keeps_classifying(
    tmp_path: Path, pose_model: PoseBundle, data_dir: Path, run_daemon: Callable[[Config], Daemon]
) -> None:
    classification = f"{TOPIC}/classification"
    with Mosquitto() as broker, Subscriber(broker.port, classification) as sub:
        video = data_dir / "videos" / "dance.mp4"
        config = device_config(tmp_path, pose_model, video, broker.port, pace="realtime", loop=True)
        daemon = run_daemon(parse_config(config))
        sub.wait_for(classification, 1, timeout=60)  # classifying before the load starts
        frames_before = daemon.status.snapshot()["counters"]["frames_processed"]
        published_before = len(sub.messages(classification))

        result = load(f"http://127.0.0.1:{daemon.http_port}/api/status", CLIENTS, LOAD_SECONDS, tool="python")

        frames_during = daemon.status.snapshot()["counters"]["frames_processed"] - frames_before
        published_during = len(sub.messages(classification)) - published_before

    assert result.requests > 0
    assert result.statuses == {200: result.requests}, result.statuses
    assert result.invalid_json == 0
    assert result.connection_errors == 0
    assert len(result.client_requests) == CLIENTS
    assert min(result.client_requests) >= 1, "a client was never answered"
    assert frames_during > 0, "the pipeline stopped processing frames under the load"
    assert published_during > 0, "no classification reached the broker during the load"
