"""Counting real squats with the key-pose model (the demo's recipe), and counting nothing else.

``squats.mp4`` shows three squats and ends while she rises from the third. Replay and the daemon
must count two squats with an incomplete third; the clip with a few of its own standing frames
appended, three in one set; the mirrored clip, the same. Dancing, walking and a movement lab with
three people give no squat and no push-up. Real MediaPipe on the real frames throughout.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest
from broker import Mosquitto, Subscriber
from conftest import PoseBundle, eventually

from device.__main__ import main as device
from device.config import Config, parse_config
from device.daemon import Daemon

DEVICE = "kiosk-counting"


def replay_events(model: PoseBundle, video: Path, out: Path, *extra: str) -> list[dict]:
    argv = ["replay", str(video), "--bundle", str(model.bundle), "--trusted-key", str(model.public_key)]
    assert device([*argv, "--out", str(out), "--no-progress", *extra]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return [line["payload"] for line in lines if line["topic"] == "events"]


def of(events: list[dict], activity: str, kind: str | None = None) -> list[dict]:
    return [e for e in events if e["activity"] == activity and kind in (None, e["type"])]


def rewrite(video: Path, out: Path, *, flip: bool = False, append_first: int = 0) -> Path:
    """The video re-encoded at its rate: mirrored left-right, or with its first frames again at the end."""
    capture = cv2.VideoCapture(str(video))
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while (frame := capture.read())[0]:
        frames.append(cv2.flip(frame[1], 1) if flip else frame[1])
    capture.release()
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for image in frames + frames[:append_first]:
        writer.write(image)
    writer.release()
    return out


@pytest.fixture(scope="module")
def squat_events(
    fitness_model: PoseBundle, squats: Path, tmp_path_factory: pytest.TempPathFactory
) -> list[dict]:
    return replay_events(fitness_model, squats, tmp_path_factory.mktemp("squats") / "squats.jsonl")


def assert_two_squats_and_an_incomplete_third(events: list[dict]) -> None:
    squat = of(events, "squat")
    assert [e["type"] for e in squat] == ["start", "rep", "rep", "end"], squat
    end = squat[-1]
    assert end["reps"] == 2 and end["incomplete"] is True and end["set"] == 1
    for rep in of(events, "squat", "rep"):
        deepest = min(rep["measures"][knee]["min"] for knee in ("angle.left_knee", "angle.right_knee"))
        assert 75 <= deepest <= 105, rep  # about 82-100° on this clip
    # durations are video time, the same on every run: whole frames of the 5 frames/s clip
    assert [rep["duration_s"] * 5 for rep in of(events, "squat", "rep")] == pytest.approx([10, 10])
    assert of(events, "pushup") == []


def test_replay_counts_two_squats_and_an_incomplete_third(squat_events: list[dict]) -> None:
    assert_two_squats_and_an_incomplete_third(squat_events)


def test_the_clip_with_its_own_standing_frames_appended_counts_three_in_one_set(
    fitness_model: PoseBundle, squats: Path, tmp_path: Path
) -> None:
    longer = rewrite(squats, tmp_path / "squats-then-standing.mp4", append_first=6)  # 1.2 s of standing
    events = replay_events(fitness_model, longer, tmp_path / "longer.jsonl")
    squat = of(events, "squat")
    assert [e["type"] for e in squat] == ["start", "rep", "rep", "rep", "end"], squat
    assert squat[-1]["reps"] == 3 and squat[-1]["incomplete"] is False and {e["set"] for e in squat} == {1}


def test_the_mirrored_clip_counts_alike(fitness_model: PoseBundle, squats: Path, tmp_path: Path) -> None:
    mirrored = rewrite(squats, tmp_path / "squats-mirrored.mp4", flip=True)
    assert_two_squats_and_an_incomplete_third(
        replay_events(fitness_model, mirrored, tmp_path / "mirrored.jsonl")
    )


@pytest.mark.parametrize("video", ["dance.mp4", "example_video.webm", "lab_three_people.mp4"])
def test_no_ghost_repetitions_in_dancing_walking_or_a_crowded_lab(
    video: str, fitness_model: PoseBundle, data_dir: Path, tmp_path: Path
) -> None:
    events = replay_events(fitness_model, data_dir / "videos" / video, tmp_path / "events.jsonl")
    assert of(events, "squat", "rep") == [] and of(events, "pushup", "rep") == []


def test_the_daemon_counts_as_replay_does(
    fitness_model: PoseBundle,
    squats: Path,
    squat_events: list[dict],
    tmp_path: Path,
    run_daemon: Callable[[Config], Daemon],
) -> None:
    base = f"movement/{DEVICE}"
    with Mosquitto() as broker, Subscriber(broker.port, [f"{base}/events", f"{base}/activity"]) as sub:
        config = {
            "device": {"id": DEVICE, "state_dir": str(tmp_path / "state")},
            "source": {"kind": "file", "paths": [str(squats)], "pace": "fast", "loop": False},
            "model": {"bundle": str(fitness_model.bundle), "trusted_keys": [str(fitness_model.public_key)]},
            "mqtt": {"port": broker.port, "stats_interval_s": 60},
            "http": {"enabled": False},
        }
        daemon = run_daemon(parse_config(config))
        assert eventually(daemon.capture.ended.is_set, 60, "the video to end")
        received = [m.json() for m in sub.wait_for(f"{base}/events", len(squat_events), timeout=30)]
        state = sub.wait_until(
            f"{base}/activity", lambda m: m.json()["activities"]["squat"]["reps"] == 2
        ).json()
    assert_two_squats_and_an_incomplete_third(received)
    # as replay counts them; numbering and the outbox's epoch are the kiosk's own
    numbering = ("ts", "seq", "epoch")
    without_time = [{k: v for k, v in e.items() if k not in numbering} for e in received]
    assert without_time == [{k: v for k, v in e.items() if k not in numbering} for e in squat_events]
    assert state["activities"]["squat"]["last_rep"]["rep"] == 2


def test_replay_scores_the_counting_against_annotated_repetitions(
    fitness_model: PoseBundle, squats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reps = tmp_path / "reps.csv"
    # three squats by eye; the third ends with the clip, so a kiosk can only count two
    reps.write_text("video,start_frame,end_frame,activity\nsquats.mp4,11,21,squat\n")
    with reps.open("a") as handle:
        handle.write("squats.mp4,35,45,squat\nsquats,57,65,squat\n")
    capsys.readouterr()
    replay_events(fitness_model, squats, tmp_path / "out.jsonl", "--reps", str(reps))
    err = capsys.readouterr().err
    assert "counting squats.mp4 squat: 3 annotated, 2 counted (error -1)" in err
    assert "counting squats.mp4 pushup" not in err  # neither annotated nor counted
    summary = next(line for line in err.splitlines() if line.startswith("counting: "))
    assert "MAE 0.333, off-by-one accuracy 1.000 over 1 counts, timing error mean " in summary
    assert float(summary.split("timing error mean ")[1].split(" s")[0]) < 1.0 and "over 2 matched" in summary


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("video,start,end,activity\n", "line 1: expected the header video,start_frame,end_frame,activity"),
        ("video,start_frame,end_frame,activity\nsquats.mp4,20,10,squat\n", "line 2: frames must be whole"),
        ("video,start_frame,end_frame,activity\nsquats.mp4,1,2\n", "line 2: expected 4 columns, got 3"),
    ],
)
def test_bad_repetition_annotations_are_one_line_exit_2(
    text: str,
    message: str,
    fitness_model: PoseBundle,
    squats: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reps = tmp_path / "reps.csv"
    reps.write_text(text)
    out = tmp_path / "out.jsonl"
    argv = [
        "replay",
        str(squats),
        "--bundle",
        str(fitness_model.bundle),
        "--trusted-key",
        str(fitness_model.public_key),
    ]
    capsys.readouterr()
    assert device([*argv, "--out", str(out), "--reps", str(reps), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and str(reps) in err, err
    assert not out.exists()
