"""The Python API as an integrator uses it: ``Classifier.open(...)``, ``feed``, ``feed_keypoints``.

One decision pipeline: frames fed by hand give what ``replay`` writes; keypoints fed by hand give
what frames give; ``trainer extract``, the API and therefore the daemon see the same keypoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import PoseBundle

from device.__main__ import main as device
from device.classifier import Classifier
from device.keypoints import CHANNELS, VISIBILITY, X, Y, Z
from device.model.store import ModelRejected
from device.pose import PoseOptions
from device.prediction import Prediction
from trainer.frame_files import read_frames


@pytest.fixture(scope="module")
def video(data_dir: Path) -> Path:
    return data_dir / "videos" / "example_video.webm"


def frames_of(path: Path):
    """Decode a video as an integrator's own loop would: OpenCV, the container's timestamps."""
    capture = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                return
            yield image, capture.get(cv2.CAP_PROP_POS_MSEC)
    finally:
        capture.release()


def decided(prediction: Prediction) -> dict:
    payload = prediction.payload()
    return {k: payload[k] for k in ("label", "confidence", "probabilities", "window", "ts")}


@pytest.fixture(scope="module")
def fed(step_model: PoseBundle, video: Path, task_path: Path) -> tuple[list[Prediction], list]:
    """Every frame fed to the API by hand; its results and the person it followed in each frame."""
    people, results = [], []
    with Classifier.open(step_model.bundle, [step_model.public_key], pose=PoseOptions(task_path)) as api:
        for image, stamp in frames_of(video):
            results += api.feed(image, stamp)
            people.append(api.last_person)
    return results, people


def test_frames_fed_by_hand_give_what_replay_writes(
    fed: tuple[list[Prediction], list], step_model: PoseBundle, video: Path, tmp_path: Path
) -> None:
    out = tmp_path / "replay.jsonl"
    argv = [
        "replay",
        str(video),
        "--bundle",
        str(step_model.bundle),
        "--trusted-key",
        str(step_model.public_key),
    ]
    assert device([*argv, "--out", str(out), "--no-progress"]) == 0
    replayed = [json.loads(line)["payload"] for line in out.read_text().splitlines()]
    keys = ("label", "confidence", "probabilities", "window", "ts")
    assert len(fed[0]) > 100
    assert [decided(p) for p in fed[0]] == [{k: p[k] for k in keys} for p in replayed]


def test_extract_and_the_api_see_the_same_keypoints(
    fed: tuple[list[Prediction], list], example_keypoints: Path
) -> None:
    extracted = read_frames(example_keypoints / "example_video.frames.jsonl")
    people = fed[1]
    assert len(people) == len(extracted) == 382
    seen = np.array([p is not None for p in people])
    assert (seen == extracted.has_person).all()
    ours = np.stack([p for p in people if p is not None])[:, :, [X, Y, Z, VISIBILITY]]
    theirs = extracted.points[extracted.has_person][:, :, [X, Y, Z, VISIBILITY]]
    np.testing.assert_array_equal(ours, theirs)  # bit for bit: same frames, same timestamps


def test_keypoints_fed_by_hand_give_what_frames_give(
    fed: tuple[list[Prediction], list], step_model: PoseBundle, example_keypoints: Path
) -> None:
    extracted = read_frames(example_keypoints / "example_video.frames.jsonl")
    results = []
    with Classifier.open(step_model.bundle, [step_model.public_key]) as api:
        for number, stamp, points, present in zip(
            extracted.frame_numbers,
            extracted.timestamps_ms,
            extracted.points,
            extracted.has_person,
            strict=True,
        ):
            results += api.feed_keypoints(points if present else None, float(stamp), int(number))
    assert [decided(p) for p in results] == [decided(p) for p in fed[0]]


def test_a_window_model_fed_a_third_of_the_frames_sees_windows_of_the_same_duration(
    step_model: PoseBundle, example_keypoints: Path
) -> None:
    """The model learned 10-frame windows at 30 frames/s; a kiosk managing 10 frames/s."""
    extracted = read_frames(example_keypoints / "example_video.frames.jsonl")
    every_third = range(0, len(extracted), 3)
    with Classifier.open(step_model.bundle, [step_model.public_key]) as api:
        results = [
            result
            for i in every_third
            for result in api.feed_keypoints(
                extracted.points[i] if extracted.has_person[i] else None,
                float(extracted.timestamps_ms[i]),
                int(extracted.frame_numbers[i]),
            )
        ]
    assert len(results) > 50
    durations = [p.end_ts_ms - p.start_ts_ms for p in results]
    assert durations == pytest.approx([300.0] * len(results), rel=1e-3)
    # a result each time a 10 frames/s kiosk reaches the next 2/30 s grid point: every frame it has
    assert np.median(np.diff([p.end_ts_ms for p in results])) == pytest.approx(100.0, rel=0.05)


def test_each_clip_starts_afresh(step_model: PoseBundle, example_keypoints: Path) -> None:
    """The same clip twice in a row (timestamps start over): the same results both times."""
    extracted = read_frames(example_keypoints / "example_video.frames.jsonl")
    runs = []
    with Classifier.open(step_model.bundle, [step_model.public_key]) as api:
        for _ in range(2):
            results = []
            for i in range(len(extracted)):
                points = extracted.points[i] if extracted.has_person[i] else None
                results += api.feed_keypoints(points, float(extracted.timestamps_ms[i]))
            runs.append([decided(p) for p in results])
    assert runs[0] == runs[1] and len(runs[0]) > 100


def test_a_bundle_that_fails_verification_raises_the_stores_named_error(
    step_model: PoseBundle, tmp_path: Path
) -> None:
    from trainer.__main__ import main as trainer

    assert trainer(["keygen", "--out", str(tmp_path / "other")]) == 0
    with pytest.raises(ModelRejected) as caught:
        Classifier.open(step_model.bundle, [tmp_path / "other" / "signing.pub"])
    assert caught.value.step == "verify" and "signature" in caught.value.message
    with pytest.raises(ModelRejected, match="no trusted key given"):
        Classifier.open(step_model.bundle, [])
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(step_model.bundle.read_bytes()[:-100])
    with pytest.raises(ModelRejected) as caught:
        Classifier.open(damaged, [step_model.public_key])
    assert caught.value.step == "verify"


def test_keypoints_of_the_wrong_shape_are_refused(step_model: PoseBundle) -> None:
    with (
        Classifier.open(step_model.bundle, [step_model.public_key]) as api,
        pytest.raises(ValueError, match="33, 5"),
    ):
        api.feed_keypoints(np.zeros((17, len(CHANNELS))), 0.0)
