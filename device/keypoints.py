"""The keypoint model: BlazePose joints, keypoint arrays and the files that hold them.

Everything downstream (features, windows, datasets, the daemon) works on one array layout,
``points`` of shape ``(frames, 33, 5)`` with the channels ``x, y, z, visibility, presence``:
x and y in pixels (y pointing down), z in the same pixel scale as x (MediaPipe documents z as
"roughly the same scale as x"), visibility and presence in [0, 1]. A frame without a person is a
row of NaN, so absence never needs a separate code path. Joints that a source does not have
(the hands and face details of OpenPose BODY-25, for instance) are NaN as well.

Frame files (``<stem>.frames.jsonl``) keep the seed's frame schema so that older tools can read
them: one JSON object per frame with ``joint_positions`` keyed by joint name; ``x_normalized``
and ``y_normalized`` are MediaPipe's own image-relative coordinates (x / width, y / height) and
``z_normalized`` MediaPipe's raw z.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

JOINTS: tuple[str, ...] = (
    "nose",
    "left_eye_inner",
    "left_eye",
    "left_eye_outer",
    "right_eye_inner",
    "right_eye",
    "right_eye_outer",
    "left_ear",
    "right_ear",
    "mouth_left",
    "mouth_right",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_pinky",
    "right_pinky",
    "left_index",
    "right_index",
    "left_thumb",
    "right_thumb",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
    "left_heel",
    "right_heel",
    "left_foot_index",
    "right_foot_index",
)
"""The 33 BlazePose landmarks in MediaPipe's order (index = MediaPipe landmark id)."""

JOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(JOINTS)}
CHANNELS: tuple[str, ...] = ("x", "y", "z", "visibility", "presence")
FRAMES_SUFFIX = ".frames.jsonl"
"""A video's keypoint file is ``<video stem>.frames.jsonl``."""
X, Y, Z, VISIBILITY, PRESENCE = range(len(CHANNELS))

BODY25_JOINTS: tuple[str, ...] = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "mid_hip",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
    "left_big_toe",
    "left_small_toe",
    "left_heel",
    "right_big_toe",
    "right_small_toe",
    "right_heel",
)
"""OpenPose BODY-25 keypoints in OpenPose's order."""

# BODY-25 joint -> BlazePose joint with the same anatomical meaning. The big toe is BlazePose's
# foot index; neck and mid_hip are midpoints; the small toes have no BlazePose counterpart.
_BODY25_FROM_BLAZEPOSE: dict[str, str] = {
    "nose": "nose",
    "right_shoulder": "right_shoulder",
    "right_elbow": "right_elbow",
    "right_wrist": "right_wrist",
    "left_shoulder": "left_shoulder",
    "left_elbow": "left_elbow",
    "left_wrist": "left_wrist",
    "right_hip": "right_hip",
    "right_knee": "right_knee",
    "right_ankle": "right_ankle",
    "left_hip": "left_hip",
    "left_knee": "left_knee",
    "left_ankle": "left_ankle",
    "right_eye": "right_eye",
    "left_eye": "left_eye",
    "right_ear": "right_ear",
    "left_ear": "left_ear",
    "left_big_toe": "left_foot_index",
    "left_heel": "left_heel",
    "right_big_toe": "right_foot_index",
    "right_heel": "right_heel",
}
_MIDPOINTS: dict[str, tuple[str, str]] = {
    "neck": ("left_shoulder", "right_shoulder"),
    "mid_hip": ("left_hip", "right_hip"),
}


