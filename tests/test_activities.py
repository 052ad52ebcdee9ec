"""Repetitions, sets and holds: activities in the bundle, counted by the one decision pipeline.

The 20-pose model of the sample data (``pose_model``) has ``Squat`` and ``Stand``; an ``angle``
activity needs no model decision at all. Both run on real MediaPipe keypoints of ``squats.mp4``
(three squats, the clip ends while she rises from the third), through replay, the Python API
and the daemon over a real broker.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from broker import Mosquitto, Subscriber, free_port
from conftest import PoseBundle, eventually

from device.__main__ import main as device
from device.activities import ActivityEvent
from device.classifier import Classifier
from device.config import Config, parse_config
from device.daemon import Daemon
from device.prediction import Prediction
from trainer.__main__ import main as trainer

DEVICE = "kiosk-activities"
ACTIVITIES = """\
[activity.knee_bend]
kind = "angle"
feature = "angle.left_knee"
low = 100.0
high = 160.0
measures = ["angle.left_knee", "angle.right_knee"]

[activity.standing]
kind = "hold"
label = "Stand"
min_confidence = 0.8
rest_s = 1.0
"""


def export_with(model: PoseBundle, activities: str, work: Path, name: str = "activities") -> PoseBundle:
    """The pose model's run exported again with ``activities`` (a TOML text)."""
    spec = work / f"{name}.toml"
    spec.write_text(activities)
    bundle = work / f"{name}.zip"
    argv = ["export", str(model.run_dir), "--out", str(bundle), "--key", str(model.signing_key)]
    assert trainer([*argv, "--model-id", "poses", "--version", "1.0.0", "--activities", str(spec)]) == 0
    return replace(model, bundle=bundle)


@pytest.fixture(scope="module")
def counting_model(pose_model: PoseBundle, tmp_path_factory: pytest.TempPathFactory) -> PoseBundle:
    return export_with(pose_model, ACTIVITIES, tmp_path_factory.mktemp("counting"))


