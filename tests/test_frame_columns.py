"""The columnar copies of frame files (``<stem>.frames.arrow``): what the dataset builder reads when
they are fresh, and how it falls back to the JSONL (saying so once) when they are not.

Every project here is real files: frame files written by ``write_frames_jsonl``, copies written by
``write_columns`` as ``trainer extract`` writes them, datasets built by the real command line.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from device.keypoints import KeypointSequence, sequence_records, write_frames_jsonl
from trainer.__main__ import main
from trainer.dataset import DatasetConfig, build_dataset, default_workers, plan_jobs
from trainer.frame_columns import COLUMNS_SUFFIX, CopyState, check_copy, columns_path, write_columns
from trainer.frame_files import read_frames

HEADER = "video,start_frame,end_frame,column,label\n"
STEMS = ("walk", "jump", "sway")


def frames_of(squats_reference: np.ndarray, shift: float) -> KeypointSequence:
    """Real landmarks with the awkward cases a reader must keep: nobody in view, a missing joint,
    no presence scores; shifted so that every video differs."""
    points = squats_reference.copy()
    points[:, :, :2] += shift
    points[10:13] = np.nan
    points[20, 5] = np.nan
    points[30, :, 4] = np.nan
    n = len(points)
    sizes = np.tile([1280, 720], (n, 1))
    return KeypointSequence("", np.arange(1, n + 1), np.arange(n) * 200.0, sizes, points)


@pytest.fixture
def project(tmp_path: Path, squats_reference: np.ndarray) -> dict[str, Path]:
    """Three videos' frame files with their copies, and annotations labelling most frames."""
    keypoints = tmp_path / "keypoints"
    keypoints.mkdir()
    rows = []
    for i, stem in enumerate(STEMS):
        path = keypoints / f"{stem}.frames.jsonl"
        write_frames_jsonl(sequence_records(frames_of(squats_reference, 3.5 * i)), path)
        write_columns(path)
        rows += [f"{stem},1,30,move,A\n", f"{stem},31,60,move,B\n"]
    (tmp_path / "labels.csv").write_text(HEADER + "".join(rows))
    return {"keypoints": keypoints, "annotations": tmp_path / "labels.csv", "out": tmp_path}


def dataset(project: dict[str, Path], capsys: pytest.CaptureFixture[str], name: str, *options: str):
    """Build with the real command line: (status, stderr, sha256 of the table written)."""
    out = project["out"] / name
    status = main(
        [
            "dataset",
            "--keypoints",
            str(project["keypoints"]),
            "--annotations",
            str(project["annotations"]),
            "--out",
            str(out),
            *options,
        ]
    )
    err = capsys.readouterr().err
    digest = hashlib.sha256(out.read_bytes()).hexdigest() if out.exists() else None
    return status, err, digest


STRATEGIES = [[], ["--strategy", "flatten_into_columns", "--window", "10", "--window-label", "move"]]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=["none", "flatten_into_columns"])
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_dataset_from_the_copies_equals_one_from_the_jsonl_bit_for_bit(
    project: dict[str, Path], capsys: pytest.CaptureFixture[str], strategy: list[str], suffix: str
) -> None:
    status, err, from_copies = dataset(project, capsys, f"copies{suffix}", *strategy)
    assert status == 0 and err == ""  # every copy fresh: nothing to say
    for copy in project["keypoints"].glob(f"*{COLUMNS_SUFFIX}"):
        copy.unlink()
    status, err, from_jsonl = dataset(project, capsys, f"jsonl{suffix}", *strategy)
    assert status == 0
    assert from_copies == from_jsonl
    assert err.count("\n") == 1 and "read 3 of 3 keypoint files from JSONL" in err


def test_the_copy_holds_exactly_what_reading_the_jsonl_gives(project: dict[str, Path]) -> None:
    for path in project["keypoints"].glob("*.frames.jsonl"):
        copied, how = check_copy(path)
        assert how.state is CopyState.FRESH
        reference = read_frames(path)
        assert copied.sequence_id == reference.sequence_id == path.name.split(".")[0]
        for field in ("frame_numbers", "timestamps_ms", "sizes", "points"):
            mine, theirs = getattr(copied, field), getattr(reference, field)
            assert mine.dtype == theirs.dtype and mine.tobytes() == theirs.tobytes(), field