class KeypointFileError(ValueError):
    """A keypoint file or folder that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class KeypointSequence:
    """The keypoints of one video (or camera session), one row per decoded frame.

    ``points`` is ``(frames, 33, 5)`` float64; rows of frames without a person are NaN.
    ``frame_numbers`` are 1-based as in the frame schema; ``sizes`` holds (height, width) per frame.
    """

    sequence_id: str
    frame_numbers: np.ndarray
    timestamps_ms: np.ndarray
    sizes: np.ndarray
    points: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.frame_numbers)
        if self.points.shape != (n, len(JOINTS), len(CHANNELS)):
            raise ValueError(f"points must have shape ({n}, 33, 5), got {self.points.shape}")
        for array in (self.frame_numbers, self.timestamps_ms, self.sizes, self.points):
            array.setflags(write=False)

    def __len__(self) -> int:
        return len(self.frame_numbers)

    @property
    def has_person(self) -> np.ndarray:
        """Boolean per frame: was any joint detected?"""
        return ~np.isnan(self.points[:, :, X]).all(axis=1)

    @property
    def frame_rate(self) -> float | None:
        """Frames per second from the timestamps, or None when they do not say.

        The mean interval, leaving out gaps longer than one and a half typical intervals (a
        dropped frame, a stall): containers such as WebM store whole milliseconds, so at 30
        frames/s single intervals are 33 or 34 ms and only their mean gives 30. A sequence of
        one frame, or whose stamps do not increase, has no rate.
        """
        intervals = np.diff(self.timestamps_ms)
        if not len(intervals) or np.median(intervals) <= 0:
            return None
        regular = intervals[(intervals > 0) & (intervals <= 1.5 * np.median(intervals))]
        return 1000.0 / float(np.mean(regular))


def empty_points(frames: int) -> np.ndarray:
    """A ``(frames, 33, 5)`` array of NaN: no person anywhere."""
    return np.full((frames, len(JOINTS), len(CHANNELS)), np.nan)


# --------------------------------------------------------------------------- frame schema


def frame_record(
    sequence_id: str,
    frame_number: int,
    timestamp_ms: float,
    height: int,
    width: int,
    joints: np.ndarray | None,
) -> dict:
    """One frame in the frame-file schema; ``joints`` is ``(33, 5)`` or None when no person."""
    positions: dict[str, dict[str, float]] = {}
    if joints is not None and not np.isnan(joints[:, X]).all():
        for name, (x, y, z, vis, pres) in zip(JOINTS, joints.tolist(), strict=True):
            if math.isnan(x):
                continue
            entry = {
                "x": x,
                "y": y,
                "z": z,
                "visibility": vis,
                "x_normalized": x / width,
                "y_normalized": y / height,
                "z_normalized": z / width,
            }
            if not math.isnan(pres):
                entry["presence"] = pres
            positions[name] = entry
    return {
        "sequence_id": sequence_id,
        "sequence_source": "mediapipe",
        "frame_number": int(frame_number),
        "timestamp_ms": float(timestamp_ms),
        "image_dimensions": {"height": int(height), "width": int(width)},
        "joint_positions": positions,
    }


def _number(value: object, what: str, where: str, default: float = np.nan) -> float:
    """A JSON value as a float (``null`` or absent is ``default``); anything else is an error naming it.

    Frame files come from other tools and other people: a string, an object or an integer too
    large for a float must end in a :class:`KeypointFileError`, not in whatever ``float()`` raises.
    """
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise KeypointFileError(f"{where}: {what} must be a number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise KeypointFileError(f"{where}: {what} is out of range") from None


def _whole(value: object, what: str, where: str) -> int:
    """A JSON integer that fits the arrays (int64): frame numbers and image sizes."""
    if isinstance(value, bool) or not isinstance(value, int) or not _INT64_MIN <= value <= _INT64_MAX:
        raise KeypointFileError(f"{where}: {what} must be a whole number, got {value!r:.40}")
    return value


_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


def _joints_from_record(record: dict, pixel_scale: bool, width: int, height: int, where: str) -> np.ndarray:
    """The ``(33, 5)`` array of one frame object; unknown joint names are an error."""
    joints = np.full((len(JOINTS), len(CHANNELS)), np.nan)
    positions = record.get("joint_positions") or {}
    if not isinstance(positions, dict):
        raise KeypointFileError(f"{where}: joint_positions must be an object")
    for name, entry in positions.items():
        index = JOINT_INDEX.get(name)
        if index is None:
            raise KeypointFileError(f"{where}: unknown joint {name!r}")
        if entry is None:  # written as null: not detected in this frame
            continue
        if not isinstance(entry, dict) or entry.get("x") is None or entry.get("y") is None:
            raise KeypointFileError(f"{where}: joint {name!r} lacks numeric x/y")
        at = f"{where}, joint {name!r}"
        x, y, z = (_number(entry.get(axis), axis, at) for axis in ("x", "y", "z"))
        if not pixel_scale:  # the seed stored MediaPipe's image-relative x, y, z in "x", "y", "z"
            x, y, z = x * width, y * height, z * width
        visibility = _number(entry.get("visibility"), "visibility", at, default=1.0)
        joints[index] = (x, y, z, visibility, _number(entry.get("presence"), "presence", at))
    return joints


def _sequence_from_records(records: list[dict], where: str, pixel_scale: bool) -> KeypointSequence:
    n = len(records)
    points = empty_points(n)
    frame_numbers = np.empty(n, dtype=np.int64)
    timestamps = np.empty(n)
    sizes = np.empty((n, 2), dtype=np.int64)
    sequence_id = ""
    for i, record in enumerate(records):
        at = f"{where}, frame {i + 1}"
        if not isinstance(record, dict):
            raise KeypointFileError(f"{at}: expected a JSON object")
        dims = record.get("image_dimensions")
        sized = isinstance(dims, dict) and {"height", "width"} <= dims.keys()
        if "frame_number" not in record or not sized:
            raise KeypointFileError(f"{at}: missing frame_number or image_dimensions")
        frame_numbers[i] = _whole(record["frame_number"], "frame_number", at)
        sizes[i] = (_whole(dims["height"], "image height", at), _whole(dims["width"], "image width", at))
        timestamps[i] = _number(record.get("timestamp_ms"), "timestamp_ms", at)
        height, width = (int(v) for v in sizes[i])
        points[i] = _joints_from_record(
            record, pixel_scale, width, height, f"{where}, frame {frame_numbers[i]}"
        )
        identifier = record.get("sequence_id")
        if isinstance(identifier, int) and not isinstance(identifier, bool):
            identifier = str(identifier)  # the seed wrote a number (its recording's start time)
        elif identifier is not None and not isinstance(identifier, str):
            raise KeypointFileError(f"{at}: sequence_id must be a string, got {type(identifier).__name__}")
        sequence_id = sequence_id or identifier or ""
    return KeypointSequence(sequence_id, frame_numbers, timestamps, sizes, points)


def read_frames_jsonl(path: str | Path) -> KeypointSequence:
    """Read a ``.frames.jsonl`` file; a malformed line is reported with its line number."""
    path = Path(path)
    records = []
    try:
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise KeypointFileError(f"{path}:{line_number}: not valid JSON ({exc.msg})") from exc
                except RecursionError:  # "[[[[…": json recurses once per level
                    raise KeypointFileError(f"{path}:{line_number}: JSON nested too deeply") from None
    except OSError as exc:
        raise KeypointFileError(f"{path}: cannot read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise KeypointFileError(f"{path}: not a UTF-8 text file") from exc
    sequence = _sequence_from_records(records, str(path), pixel_scale=True)
    if not sequence.sequence_id:
        return KeypointSequence(
            frames_stem(path), sequence.frame_numbers, sequence.timestamps_ms, sequence.sizes, sequence.points
        )
    return sequence


_SEED_FRAME = re.compile(r"keypoints-(\d+)\.json$")


def read_seed_folder(folder: str | Path) -> KeypointSequence:
    """Read the seed's layout: a folder of ``keypoints-0001.json`` … files, one frame each.

    The seed stored MediaPipe's image-relative coordinates in ``x``/``y``; they are scaled to
    pixels with each frame's image dimensions.
    """
    folder = Path(folder)
    files = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _SEED_FRAME.search(p.name)))
    if not files:
        raise KeypointFileError(f"{folder}: no keypoints-NNNN.json files")
    records = []
    for _, path in files:
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise KeypointFileError(f"{path}: not a readable JSON frame ({exc})") from exc
        except RecursionError:
            raise KeypointFileError(f"{path}: JSON nested too deeply") from None
    sequence = _sequence_from_records(records, str(folder), pixel_scale=False)
    return KeypointSequence(
        folder.name, sequence.frame_numbers, sequence.timestamps_ms, sequence.sizes, sequence.points
    )


def read_keypoints(path: str | Path) -> KeypointSequence:
    """Read either layout: a ``.frames.jsonl`` file or a seed folder of per-frame JSON files."""
    path = Path(path)
    if path.is_dir():
        return read_seed_folder(path)
    if not path.exists():
        raise KeypointFileError(f"{path}: no such file or folder")
    return read_frames_jsonl(path)


def frames_stem(path: str | Path) -> str:
    """The video stem of a frame file: ``walk.frames.jsonl`` -> ``walk``."""
    name = Path(path).name
    return name[: -len(FRAMES_SUFFIX)] if name.endswith(FRAMES_SUFFIX) else Path(name).stem


def write_frames_jsonl(records: Iterable[dict], path: str | Path) -> int:
    """Write frame objects atomically: a reader sees either no file or the whole file.

    The lines go to ``<path>.partial`` first, which is flushed, synced and renamed, so an
    interrupted write can never be mistaken for a finished one. Returns the number of frames.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    count = 0
    try:
        with partial.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, separators=(",", ":"), allow_nan=False))
                handle.write("\n")
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:  # also Ctrl-C: never leave a half file behind, finished or not
        partial.unlink(missing_ok=True)
        raise
    return count


