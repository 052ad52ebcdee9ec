"""Fast reading of ``.frames.jsonl`` files on the workstation, with pyarrow's JSON reader.

Building a dataset reads thousands of frame files; Python's ``json`` parses about 6,000 frames/s
here, pyarrow's multi-threaded C++ reader with an explicit schema about 25,000–30,000. The result
is exactly what :func:`device.keypoints.read_keypoints` returns (a test holds both to it), and
anything pyarrow cannot take — a seed folder, a malformed line, an unknown joint — goes through
that reference reader, so its error messages name the file, line and problem as usual. The kiosk
never reads frame files, so pyarrow stays off the device.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from device.keypoints import CHANNELS, JOINTS, KeypointSequence, empty_points, frames_stem, read_keypoints

_NORMALIZED = ("x_normalized", "y_normalized", "z_normalized")
_JOINT = pa.struct([(name, pa.float64()) for name in (*CHANNELS, *_NORMALIZED)])
_SCHEMA = pa.schema(
    [
        ("sequence_id", pa.string()),
        ("sequence_source", pa.string()),
        ("frame_number", pa.int64()),
        ("timestamp_ms", pa.float64()),
        ("image_dimensions", pa.struct([("height", pa.int64()), ("width", pa.int64())])),
        ("joint_positions", pa.struct([(joint, _JOINT) for joint in JOINTS])),
    ]
)
# Anything outside the frame schema (an unknown joint above all) fails here and goes to the reference
# reader, which refuses unknown joints by name and tolerates other extra fields.
_OPTIONS = pj.ParseOptions(explicit_schema=_SCHEMA, unexpected_field_behavior="error")
# pyarrow 19's reader crashes the process (SIGSEGV) when a block starts with a ``null`` value, e.g. a
# file whose first line is ``null`` (found by tests/test_hostile_files.py). Every line of a frame
# file is an object, so a line starting with anything else never reaches pyarrow.
_NOT_AN_OBJECT = re.compile(rb"^[ \t\r\f\v]*[^{\s]", re.MULTILINE)


def read_frames(path: str | Path) -> KeypointSequence:
    """A frame file or seed folder as a :class:`KeypointSequence`, as fast as pyarrow allows."""
    path = Path(path)
    if path.is_dir() or not path.is_file():
        return read_keypoints(path)
    try:
        data = path.read_bytes()
    except OSError:
        return read_keypoints(path)
    return parse_frames(data, path)


def _every_line_an_object(data: bytes) -> bool:
    """Whether every line starts with ``{``: two C-speed counts, where the regex below takes 15x
    longer. Lines that are blank or indented take the regex's exact check instead."""
    body = data.rstrip()
    return body.startswith(b"{") and body.count(b"\n") == body.count(b"\n{")


def parse_frames(data: bytes, path: Path) -> KeypointSequence:
    """The bytes of frame file ``path`` as a :class:`KeypointSequence` (what :func:`read_frames`
    returns), for callers that hash and parse one snapshot of a file that may change."""
    if not _every_line_an_object(data) and _NOT_AN_OBJECT.search(data):
        return read_keypoints(path)  # such lines are errors the reference names
    try:
        table = pj.read_json(pa.BufferReader(data), parse_options=_OPTIONS)
        sequence = _from_table(table, path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, ValueError):
        return read_keypoints(path)  # the reference reader says precisely what is wrong
    return sequence


def _from_table(table: pa.Table, path: Path) -> KeypointSequence:
    n = table.num_rows
    dims = table.column("image_dimensions").combine_chunks()
    heights = dims.field("height").to_numpy(zero_copy_only=False)
    widths = dims.field("width").to_numpy(zero_copy_only=False)
    frame_numbers = table.column("frame_number").to_numpy()
    nulls = (dims, dims.field("height"), dims.field("width"), table.column("frame_number"))
    if any(column.null_count for column in nulls):
        raise ValueError("missing frame_number or image_dimensions")
    stamps = table.column("timestamp_ms").to_numpy()
    positions = table.column("joint_positions").combine_chunks()
    points = empty_points(n)
    present = positions.is_valid().to_numpy(zero_copy_only=False)
    for j, joint in enumerate(JOINTS):
        column = positions.field(joint)
        seen = column.is_valid().to_numpy(zero_copy_only=False) & present
        if not seen.any():
            continue
        for axis in ("x", "y"):  # a joint without x or y is an error the reference reader names
            if (~column.field(axis).is_valid().to_numpy(zero_copy_only=False) & seen).any():
                raise ValueError(f"a joint without {axis}")
        for c, channel in enumerate(CHANNELS):
            values = column.field(channel).to_numpy(zero_copy_only=False)
            if channel == "visibility":  # the reference reader's default for a missing score
                values = np.where(np.isnan(values), 1.0, values)
            points[seen, j, c] = values[seen]
    ids = table.column("sequence_id")
    named = ids.filter(pc.not_equal(ids, ""))  # nulls are dropped too: the first real one, as the reference
    sequence_id = named[0].as_py() if len(named) else frames_stem(path)
    return KeypointSequence(
        sequence_id,
        frame_numbers.astype(np.int64),
        np.asarray(stamps, dtype=np.float64),
        np.stack([heights, widths], axis=1).astype(np.int64),
        points,
    )
