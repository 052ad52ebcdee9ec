"""``python -m device replay``: the kiosk's exact decisions on video files, reproducibly.

Real MediaPipe on the sample videos, real signed bundles made by the trainer, the command run
in-process through its entry point, as a user types it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from broker import Mosquitto, Subscriber
from conftest import REPO, PoseBundle, eventually

from device.__main__ import main as device
from device.config import Config, parse_config
from device.daemon import Daemon

DEVICE = "kiosk-replay"


def replay(*argv: str | Path) -> int:
    return device(["replay", *map(str, argv), "--no-progress"])


def run_replay(model: PoseBundle, video: Path, out: Path, *extra: str | Path) -> list[dict]:
    """Replay ``video`` into ``out`` and return its lines (failing the test on a non-zero exit)."""
    assert (
        replay(video, "--bundle", model.bundle, "--trusted-key", model.public_key, "--out", out, *extra) == 0
    )
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def squats_lines(
    pose_model: PoseBundle, squats: Path, tmp_path_factory: pytest.TempPathFactory
) -> list[dict]:
    return run_replay(pose_model, squats, tmp_path_factory.mktemp("replay") / "squats.jsonl")


def by_end(lines: list[dict]) -> dict[float, str]:
    return {line["payload"]["window"]["end_ts_ms"]: line["payload"]["label"] for line in lines}


def agreement(reference: dict[float, str], other: dict[float, str]) -> tuple[float, int]:
    """Share of ``other``'s results whose timestamp ``reference`` also has and that agree there."""
    matched = [t for t in other if t in reference]
    return sum(reference[t] == other[t] for t in matched) / len(matched), len(matched)


def test_replay_writes_what_the_kiosk_publishes_the_same_on_every_run(
    pose_model: PoseBundle, squats: Path, squats_lines: list[dict], tmp_path: Path
) -> None:
    again = tmp_path / "again.jsonl"
    run_replay(pose_model, squats, again)
    assert again.read_text() == "".join(json.dumps(line, sort_keys=True) + "\n" for line in squats_lines)
    # 65 frames at 5 frames/s, a person in each; the per-frame model decides on every one
    assert len(squats_lines) == 65
    assert {line["topic"] for line in squats_lines} == {"classification"}
    assert {line["source"] for line in squats_lines} == {"squats.mp4"}
    payloads = [line["payload"] for line in squats_lines]
    assert [p["seq"] for p in payloads] == list(range(1, 66))
    assert [p["window"]["last_frame"] for p in payloads] == list(range(1, 66))
    assert [p["ts"] for p in payloads] == [round(n * 0.2, 3) for n in range(65)]  # source time
    assert {p["latency_ms"] for p in payloads} == {0.0}
    for p in payloads:  # the label is the most probable class of the published probabilities
        best = max(p["probabilities"], key=p["probabilities"].get)
        assert p["label"] in (best, "unknown") and p["confidence"] == p["probabilities"][best]
    labels = [p["label"] for p in payloads]
    # three squats with standing between them; the poses in between are none of the 20 the model
    # knows, and its held-out threshold makes them unknown rather than a wrong pose
    assert labels.count("Squat") >= 15 and labels.count("Stand") >= 10 and "unknown" in labels