def sequence_records(sequence: KeypointSequence) -> Iterator[dict]:
    """The frame objects of a sequence, ready for :func:`write_frames_jsonl`."""
    for i in range(len(sequence)):
        height, width = sequence.sizes[i]
        yield frame_record(
            sequence.sequence_id,
            int(sequence.frame_numbers[i]),
            float(sequence.timestamps_ms[i]),
            int(height),
            int(width),
            sequence.points[i],
        )


# --------------------------------------------------------------------------- OpenPose BODY-25

_B25_SOURCES = np.array([JOINT_INDEX.get(_BODY25_FROM_BLAZEPOSE.get(n, ""), -1) for n in BODY25_JOINTS])
_B25_MID_A = np.array([JOINT_INDEX[_MIDPOINTS[n][0]] if n in _MIDPOINTS else -1 for n in BODY25_JOINTS])
_B25_MID_B = np.array([JOINT_INDEX[_MIDPOINTS[n][1]] if n in _MIDPOINTS else -1 for n in BODY25_JOINTS])


def blazepose_to_body25(points: np.ndarray) -> np.ndarray:
    """Convert ``(frames, 33, C)`` BlazePose arrays to ``(frames, 25, C)`` BODY-25 arrays.

    Neck and mid_hip are the midpoints of the shoulders and of the hips; joints BlazePose does not
    have (the small toes) are NaN. Coordinates keep BlazePose's orientation (y down).
    """
    out = np.full(points.shape[:-2] + (len(BODY25_JOINTS), points.shape[-1]), np.nan)
    direct = _B25_SOURCES >= 0
    out[..., direct, :] = points[..., _B25_SOURCES[direct], :]
    mid = _B25_MID_A >= 0
    out[..., mid, :] = (points[..., _B25_MID_A[mid], :] + points[..., _B25_MID_B[mid], :]) / 2
    return out


