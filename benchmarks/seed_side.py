"""The seed's side of ``python -m benchmarks seed``: run in the seed's own virtualenv, never imported here.

``make bench-seed`` installs ``stream-pose-ml==0.3.1`` (the seed, with its own pins of numpy,
pandas, scikit-learn ...) into ``.cache/seed-venv``; :mod:`benchmarks.seed_bench` runs this file
with that interpreter as ``python seed_side.py REQUEST.json RESULT.json``. It imports only the
standard library and the seed's package, calls the seed's public classes exactly as the seed's
own code paths do, and writes its timings (and a few values for the comparability check) as JSON.

Modes (``"mode"`` in the request):

``window``
    The seed's real-time path, as ``StreamPoseClient.run_keypoint_pipeline`` runs it for each new
    frame once its deque holds a full window: the new frame's landmarks through
    ``MediaPipeClient.serialize_pose_landmarks``, the window through ``BlazePoseSequence`` (with
    geometry) and ``BlazePoseSequenceSerializer``, then a ``SequenceTransformer`` to the model's
    input row; the model's ``predict`` is left out. Also the seed's per-frame geometry (the same
    sequence classes over a whole video, as ``VideoDataService.process_video`` runs them after
    MediaPipe), and the 2D angles of the first window for the check against ours.
``dataset``
    Writes the seed's sequence files (``<video>.webm_sequence.json``, as ``VideoDataService`` writes
    them) from the frame files, then times ``build_dataset_from_data_files``, ``format_dataset`` per
    strategy and ``write_dataset_to_csv``.

Keypoints come from our ``.frames.jsonl`` files (pixels) and are handed to the seed as MediaPipe
gives them to it: x / width, y / height, z / width.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import resource
import sys
import time
from pathlib import Path

from stream_pose_ml.blaze_pose.blaze_pose_sequence import BlazePoseSequence
from stream_pose_ml.blaze_pose.mediapipe_client import MediaPipeClient
from stream_pose_ml.jobs.build_and_format_dataset_job import BuildAndFormatDatasetJob
from stream_pose_ml.serializers.blaze_pose_sequence_serializer import BlazePoseSequenceSerializer
from stream_pose_ml.transformers.sequence_transformer import (
    MLFlowTransformer,
    TenFrameFlatColumnAngleTransformer,
)

CONFIG = """\
annotation_schema:
  annotations_key: "annotations"
  annotation_fields:
    label: label
    start_frame: metadata.system.frame
    end_frame: metadata.system.endFrame
  label_class_mapping:
{mapping}
"""
"""The seed's ``config.yml`` (its config.example.yml's schema); it finds it by walking up from the cwd."""

CLIENT = MediaPipeClient(dummy_client=True)


def records(path: Path) -> list[dict]:
    """The frame objects of a ``.frames.jsonl`` file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def landmarks(record: dict) -> list[dict]:
    """One frame's landmarks as MediaPipe hands them to the seed: image-relative x, y and z."""
    dims = record["image_dimensions"]
    width, height = dims["width"], dims["height"]
    positions = record.get("joint_positions") or {}
    return [{"x": p["x"] / width, "y": p["y"] / height, "z": p["z"] / width} for p in positions.values()]


def seed_frame(record: dict) -> dict:
    """A frame as the seed's ``MediaPipeClient.process_video`` records it."""
    points = landmarks(record)
    return {
        "sequence_id": record.get("sequence_id"),
        "sequence_source": "mediapipe",
        "frame_number": record["frame_number"],
        "image_dimensions": record["image_dimensions"],
        "joint_positions": CLIENT.serialize_pose_landmarks(points) if len(points) == 33 else {},
    }


def sequence_data(name: str, frames: list[dict], key_off_frame_number: bool) -> dict:
    """What ``VideoDataService.process_video`` makes of a video's frames: geometry, then serialized."""
    sequence = BlazePoseSequence(name=name, sequence=frames, include_geometry=True)
    return BlazePoseSequenceSerializer().serialize(
        sequence.generate_blaze_pose_frames_from_sequence(), key_off_frame_number=key_off_frame_number
    )


def model_columns(serialized: dict, size: int) -> dict[str, list[str]]:
    """The columns a model trained on the seed's flattened rows would ask each transformer for."""
    first = next(f for f in serialized["frames"] if f["angles"])
    frames = range(1, size + 1)
    joints = first["joint_positions"]
    return {
        "angles": [f"angles.frame-{i}-{a}.angle_2d_degrees" for i in frames for a in first["angles"]]
        + [f"distances.frame-{i}-{d}.distance_2d_normalized" for i in frames for d in first["distances"]],
        "joints": [f"joints.frame-{i}-{j}.{c}" for i in frames for j in joints for c in "xy"],
    }