def test_a_slower_kiosk_and_a_faster_video_give_the_same_labels(
    pose_model: PoseBundle, squats: Path, squats_lines: list[dict], tmp_path: Path
) -> None:
    native = by_end(squats_lines)
    at_native = by_end(run_replay(pose_model, squats, tmp_path / "5.jsonl", "--fps", "5"))
    assert at_native == native
    half = by_end(run_replay(pose_model, squats, tmp_path / "2.5.jsonl", "--fps", "2.5"))
    share, matched = agreement(native, half)
    assert matched == 33 and share >= 0.95, (share, matched)

    # the same clip at 15 frames/s, each frame shown three times
    fast = tmp_path / "squats-15fps.mp4"
    source = cv2.VideoCapture(str(squats))
    size = (int(source.get(cv2.CAP_PROP_FRAME_WIDTH)), int(source.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    writer = cv2.VideoWriter(str(fast), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, size)
    while (frame := source.read())[0]:
        for _ in range(3):
            writer.write(frame[1])
    writer.release()
    source.release()
    tripled = by_end(run_replay(pose_model, fast, tmp_path / "15.jsonl"))
    assert len(tripled) == 195
    share, matched = agreement(native, tripled)  # the original frames' timestamps: every third
    assert matched == 65 and share >= 0.95, (share, matched)


def _daemon_decisions(
    model: PoseBundle, video: Path, pace: str, work: Path, run_daemon: Callable[[Config], Daemon]
) -> tuple[list[dict], int]:
    """What a daemon playing ``video`` once published, and how many frames its capture dropped."""
    topic = f"movement/{DEVICE}/classification"
    with Mosquitto() as broker, Subscriber(broker.port, topic) as sub:
        config = {
            "device": {"id": DEVICE, "state_dir": str(work / "state")},
            "source": {"kind": "file", "paths": [str(video)], "pace": pace, "loop": False},
            "model": {"bundle": str(model.bundle), "trusted_keys": [str(model.public_key)]},
            "mqtt": {"port": broker.port, "stats_interval_s": 60},
            "http": {"enabled": False},
        }
        daemon = run_daemon(parse_config(config))
        assert eventually(daemon.capture.ended.is_set, 60, "the video to end")

        def counters() -> dict[str, int]:
            return daemon.status.snapshot()["counters"]

        def all_processed() -> bool:
            seen = counters()
            return seen["frames_processed"] + seen.get("frames_dropped", 0) == seen["frames_captured"]

        eventually(all_processed, 30, "the pipeline to take every frame it did not drop")
        sub.wait_for(topic, counters()["classifications"], timeout=30)
        return sub.payloads(topic), counters().get("frames_dropped", 0)


DECIDED = ("label", "confidence", "probabilities", "window", "model")
"""What a result decides; ``ts`` and ``latency_ms`` describe when it was made, ``seq`` its order."""


def test_the_daemon_fast_publishes_exactly_what_replay_wrote(
    pose_model: PoseBundle,
    squats: Path,
    squats_lines: list[dict],
    tmp_path: Path,
    run_daemon: Callable[[Config], Daemon],
) -> None:
    published, dropped = _daemon_decisions(pose_model, squats, "fast", tmp_path, run_daemon)
    assert dropped == 0  # pace fast: the reader is the pace, nothing is dropped
    expected = [{k: line["payload"][k] for k in (*DECIDED, "seq")} for line in squats_lines]
    assert [{k: p[k] for k in (*DECIDED, "seq")} for p in published] == expected


def test_the_daemon_in_real_time_publishes_replays_labels(
    pose_model: PoseBundle,
    squats: Path,
    squats_lines: list[dict],
    tmp_path: Path,
    run_daemon: Callable[[Config], Daemon],
) -> None:
    """In real time a busy machine may drop frames, as a camera's kiosk would; what it did not
    drop gets replay's labels (and when it dropped nothing, replay's exact decisions)."""
    published, dropped = _daemon_decisions(pose_model, squats, "realtime", tmp_path, run_daemon)
    assert len(published) == 65 - dropped
    share, matched = agreement(by_end(squats_lines), by_end([{"payload": p} for p in published]))
    assert matched == len(published) and share >= 0.95, (share, matched, dropped)
    if dropped == 0:
        expected = [{k: line["payload"][k] for k in DECIDED} for line in squats_lines]
        assert [{k: p[k] for k in DECIDED} for p in published] == expected


def test_window_models_are_replayed_and_scored_against_annotations(
    step_model: PoseBundle, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = data_dir / "videos" / "example_video.webm"
    labels = REPO / "examples" / "example_video.labels.toml"
    capsys.readouterr()
    lines = run_replay(
        step_model,
        video,
        tmp_path / "steps.jsonl",
        "--annotations",
        data_dir / "annotations",
        "--labels",
        labels,
    )
    windows = [line["payload"]["window"] for line in lines]
    assert len(lines) > 100
    # 10 frames at 30 frames/s: every window spans 300 ms, one every 2 frames (66.7 ms)
    # (the dataset measured the rate from WebM's whole-millisecond stamps: 30.00 frames/s)
    durations = [w["end_ts_ms"] - w["start_ts_ms"] for w in windows]
    assert durations == pytest.approx([300.0] * len(windows), rel=1e-3)
    steps = np.diff([w["end_ts_ms"] for w in windows])
    assert np.median(steps) == pytest.approx(2000 / 30, rel=1e-3) and (steps > 2000 / 30 * 0.999).all()
    summary = capsys.readouterr().err
    assert "example_video.webm: 382 frames" in summary
    # the frames the annotation file gives a step label, counted here from the JSON itself
    annotations = json.loads((data_dir / "annotations" / "example_video.json").read_text())
    stepped = {
        frame
        for a in annotations["annotations"]
        if a["label"] in ("Left Step", "Right Step")
        for frame in range(a["metadata"]["system"]["frame"], a["metadata"]["system"]["endFrame"] + 1)
    }
    score = next(line for line in summary.splitlines() if "score:" in line)
    assert f"{len(stepped)} annotated frames, accuracy " in score and "macro F1 " in score
    accuracy = float(score.split("accuracy ")[1].split(",")[0])
    assert 0.5 < accuracy <= 1.0  # the model saw these frames in training: it should mostly agree


def test_the_video_out_shows_every_frame_replayed(
    pose_model: PoseBundle, squats: Path, tmp_path: Path
) -> None:
    rendered = tmp_path / "squats.replay.mp4"
    run_replay(pose_model, squats, tmp_path / "out.jsonl", "--fps", "2.5", "--video-out", rendered)
    capture = cv2.VideoCapture(str(rendered))
    frames = []
    while (frame := capture.read())[0]:
        frames.append(frame[1])
    capture.release()
    assert len(frames) == 33 and frames[0].shape == (1280, 720, 3)
    assert not list(tmp_path.glob(".*partial*"))


def _bad_inputs(model: PoseBundle, data_dir: Path, tmp: Path) -> dict[str, tuple[list, str]]:
    squats = data_dir / "videos" / "squats.mp4"
    text = tmp / "notes.mp4"
    text.write_text("not a video")
    other = tmp / "other_key"
    from trainer.__main__ import main as trainer

    assert trainer(["keygen", "--out", str(other)]) == 0
    good = ["--bundle", model.bundle, "--trusted-key", model.public_key]
    labels = REPO / "examples" / "example_video.labels.toml"
    annotations = ["--annotations", data_dir / "annotations", "--labels", labels]
    return {
        "missing video": ([tmp / "nope.mp4", *good], "nope.mp4: no such file"),
        "not a video": ([text, *good], "notes.mp4: cannot open as a video"),
        "untrusted bundle": (
            [squats, "--bundle", model.bundle, "--trusted-key", other / "signing.pub"],
            "verify: signature:",
        ),
        "missing bundle": (
            [squats, "--bundle", tmp / "none.zip", "--trusted-key", model.public_key],
            "no such file",
        ),
        "fps 0": ([squats, *good, "--fps", "0"], "--fps 0: must be a frame rate above 0"),
        "annotations of another video": (
            [squats, *good, *annotations],
            "no keypoint file for video 'example_video",
        ),
        "annotations without labels": (
            [squats, *good, "--annotations", data_dir / "annotations"],
            "go together",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing video",
        "not a video",
        "untrusted bundle",
        "missing bundle",
        "fps 0",
        "annotations of another video",
        "annotations without labels",
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    case: str, pose_model: PoseBundle, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, message = _bad_inputs(pose_model, data_dir, tmp_path)[case]
    capsys.readouterr()
    out = tmp_path / "out.jsonl"
    assert replay(*argv, "--out", out) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("device replay: error: ") and message in captured.err, captured.err
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))