def body25_to_blazepose(points: np.ndarray) -> np.ndarray:
    """Place ``(frames, 25, C)`` BODY-25 arrays into the 33-joint layout (absent joints NaN).

    Neck and mid_hip are dropped: the feature code derives them from shoulders and hips, exactly
    as it does for BlazePose input, so both sources give the same features.
    """
    out = np.full(points.shape[:-2] + (len(JOINTS), points.shape[-1]), np.nan)
    direct = _B25_SOURCES >= 0
    out[..., _B25_SOURCES[direct], :] = points[..., direct, :]
    return out


@dataclass(frozen=True)
class Body25Table:
    """A labeled table of single poses in BODY-25 form, imported into the 33-joint layout."""

    labels: np.ndarray
    points: np.ndarray


def read_body25_table(path: str | Path) -> Body25Table:
    """Import a BODY-25 table such as ``BodyPose_Dataset.csv``.

    Columns ``label, accuracy, x0, y0 … x24, y24``; y points up there and ``(0, 0)`` marks a
    missing keypoint. The result has y pointing down (y -> -y), missing joints as NaN, visibility 1
    for detected joints, and z/presence NaN. A ``.gz`` file is read through gzip.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = list(reader)
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
        raise KeypointFileError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from exc
    except csv.Error as exc:  # a field over csv's size limit, for one
        raise KeypointFileError(f"{path}: not a readable CSV table ({exc})") from exc
    expected = ["label", "accuracy"] + [f"{a}{i}" for i in range(25) for a in ("x", "y")]
    if header is None or [h.strip() for h in header] != expected:
        raise KeypointFileError(f"{path}: expected the columns label, accuracy, x0, y0 … x24, y24")
    try:
        values = np.array([row[2:] for row in rows], dtype=np.float64).reshape(len(rows), 25, 2)
    except ValueError as exc:
        raise KeypointFileError(f"{path}: every row needs 50 numeric coordinates ({exc})") from exc
    missing = (values[..., 0] == 0) & (values[..., 1] == 0)
    body25 = np.full((len(rows), 25, len(CHANNELS)), np.nan)
    body25[..., X] = values[..., 0]
    body25[..., Y] = -values[..., 1]
    body25[..., VISIBILITY] = 1.0
    body25[missing] = np.nan
    labels = np.array([row[0] for row in rows], dtype=object)
    return Body25Table(labels=labels, points=body25_to_blazepose(body25))


# --------------------------------------------------------------------------- BlazePose landmark tables

BLAZEPOSE_TABLE_COLUMNS: tuple[str, ...] = (
    "name",
    "label",
    *(f"{axis}{i}" for i in range(len(JOINTS)) for axis in ("x", "y", "z")),
)
"""A BlazePose landmark table's columns (it has no header): image name, label, then x, y, z of the
33 joints in MediaPipe's order, as ML Kit's pose classification samples write them."""


@dataclass(frozen=True)
class BlazePoseTable:
    """A labeled table of single poses, BlazePose landmarks already in the 33-joint layout."""

    labels: np.ndarray
    points: np.ndarray


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line number, cells)`` of each non-blank line of a CSV file (``.gz`` read through gzip).

    Read lazily, so a failure deep in a large or corrupt file still becomes one
    :class:`KeypointFileError` naming the file (and the line, where csv knows it).
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            try:
                for row in reader:
                    if row:
                        yield reader.line_num, row
            except csv.Error as exc:  # a field over csv's size limit, for one
                raise KeypointFileError(f"{path}:{reader.line_num}: not a readable CSV line ({exc})") from exc
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
        raise KeypointFileError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from exc


def _coordinate(cell: str, column: str, where: str) -> float:
    """One coordinate cell as a finite float; anything else is an error naming the line and column."""
    try:
        value = float(cell)
    except ValueError:
        raise KeypointFileError(f"{where}: {column} is not a number ({cell!r:.40})") from None
    if not math.isfinite(value):
        raise KeypointFileError(f"{where}: {column} is not a finite number ({cell!r:.40})")
    return value


def read_blazepose_table(path: str | Path) -> BlazePoseTable:
    """Import a BlazePose landmark table such as ML Kit's ``fitness_pose_samples.csv``.

    No header; each row is ``name, label, x0, y0, z0 … x32, y32, z32`` (see
    :data:`BLAZEPOSE_TABLE_COLUMNS`): pixels of the source image, y down, z on x's scale, which is
    this module's layout already, so the values are taken as they are. Image sizes may differ from
    row to row; the features are size-independent. The table has no visibility or presence, so
    both are 1: every joint counts as seen, since the table gives no way to say otherwise. A malformed
    row is an error naming the file and line; a ``.gz`` file is read through gzip.
    """
    path = Path(path)
    layout = f"{len(BLAZEPOSE_TABLE_COLUMNS)} columns (name, label, x0, y0, z0 … x32, y32, z32)"
    coordinates = BLAZEPOSE_TABLE_COLUMNS[2:]
    labels: list[str] = []
    values: list[list[float]] = []
    for line, row in _csv_rows(path):
        where = f"{path}:{line}"
        if len(row) != len(BLAZEPOSE_TABLE_COLUMNS):
            raise KeypointFileError(f"{where}: expected {layout}, got {len(row)}")
        labels.append(row[1].strip())
        values.append([_coordinate(c, name, where) for c, name in zip(row[2:], coordinates, strict=True)])
    if not labels:
        raise KeypointFileError(f"{path}: no poses; expected rows of {layout}")
    points = np.ones((len(labels), len(JOINTS), len(CHANNELS)))  # visibility and presence 1
    points[..., : Z + 1] = np.array(values).reshape(len(labels), len(JOINTS), 3)
    return BlazePoseTable(labels=np.array(labels, dtype=object), points=points)