def window_mode(request: dict) -> dict:
    """The seed's per-window path and per-frame geometry on one frame file."""
    path = Path(request["keypoints_file"])
    size, windows = request["window"], request["windows"]
    found = records(path)
    frames = [seed_frame(r) for r in found]
    started = time.perf_counter()
    sequence_data(path.name, frames, key_off_frame_number=True)
    geometry_s = time.perf_counter() - started

    first = sequence_data("window", frames[:size], key_off_frame_number=False)
    columns = model_columns(first, size)
    transformers = {"angles": TenFrameFlatColumnAngleTransformer(), "joints": MLFlowTransformer()}
    per_window: dict[str, float] = {}
    width: dict[str, int] = {}
    for kind, transformer in transformers.items():
        window: collections.deque = collections.deque(frames[: size - 1], maxlen=size)
        started = time.perf_counter()
        for n in range(windows):
            # one new frame arrives, as StreamPoseClient.update_frame_data_from_js_client_keypoints has it
            frame = dict.fromkeys(("sequence_id", "frame_number", "image_dimensions"), None)
            frame["sequence_source"] = "web"
            frame["joint_positions"] = CLIENT.serialize_pose_landmarks(landmarks(found[size - 1 + n]))
            window.append(frame)
            # ... and run_keypoint_pipeline turns the full window into the model's input row
            data = sequence_data(f"sequence-{time.time_ns()}", list(window), key_off_frame_number=False)
            row, _ = transformer.transform(data=data, columns=columns[kind])
        per_window[kind] = (time.perf_counter() - started) / windows
        width[kind] = int(row.shape[1]) if hasattr(row, "shape") else len(row)
    angles = {
        name: [f["angles"][name]["angle_2d_degrees"] if f["angles"] else None for f in first["frames"]]
        for name in first_angles(first)
    }
    return {
        "frames": len(frames),
        "geometry_s": geometry_s,
        "window_s": per_window,
        "window_columns": width,
        "first_window_angles": angles,
    }


def first_angles(serialized: dict) -> list[str]:
    """The seed's angle names (a frame without a person has none)."""
    return list(next(f for f in serialized["frames"] if f["angles"])["angles"])


def dataset_mode(request: dict) -> dict:
    """The seed's dataset build, format and CSV for every strategy asked for, on one project."""
    keypoints, annotations, work = (Path(request[k]) for k in ("keypoints", "annotations", "work"))
    mapping = "\n".join(f"    {label}: {column}" for label, column in request["mapping"].items())
    (work / "config.yml").write_text(CONFIG.format(mapping=mapping), encoding="utf-8")
    os.chdir(work)  # where the seed looks for config.yml
    sequences = work / "sequences"
    sequences.mkdir()
    texts: dict[tuple[int, int], tuple[str, str]] = {}  # one geometry pass per distinct file (hard links)
    for path in sorted(keypoints.glob("*.frames.jsonl")):
        name = path.name.removesuffix(".frames.jsonl") + ".webm"
        key = (path.stat().st_dev, path.stat().st_ino)
        if key not in texts:
            data = sequence_data(name, [seed_frame(r) for r in records(path)], key_off_frame_number=True)
            texts[key] = (name, json.dumps(data, indent=4))  # as the seed's write_to_json_file writes it
        first_name, text = texts[key]
        (sequences / f"{name}_sequence.json").write_text(
            text.replace(f'"name": "{first_name}"', f'"name": "{name}"', 1), encoding="utf-8"
        )
    quiet = contextlib.redirect_stdout(io.StringIO())  # the seed prints as it writes
    started = time.perf_counter()
    dataset = BuildAndFormatDatasetJob.build_dataset_from_data_files(str(annotations), str(sequences))
    build_s = time.perf_counter() - started
    format_s: dict[str, float] = {}
    csv_s: dict[str, float] = {}
    rows: dict[str, int] = {}
    for name, options in request["strategies"].items():
        started = time.perf_counter()
        formatted = BuildAndFormatDatasetJob.format_dataset(dataset, pool_frame_data_by_clip=False, **options)
        format_s[name] = time.perf_counter() - started
        rows[name] = len(formatted)
        started = time.perf_counter()
        with quiet:
            BuildAndFormatDatasetJob.write_dataset_to_csv(str(work), formatted, filename=f"out-{len(rows)}")
        csv_s[name] = time.perf_counter() - started
        del formatted
    return {
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "videos": len(dataset.all_frames),
        "frames": sum(len(video) for video in dataset.all_frames),
        "build_s": build_s,
        "format_s": format_s,
        "csv_s": csv_s,
        "rows": rows,
    }


def main() -> int:
    request = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    result = window_mode(request) if request["mode"] == "window" else dataset_mode(request)
    Path(sys.argv[2]).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
