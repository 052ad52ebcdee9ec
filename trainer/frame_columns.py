"""The columnar copy of a frame file: ``<stem>.frames.arrow`` beside ``<stem>.frames.jsonl``.

The JSONL file stays the interchange format (the seed's schema, readable by any tool). Parsing
it bounds dataset building, though: even pyarrow's JSON reader manages only 3,000-6,000 frames/s
here (7 KB of text a frame), while the arrays themselves are 1.3 KB a frame. So extraction
(and ``trainer keypoints-cache``) also writes the arrays that reading the JSONL gives, as an
Arrow IPC file, and the dataset builder reads that copy instead when it is fresh.

Why Arrow IPC: reading a 382-frame file's arrays took 0.27 ms, against 1.4 ms for ``.npz``
(numpy's zip container), 6.1 ms for Parquet and 68 ms for the JSONL with pyarrow's reader
(``python -m benchmarks dataset`` prints these; 0.79 ms with this module's checks). Writing
takes 0.6 ms. It is uncompressed: zstd saves disk but costs reading time, and the copy can be
rebuilt from the JSONL at will.

The copy records the fingerprint of the JSONL it mirrors (size, modification time in ns and
SHA-256) and the CRC-32 of its own arrays. It is used only when it is fresh: the JSONL's size
and time match (or, when only the time moved, as after a plain ``cp``, its hash does), and its
arrays match their recorded CRC-32. Anything else — no copy, a JSONL edited after it, a damaged or
foreign file — means reading the JSONL, which :func:`read_keypoint_file` reports so that the
caller can say so once. The arrays are by construction exactly those of
:func:`trainer.frame_files.read_frames` on the same bytes, so a dataset built from copies equals
one built from the JSONL, bit for bit (a test holds them to it).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from device.keypoints import CHANNELS, FRAMES_SUFFIX, JOINTS, KeypointFileError, KeypointSequence
from trainer.messages import some

if TYPE_CHECKING:  # pyarrow is imported where copies are read and written: `dataset --help` needs none
    import pyarrow as pa

COLUMNS_SUFFIX = ".frames.arrow"
FORMAT = "movement-edge frame columns 1"
_VALUES = len(JOINTS) * len(CHANNELS)


@functools.cache
def _schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("frame_number", pa.int64()),
            ("timestamp_ms", pa.float64()),
            ("height", pa.int64()),
            ("width", pa.int64()),
            ("points", pa.list_(pa.float64(), _VALUES)),  # the (33, 5) array of a frame, row-major
        ]
    )


_METADATA_KEYS = frozenset({"format", "sequence_id", "jsonl", "arrays_crc32"})


class CopyState(StrEnum):
    """How a frame file's columnar copy was found."""

    FRESH = "fresh"  # read from the copy
    MISSING = "missing"
    STALE = "stale"  # the JSONL changed after the copy was written
    DAMAGED = "damaged"  # not a copy this code wrote, or altered since


@dataclass(frozen=True)
class Fingerprint:
    """What identifies a JSONL file's content: a quick check (size, time) and the authority (hash)."""

    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def of(cls, data: bytes, stat: os.stat_result) -> Fingerprint:
        return cls(stat.st_size, stat.st_mtime_ns, hashlib.sha256(data).hexdigest())

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Fingerprint:
        """The recorded fingerprint; ValueError unless it has exactly the fields and types written."""
        fields = json.loads(text)
        types = {"size": int, "mtime_ns": int, "sha256": str}
        if not isinstance(fields, dict) or fields.keys() != types.keys():
            raise ValueError("not a fingerprint")
        if not all(type(fields[k]) is t for k, t in types.items()):  # bool is not a size
            raise ValueError("not a fingerprint")
        return cls(**fields)

    def matches(self, path: Path) -> bool:
        """Whether ``path`` still has this content: same size and time, or same size and hash."""
        stat = path.stat()
        if stat.st_size != self.size:
            return False
        if stat.st_mtime_ns == self.mtime_ns:
            return True
        return hashlib.sha256(path.read_bytes()).hexdigest() == self.sha256


@dataclass(frozen=True)
class CopyRead:
    """Where a frame file's keypoints came from: its copy (fresh) or its JSONL (and why)."""

    name: str  # the frame file's name
    state: CopyState | None  # None: a seed folder, which has no copy
    reason: str = ""  # for a damaged copy: what is wrong with it


def copy_note(reads: Sequence[CopyRead], folder: Path) -> str | None:
    """One line saying which frame files were read from JSONL instead of their copies, or None."""
    late = {state: [r for r in reads if r.state is state] for state in CopyState}
    del late[CopyState.FRESH]
    fallbacks = sum(len(found) for found in late.values())
    if not fallbacks:
        return None
    damaged = [f"{columns_path(r.name).name} ({r.reason})" for r in late[CopyState.DAMAGED]]
    parts = [
        f"{what}: {some(names, 5)}"
        for what, names in (
            ("no columnar copy", [r.name for r in late[CopyState.MISSING]]),
            ("changed since its copy", [r.name for r in late[CopyState.STALE]]),
            ("damaged copy", damaged),
        )
        if names
    ]
    return (
        f"read {fallbacks} of {len(reads)} keypoint files from JSONL, not from their columnar copies "
        f"({'; '.join(parts)}); `python -m trainer keypoints-cache {folder}` writes them"
    )


def columns_path(frames: str | Path) -> Path:
    """``walk.frames.jsonl`` -> ``walk.frames.arrow``, in the same folder."""
    frames = Path(frames)
    return frames.with_name(frames.name.removesuffix(FRAMES_SUFFIX) + COLUMNS_SUFFIX)