def _edit_a_coordinate(path: Path) -> None:
    """Change one digit of one coordinate: the same size, a new modification time."""
    text = path.read_text()
    at = text.index('"x":') + 5
    digit = text[at]
    path.write_text(text[:at] + ("1" if digit != "1" else "2") + text[at + 1 :])


def test_a_jsonl_edited_after_its_copy_is_read_from_the_jsonl_and_said_once(
    project: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    edited = project["keypoints"] / "jump.frames.jsonl"
    size = edited.stat().st_size
    _edit_a_coordinate(edited)
    assert edited.stat().st_size == size  # only the hash can tell

    status, err, digest = dataset(project, capsys, "edited.csv")

    assert status == 0
    assert err.splitlines() == [
        "trainer dataset: note: read 1 of 3 keypoint files from JSONL, not from their columnar copies "
        "(changed since its copy: jump.frames.jsonl); "
        f"`python -m trainer keypoints-cache {project['keypoints']}` writes them"
    ]
    assert check_copy(edited)[1].state is CopyState.STALE
    columns_path(edited).unlink()
    assert dataset(project, capsys, "reference.csv")[2] == digest  # the edit is in the dataset


def test_a_jsonl_only_touched_or_copied_keeps_its_copy(project: dict[str, Path]) -> None:
    path = project["keypoints"] / "walk.frames.jsonl"
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # as `cp` without -p leaves it: new time, same bytes
    assert check_copy(path)[1].state is CopyState.FRESH


def test_the_builder_stays_in_process_unless_much_json_must_be_parsed(
    project: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, jobs, _ = plan_jobs(project["keypoints"], project["annotations"], DatasetConfig())
    assert default_workers(jobs) == 1
    for copy in project["keypoints"].glob(f"*{COLUMNS_SUFFIX}"):
        copy.unlink()
    monkeypatch.setattr("trainer.dataset.PARALLEL_JSON_BYTES", 0)  # three small files count as much JSON
    assert default_workers(jobs) == (os.cpu_count() or 1)


# --------------------------------------------------------------------------- damaged copies


def _truncated(copy: Path) -> None:
    copy.write_bytes(copy.read_bytes()[: copy.stat().st_size // 2])


def _garbage(copy: Path) -> None:
    copy.write_bytes(os.urandom(4096))


def _empty(copy: Path) -> None:
    copy.write_bytes(b"")


def _a_folder(copy: Path) -> None:
    copy.unlink()
    copy.mkdir()


def _other_columns(copy: Path) -> None:
    table = pa.table({"frame_number": [1, 2]}).replace_schema_metadata({"format": "something else"})
    with ipc.new_file(str(copy), table.schema) as writer:
        writer.write_table(table)


def _flipped_byte_in_the_keypoints(copy: Path) -> None:
    """One bit of a coordinate flipped: still a readable Arrow file, so only the checksum can tell."""
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x10
    copy.write_bytes(bytes(data))
    ipc.open_file(pa.py_buffer(copy.read_bytes())).read_all().validate(full=True)


def _lying_fingerprint(copy: Path) -> None:
    table = ipc.open_file(pa.py_buffer(copy.read_bytes())).read_all()
    metadata = dict(table.schema.metadata)
    metadata[b"jsonl"] = json.dumps({"size": True, "mtime_ns": "soon", "sha256": 7}).encode()
    table = table.replace_schema_metadata(metadata)
    with ipc.new_file(str(copy), table.schema) as writer:
        writer.write_table(table)


def _another_videos_copy(copy: Path) -> None:
    copy.write_bytes(copy.with_name("walk" + COLUMNS_SUFFIX).read_bytes())


DAMAGE: list[tuple[Callable[[Path], None], str]] = [
    (_truncated, "damaged copy: jump.frames.arrow (not a readable Arrow file"),
    (_garbage, "damaged copy: jump.frames.arrow (not a readable Arrow file"),
    (_empty, "damaged copy: jump.frames.arrow (not a readable Arrow file"),
    (_a_folder, "damaged copy: jump.frames.arrow (not a readable Arrow file"),
    (_other_columns, "damaged copy: jump.frames.arrow (not a frame-columns file of this version)"),
    (_flipped_byte_in_the_keypoints, "jump.frames.arrow (its arrays do not match their checksum)"),
    (_lying_fingerprint, "damaged copy: jump.frames.arrow (unreadable sequence id or fingerprint)"),
    (_another_videos_copy, "changed since its copy: jump.frames.jsonl"),
]


@pytest.mark.parametrize(("damage", "named"), DAMAGE, ids=[d.__name__.strip("_") for d, _ in DAMAGE])
def test_a_damaged_copy_falls_back_to_the_jsonl_with_one_line_never_a_traceback(
    project: dict[str, Path], capsys: pytest.CaptureFixture[str], damage: Callable[[Path], None], named: str
) -> None:
    status, _, intact = dataset(project, capsys, "intact.csv")
    assert status == 0
    damage(project["keypoints"] / f"jump{COLUMNS_SUFFIX}")

    status, err, digest = dataset(project, capsys, "damaged.csv")

    assert status == 0 and digest == intact  # the same dataset, read from jump's JSONL
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("trainer dataset: note: read 1 of 3 keypoint files from JSONL") and named in err


# --------------------------------------------------------------------------- the rebuild command


def test_keypoints_cache_writes_missing_stale_and_damaged_copies_and_leaves_fresh_ones(
    project: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = project["keypoints"]
    fresh = folder / f"sway{COLUMNS_SUFFIX}"
    os.utime(fresh, ns=(2_000_000_000, 2_000_000_000))
    (folder / f"walk{COLUMNS_SUFFIX}").unlink()
    _edit_a_coordinate(folder / "jump.frames.jsonl")

    assert main(["keypoints-cache", str(folder)]) == 0
    assert capsys.readouterr().out == f"columnar copies: 2 written, 1 up to date, 0 failed ({folder})\n"
    assert fresh.stat().st_mtime_ns == 2_000_000_000  # left alone
    assert {check_copy(p)[1].state for p in folder.glob("*.frames.jsonl")} == {CopyState.FRESH}

    assert main(["keypoints-cache", str(folder / "walk.frames.jsonl"), "--force"]) == 0
    assert capsys.readouterr().out.startswith("columnar copies: 1 written, 0 up to date, 0 failed")


def test_keypoints_cache_reports_an_unreadable_frame_file_in_one_line_and_goes_on(
    project: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = project["keypoints"]
    for copy in folder.glob(f"*{COLUMNS_SUFFIX}"):
        copy.unlink()
    broken = folder / "jump.frames.jsonl"
    broken.write_text(broken.read_text().replace("{", "[", 1))

    assert main(["keypoints-cache", str(folder)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("columnar copies: 2 written, 0 up to date, 1 failed")
    assert err.splitlines() == [
        f"trainer keypoints-cache: {broken}:1: not valid JSON (Expecting ',' delimiter)"
    ]
    written = sorted(p.name for p in folder.glob(f"*{COLUMNS_SUFFIX}"))
    assert written == ["sway.frames.arrow", "walk.frames.arrow"]


def _missing(tmp: Path) -> Path:
    return tmp / "nowhere"


def _not_a_frame_file(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("x")
    return tmp / "notes.txt"


def _empty_folder(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_missing, "nowhere: no such file or folder"),
        (_not_a_frame_file, "notes.txt: not a .frames.jsonl file"),
        (_empty_folder, "no .frames.jsonl files in"),
    ],
)
def test_keypoints_cache_usage_mistakes_are_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Callable[[Path], Path], message: str
) -> None:
    assert main(["keypoints-cache", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err
    assert err.startswith("trainer keypoints-cache: error: ")


def test_build_dataset_reports_how_each_video_was_read(project: dict[str, Path]) -> None:
    (project["keypoints"] / f"walk{COLUMNS_SUFFIX}").unlink()
    config = DatasetConfig(strategy="none")
    result = build_dataset(project["keypoints"], project["annotations"], project["out"] / "d.csv", config)
    assert [(r.name, r.state) for r in result.keypoints] == [
        ("jump.frames.jsonl", CopyState.FRESH),
        ("sway.frames.jsonl", CopyState.FRESH),
        ("walk.frames.jsonl", CopyState.MISSING),
    ]