@pytest.fixture(scope="module")
def squats_replayed(
    counting_model: PoseBundle, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> list:
    out = tmp_path_factory.mktemp("replayed") / "squats.jsonl"
    argv = ["replay", str(data_dir / "videos" / "squats.mp4"), "--bundle", str(counting_model.bundle)]
    assert (
        device([*argv, "--trusted-key", str(counting_model.public_key), "--out", str(out), "--no-progress"])
        == 0
    )
    return [json.loads(line) for line in out.read_text().splitlines()]


def events_of(lines: list[dict], activity: str) -> list[dict]:
    return [x["payload"] for x in lines if x["topic"] == "events" and x["payload"]["activity"] == activity]


def test_the_angle_kind_counts_two_squats_and_an_incomplete_third(squats_replayed: list[dict]) -> None:
    events = events_of(squats_replayed, "knee_bend")
    assert [e["type"] for e in events] == ["start", "rep", "rep", "end"]
    reps = [e for e in events if e["type"] == "rep"]
    assert [e["rep"] for e in reps] == [1, 2] and {e["set"] for e in events} == {1}
    end = events[-1]
    assert end["reps"] == 2 and end["incomplete"] is True  # the clip ends in the third squat
    # durations are video time, the same on every run: whole frames of the 5 frames/s clip
    assert [rep["duration_s"] * 5 for rep in reps] == pytest.approx([8, 9])
    for rep in reps:
        knee = rep["measures"]["angle.left_knee"]
        assert (
            75 <= knee["min"] <= 100
            and knee["max"] >= 160
            and knee["range"] == pytest.approx(knee["max"] - knee["min"], abs=0.02)
        )
        # the asymmetry of the deepest angles, left minus right
        right = rep["measures"]["angle.right_knee"]["min"]
        assert rep["asymmetry"]["knee"] == pytest.approx(knee["min"] - right, abs=0.02)
    # every output is numbered as the kiosk's outbox numbers it: one sequence for both topics
    assert [x["payload"]["seq"] for x in squats_replayed] == list(range(1, len(squats_replayed) + 1))


def test_the_python_api_on_the_same_file_counts_alike(
    counting_model: PoseBundle, squats_replayed: list[dict], data_dir: Path, task_path: Path
) -> None:
    """The Python API on the same file gives the events replay wrote (one pipeline)."""
    with Classifier.open(counting_model.bundle, [counting_model.public_key]) as api:
        outputs = list(api.classify_video(data_dir / "videos" / "squats.mp4"))
    ours = [o.payload() for o in outputs if isinstance(o, ActivityEvent)]
    theirs = [
        {k: v for k, v in x["payload"].items() if k != "seq"}
        for x in squats_replayed
        if x["topic"] == "events"
    ]
    assert ours == theirs


def _stand_and_squat(model: PoseBundle, squats_reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference frames the model is surest are Stand and Squat."""
    with Classifier.open(model.bundle, [model.public_key]) as api:
        results = [
            next(o for o in api.feed_keypoints(points, n * 200.0) if isinstance(o, Prediction))
            for n, points in enumerate(squats_reference)
        ]
    probability = {
        label: np.array([dict(r.probabilities)[label] for r in results]) for label in ("Stand", "Squat")
    }
    return squats_reference[int(np.argmax(probability["Stand"]))], squats_reference[
        int(np.argmax(probability["Squat"]))
    ]


def test_a_hold_is_timed_to_a_frame_with_short_breaks_left_out(
    counting_model: PoseBundle, squats_reference: np.ndarray
) -> None:
    """At 30 frames/s: 2 s standing, a 0.5 s break (shorter than rest_s 1 s), 2 s standing, then
    squatting for good. The hold is the 4 s of standing, give or take a frame."""
    stand, squat = _stand_and_squat(counting_model, squats_reference)
    frames = [stand] * 60 + [squat] * 15 + [stand] * 60 + [squat] * 60
    with Classifier.open(counting_model.bundle, [counting_model.public_key]) as api:
        events = [
            o
            for n, points in enumerate(frames)
            for o in api.feed_keypoints(points, n * 1000 / 30)
            if isinstance(o, ActivityEvent) and o.activity == "standing"
        ]
    assert [e.type for e in events] == ["start", "hold", "end"]
    assert events[1].duration_s == pytest.approx(4.0, abs=1 / 30 + 1e-9)


BAD_ACTIVITIES = {
    "unknown label": (
        '[activity.squat]\nkind = "phases"\nphases = ["Stand", "squat_down"]\n',
        "activity.squat.phases[1]: 'squat_down' is not a label of this model (labels: ",
    ),
    "unknown feature": (
        '[activity.bend]\nkind = "angle"\nfeature = "angle.left_toe"\nlow = 90\nhigh = 150\n',
        "activity.bend.feature: 'angle.left_toe' is not a per-frame feature of this model's spec",
    ),
    "low not below high": (
        '[activity.bend]\nkind = "angle"\nfeature = "angle.left_knee"\nlow = 150\nhigh = 150\n',
        "activity.bend.low: must be below high (150), got 150",
    ),
    "enter below exit": (
        '[activity.squat]\nkind = "phases"\nphases = ["Stand", "Squat"]\nenter = 0.3\nexit = 0.5\n',
        "activity.squat.enter: must be at least exit (0.5), got 0.3",
    ),
    "unknown kind": (
        '[activity.squat]\nkind = "reps"\n',
        "activity.squat.kind: 'reps' is not one of phases, angle, hold",
    ),
    "unknown key": (
        '[activity.plank]\nkind = "hold"\nlabel = "Plank"\nmin_conf = 0.5\n',
        "activity.plank.min_conf: unknown key (a hold activity takes ",
    ),
    "missing key": ('[activity.plank]\nkind = "hold"\n', "activity.plank.label: missing"),
    "unknown measure": (
        '[activity.squat]\nkind = "phases"\nphases = ["Stand", "Squat"]\nmeasures = ["angle.knee"]\n',
        "activity.squat.measures[0]: 'angle.knee' is not a per-frame feature",
    ),
    "not a table": ("activity = 3\n", "activity: expected a table of activities, got int"),
    "negative seconds": (
        '[activity.squat]\nkind = "phases"\nphases = ["Stand", "Squat"]\nrest_s = -1\n',
        "activity.squat.rest_s: seconds within 0..3600, got -1",
    ),
    "not TOML": ("[activity.squat\n", "not valid TOML"),
}


@pytest.mark.parametrize("case", list(BAD_ACTIVITIES))
def test_every_bad_activities_file_fails_export_with_one_line_naming_the_key(
    case: str, pose_model: PoseBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, message = BAD_ACTIVITIES[case]
    spec, bundle = tmp_path / "activities.toml", tmp_path / "model.zip"
    spec.write_text(text)
    capsys.readouterr()
    argv = ["export", str(pose_model.run_dir), "--out", str(bundle), "--key", str(pose_model.signing_key)]
    assert trainer([*argv, "--activities", str(spec)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(spec) in err and message in err, err
    assert not bundle.exists() and not list(tmp_path.glob(".*partial*"))


def _daemon_config(model: PoseBundle, video: Path, work: Path, port: int) -> dict:
    return {
        "device": {"id": DEVICE, "state_dir": str(work / "state")},
        "source": {"kind": "file", "paths": [str(video)], "pace": "fast", "loop": False},
        "model": {"bundle": str(model.bundle), "trusted_keys": [str(model.public_key)]},
        "mqtt": {"port": port, "stats_interval_s": 60},
        "http": {"port": 0},
    }


def test_the_daemon_publishes_events_and_the_retained_activity_after_a_broker_outage(
    counting_model: PoseBundle,
    squats_replayed: list[dict],
    data_dir: Path,
    tmp_path: Path,
    run_daemon: Callable[[Config], Daemon],
) -> None:
    """The broker is down while the whole clip is classified; when it comes up, every event
    arrives, in order, as replay wrote them, and the retained ``activity`` state follows."""
    import urllib.request

    port = free_port()
    base = f"movement/{DEVICE}"
    daemon = run_daemon(
        parse_config(_daemon_config(counting_model, data_dir / "videos" / "squats.mp4", tmp_path, port))
    )
    assert eventually(daemon.capture.ended.is_set, 60, "the video to end")
    expected = [
        {k: v for k, v in x["payload"].items() if k != "ts"}
        for x in squats_replayed
        if x["topic"] == "events"
    ]
    eventually(
        lambda: daemon.status.snapshot()["counters"]["activity_events"] == len(expected), 30, "every event"
    )
    with Mosquitto(port) as _broker, Subscriber(port, [f"{base}/events", f"{base}/activity"]) as sub:
        received = [m.json() for m in sub.wait_for(f"{base}/events", len(expected), timeout=30)]
        # as replay wrote them, plus the outbox's epoch (replay keeps no outbox), one for them all
        assert [{k: v for k, v in p.items() if k not in ("ts", "epoch")} for p in received] == expected
        assert len({p["epoch"] for p in received}) == 1
        state = sub.wait_for(f"{base}/activity")[-1].json()
    assert state["person"] == 1 and state["current"] is None  # the clip ended: no set in progress
    assert state["activities"]["knee_bend"]["reps"] == 2 and state["activities"]["knee_bend"]["set"] == 1
    last_rep = [e for e in expected if e["type"] == "rep"][-1]
    assert state["last_range"] == last_rep["measures"]["angle.left_knee"]["range"]
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}/api/status", timeout=5) as response:
        snapshot = json.load(response)
    assert snapshot["activity"]["activities"]["knee_bend"]["reps"] == 2
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'movement_edge_activity_events_total{activity="knee_bend",type="rep"} 2.0' in metrics