def _arrays_crc32(arrays: list[np.ndarray]) -> str:
    """A checksum of the arrays' bytes: finds damage (as zip's and PNG's do) at 2.4x SHA-256's speed."""
    crc = 0
    for array in arrays:
        crc = zlib.crc32(np.ascontiguousarray(array).data, crc)
    return f"{crc:08x}"


def write_columns(frames: str | Path) -> Path:
    """Write the columnar copy of frame file ``frames``; returns its path.

    One snapshot of the JSONL is hashed and parsed, so the fingerprint describes exactly the bytes
    the arrays came from. Written atomically (``.partial``, then renamed). Raises
    :class:`KeypointFileError` for a JSONL that cannot be read, naming it, and for a copy that
    cannot be written.
    """
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from trainer.frame_files import parse_frames

    frames = Path(frames)
    try:
        with frames.open("rb") as handle:
            stat = os.fstat(handle.fileno())
            data = handle.read()
    except OSError as exc:
        raise KeypointFileError(f"{frames}: cannot read ({exc.strerror})") from exc
    sequence = parse_frames(data, frames)
    columns = [
        sequence.frame_numbers,
        sequence.timestamps_ms,
        np.ascontiguousarray(sequence.sizes[:, 0]),
        np.ascontiguousarray(sequence.sizes[:, 1]),
        sequence.points,
    ]
    fingerprint = Fingerprint.of(data, stat)
    metadata = {
        "format": FORMAT,
        "sequence_id": json.dumps(sequence.sequence_id),  # any str, lone surrogates included
        "jsonl": fingerprint.to_json(),
        "arrays_crc32": _arrays_crc32(columns),
    }
    points = pa.FixedSizeListArray.from_arrays(pa.array(sequence.points.reshape(-1)), _VALUES)
    table = pa.Table.from_arrays(
        [pa.array(column) for column in columns[:4]] + [points], schema=_schema().with_metadata(metadata)
    )
    out = columns_path(frames)
    partial = out.with_name(out.name + ".partial")
    try:
        with pa.OSFile(str(partial), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(partial, out)
    except OSError as exc:  # pyarrow's IO errors are OSErrors too
        partial.unlink(missing_ok=True)
        raise KeypointFileError(f"{out}: cannot write ({exc})") from exc
    return out


class _Damaged(Exception):
    """A copy that is not what :func:`write_columns` wrote; the message says what is wrong."""


def _load(path: Path) -> tuple[KeypointSequence, Fingerprint]:
    """The arrays and recorded fingerprint of a copy; raises :class:`_Damaged` for anything else."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    try:
        table = ipc.open_file(pa.py_buffer(path.read_bytes())).read_all()
        table.validate(full=True)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _Damaged(f"not a readable Arrow file ({' '.join(str(exc).split())[:80]})") from None
    metadata = {k.decode("utf-8", "replace"): v for k, v in (table.schema.metadata or {}).items()}
    if set(metadata) != _METADATA_KEYS or metadata["format"] != FORMAT.encode():
        raise _Damaged("not a frame-columns file of this version")
    if not table.schema.equals(_schema()) or any(column.null_count for column in table.columns):
        raise _Damaged("unexpected columns")
    try:
        sequence_id = json.loads(metadata["sequence_id"])
        fingerprint = Fingerprint.from_json(metadata["jsonl"])
    except ValueError:
        sequence_id = None
    if not isinstance(sequence_id, str):
        raise _Damaged("unreadable sequence id or fingerprint")
    # zero-copy views of the file's bytes (read-only, as KeypointSequence wants them)
    arrays = [table.column(i).combine_chunks().to_numpy() for i in range(4)]
    points = table.column("points").combine_chunks().flatten().to_numpy()
    points = points.reshape(table.num_rows, len(JOINTS), len(CHANNELS))
    if _arrays_crc32([*arrays, points]) != metadata["arrays_crc32"].decode("ascii", "replace"):
        raise _Damaged("its arrays do not match their checksum")
    sizes = np.stack(arrays[2:4], axis=1)
    return KeypointSequence(sequence_id, arrays[0], arrays[1], sizes, points), fingerprint


def check_copy(frames: str | Path) -> tuple[KeypointSequence | None, CopyRead]:
    """The keypoints of a frame file's copy when that is fresh (else None), and how it was found."""
    frames = Path(frames)
    if frames.is_dir():
        return None, CopyRead(frames.name, None)
    copy = columns_path(frames)
    if not copy.exists():
        return None, CopyRead(frames.name, CopyState.MISSING)
    try:
        sequence, fingerprint = _load(copy)
    except _Damaged as exc:
        return None, CopyRead(frames.name, CopyState.DAMAGED, str(exc))
    try:
        fresh = fingerprint.matches(frames)
    except OSError:
        fresh = False
    if not fresh:
        return None, CopyRead(frames.name, CopyState.STALE)
    return sequence, CopyRead(frames.name, CopyState.FRESH)


def read_keypoint_file(frames: str | Path) -> tuple[KeypointSequence, CopyRead]:
    """A frame file's keypoints, from its columnar copy when that is fresh, else from the JSONL.

    Never fails because of the copy: a missing, stale or damaged one only means reading the
    JSONL (and the :class:`CopyRead` says which). Errors of the JSONL itself are raised as
    :func:`trainer.frame_files.read_frames` raises them.
    """
    from trainer.frame_files import read_frames

    sequence, how = check_copy(frames)
    return (read_frames(frames) if sequence is None else sequence), how
