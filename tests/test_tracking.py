"""Several people at once: a track id, a window and decisions per person (``everyone``).

Synthetic people made of the squats reference landmarks test the tracker's rules exactly; real
MediaPipe on the lab clip and on a composite of two sample clips tests it where it matters.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import PoseBundle

from benchmarks.samples import side_by_side
from device.__main__ import main as device
from device.classifier import Classifier
from device.keypoints import X
from device.pose import PoseOptions
from device.sources import VideoFileSource
from device.tracking import PersonTracker

SHOULDERS = [11, 12]  # steadier than the hips on the lab clip, where MediaPipe misplaces the man's hips twice


def shifted(points: np.ndarray, dx: float) -> np.ndarray:
    moved = points.copy()
    moved[:, X] += dx
    return moved


def test_two_people_keep_their_ids_through_a_short_occlusion_and_a_long_one_gets_a_new_id(
    squats_reference: np.ndarray,
) -> None:
    tracker = PersonTracker(max_missing_s=0.5)
    left, right = squats_reference[0], shifted(squats_reference[0], 1500)
    ids = []
    for n in range(30):  # 1 s at 30 frames/s, both walking right
        people = np.stack([shifted(left, 3 * n), shifted(right, -3 * n)])
        ids.append([pid for pid, _ in tracker.update(n * 33.3, people).people])
    assert ids == [[1, 2]] * 30
    for n in range(30, 40):  # the right one hidden for 0.33 s: kept
        tracker.update(n * 33.3, shifted(left, 3 * n)[None])
    back = tracker.update(40 * 33.3, np.stack([shifted(left, 120), shifted(right, -120)]))
    assert [pid for pid, _ in back.people] == [1, 2]
    for n in range(41, 70):  # hidden for a second: that track ends, and the id is not reused
        ended = tracker.update(n * 33.3, shifted(left, 3 * n)[None]).ended
        if ended:
            assert ended == (2,)
    again = tracker.update(70 * 33.3, np.stack([shifted(left, 210), shifted(right, -210)]))
    assert [pid for pid, _ in again.people] == [1, 3]


def test_a_thousand_people_passing_one_at_a_time_leave_the_tables_flat(
    pose_model: PoseBundle, squats_reference: np.ndarray
) -> None:
    with Classifier.open(pose_model.bundle, [pose_model.public_key], everyone=True) as api:
        t, largest = 0.0, 0
        for person in range(1000):
            for _ in range(3):  # seen for three frames
                step = api.feed_poses(squats_reference[person % 65][None], t)
                t += 100.0
            t += 1000.0  # then gone for a second: the track ends before the next one comes
            largest = max(largest, len(api._people), len(api._tracker.active))
        assert [pid for pid, _ in step.people] == [1000]
    assert largest <= 2


def _people_of(model: PoseBundle, video: Path, people: int) -> dict[int, list[float]]:
    """Track id -> shoulder x of each frame it was seen in, through the API with ``everyone``."""
    seen: dict[int, list[float]] = defaultdict(list)
    pose = PoseOptions(num_poses=people)
    api = Classifier.open(model.bundle, [model.public_key], pose=pose, everyone=True)
    with api, VideoFileSource(video) as source:
        for frame in source:
            for pid, points in api.process(frame).people:
                seen[pid].append(float(np.nanmean(points[SHOULDERS, X])))
    return seen


def test_the_man_and_the_woman_of_the_lab_clip_keep_one_id_each(
    pose_model: PoseBundle, data_dir: Path
) -> None:
    seen = _people_of(pose_model, data_dir / "videos" / "lab_three_people.mp4", 3)
    frames = {pid: len(xs) for pid, xs in seen.items()}
    print(f"\nTRACKING lab_three_people.mp4: ids={len(seen)} frames per id={frames}")
    assert len(seen) == 2  # (MediaPipe does not find the bystander at the back)
    # no switch: each id stays on its person's side of the platform (the man left, the woman right)
    sides = {pid: (min(xs), max(xs)) for pid, xs in seen.items()}
    (man, woman) = sorted(sides.values())
    assert man[1] < woman[0], sides  # the ranges never overlap: nobody took the other's id


def test_a_squatter_beside_a_dancer_each_get_their_own_id_and_count(
    fitness_model: PoseBundle, data_dir: Path, squats: Path, tmp_path: Path
) -> None:
    video = side_by_side(squats, data_dir / "videos" / "dance.mp4", tmp_path / "side-by-side.mp4")
    out = tmp_path / "both.jsonl"
    argv = [
        "replay",
        str(video),
        "--bundle",
        str(fitness_model.bundle),
        "--trusted-key",
        str(fitness_model.public_key),
    ]
    assert device([*argv, "--people", "2", "--out", str(out), "--no-progress"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    results = Counter(x["payload"]["person"] for x in lines if x["topic"] == "classification")
    assert set(results) == {1, 2} and min(results.values()) >= 50, results  # two ids over the clip
    events = [x["payload"] for x in lines if x["topic"] == "events"]
    reps = Counter((e["person"], e["activity"]) for e in events if e["type"] == "rep")
    squatter = next(e["person"] for e in events if e["activity"] == "squat")
    assert reps == {(squatter, "squat"): 2}, reps  # as alone: two squats, none for the dancer
    end = next(e for e in events if e["type"] == "end" and e["person"] == squatter)
    assert end["incomplete"] is True


def test_feed_poses_needs_everyone(pose_model: PoseBundle, squats_reference: np.ndarray) -> None:
    with (
        Classifier.open(pose_model.bundle, [pose_model.public_key]) as api,
        pytest.raises(ValueError, match="everyone"),
    ):
        api.feed_poses(squats_reference[:1], 0.0)


def two_squats(activity: dict) -> bool:
    return any(p["activities"].get("squat", {}).get("reps") == 2 for p in activity.get("people", []))


def test_the_daemon_with_everyone_publishes_each_persons_results_and_the_people_in_view(
    fitness_model: PoseBundle, data_dir: Path, squats: Path, tmp_path: Path, run_daemon
) -> None:
    from broker import Mosquitto, Subscriber
    from conftest import eventually

    from device.config import parse_config

    video = side_by_side(squats, data_dir / "videos" / "dance.mp4", tmp_path / "side-by-side.mp4")
    base = "movement/kiosk-people"
    topics = [f"{base}/classification", f"{base}/state", f"{base}/activity"]
    with Mosquitto() as broker, Subscriber(broker.port, topics) as sub:
        config = {
            "device": {"id": "kiosk-people", "state_dir": str(tmp_path / "state")},
            "source": {"kind": "file", "paths": [str(video)], "pace": "fast", "loop": False},
            "pose": {"num_poses": 2, "classify": "everyone"},
            "model": {"bundle": str(fitness_model.bundle), "trusted_keys": [str(fitness_model.public_key)]},
            "mqtt": {"port": broker.port, "stats_interval_s": 60},
            "http": {"port": 0},
            "stations": [{"name": "left mat", "polygon": [[0, 0], [405, 0], [405, 720], [0, 720]]},
                         {"name": "right mat", "polygon": [[405, 0], [1125, 0], [1125, 720], [405, 720]]}],
        }
        daemon = run_daemon(parse_config(config))
        assert eventually(daemon.capture.ended.is_set, 60, "the video to end")
        sub.wait_until(f"{base}/state", lambda m: len(m.json().get("people", [])) == 2, timeout=30)
        eventually(
            lambda: {p["person"] for p in sub.payloads(f"{base}/classification")} == {1, 2}, 30, "both"
        )
        # the retained activity has a counter per person: the squatter's two squats among them
        activity = sub.wait_until(f"{base}/activity", lambda m: two_squats(m.json()), timeout=30).json()
        web = f"http://127.0.0.1:{daemon.web.port}"
        pose = json.loads(urllib.request.urlopen(f"{web}/api/pose", timeout=10).read())
        frame = urllib.request.urlopen(f"{web}/frame.jpg", timeout=10).read()
    seqs = [p["seq"] for p in sub.payloads(f"{base}/classification")]
    assert seqs == sorted(seqs)
    stations = {p["person"]: p["station"] for p in sub.payloads(f"{base}/classification")}
    assert sorted(stations.values()) == ["left mat", "right mat"], stations
    squatter = next(p for p, s in stations.items() if s == "left mat")
    counters = {p["person"]: p["activities"].get("squat", {}).get("reps") for p in activity["people"]}
    assert counters[squatter] == 2 and set(counters) == {1, 2}, activity
    # /api/pose: both people with their ids and labels, the stations, the bones to draw
    width = int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_WIDTH))
    assert (pose["width"], pose["height"], len(pose["bones"])) == (width, 720, 35)
    assert sorted(p["person"] for p in pose["people"]) == [1, 2]
    assert all(p["label"] for p in pose["people"]) and all(len(p["points"]) == 33 for p in pose["people"])
    assert [s["name"] for s in pose["stations"]] == ["left mat", "right mat"]
    # the live picture: the stations' outlines in green along their shared edge (x = 405 px)
    image = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR)
    scale = image.shape[1] / width
    edge = image[200:600, round(405 * scale) - 1 : round(405 * scale) + 2].reshape(-1, 3).astype(int)
    green = (edge[:, 1] > 150) & (edge[:, 0] < 140) & (edge[:, 2] < 160)
    assert green.mean() > 0.5, edge[:5]


def test_a_station_around_one_half_classifies_only_the_person_inside(
    fitness_model: PoseBundle, data_dir: Path, squats: Path, tmp_path: Path
) -> None:
    from device.prediction import Prediction
    from device.stations import Station

    video = side_by_side(squats, data_dir / "videos" / "dance.mp4", tmp_path / "side-by-side.mp4")
    mat = Station("left mat", ((0, 0), (405, 0), (405, 720), (0, 720)))  # squats.mp4's half
    pose = PoseOptions(num_poses=2)
    with Classifier.open(fitness_model.bundle, [fitness_model.public_key], pose=pose, stations=(mat,)) as api:
        outputs = list(api.classify_video(video))
    results = [o for o in outputs if isinstance(o, Prediction)]
    assert len(results) >= 50 and {r.station for r in results} == {"left mat"}
    assert len({r.person for r in results}) == 1  # the dancer on the right is tracked, never classified
    reps = [o.payload() for o in outputs if not isinstance(o, Prediction) and o.type == "rep"]
    assert len(reps) == 2 and {r["station"] for r in reps} == {"left mat"}


@pytest.mark.parametrize(
    ("stations", "message"),
    [
        (
            [{"name": "a", "polygon": [[0, 0], [1, 0]]}],
            "stations.0.polygon: List should have at least 3 items",
        ),
        (
            [{"name": "a", "polygon": [[0, 0], [9, 0], [9, 9]]}] * 2,
            "stations: station name 'a' is used twice",
        ),
        (
            [{"name": "a", "polygon": [[-5, 0], [9, 0], [9, 9]]}],
            "stations.0.polygon: corners are image pixels",
        ),
    ],
)
def test_bad_stations_are_one_line_naming_the_key(stations: list, message: str) -> None:
    from device.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as caught:
        parse_config({"source": {"kind": "camera"}, "stations": stations}, env={})
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("pose", "key"), [({"num_poses": 0}, "pose.num_poses"), ({"classify": "all"}, "pose.classify")]
)
def test_bad_people_settings_name_the_key(pose: dict, key: str) -> None:
    from device.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=key):
        parse_config({"source": {"kind": "camera"}, "pose": pose}, env={})
