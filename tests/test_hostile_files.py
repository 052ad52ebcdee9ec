"""Hostile input files: every reader either reads them or refuses them with its own error type.

Property-based (hypothesis) tests of the file parsers: frame files (``.frames.jsonl``, the seed's
folder layout, BODY-25 tables, plain and gzipped), the workstation's fast pyarrow reader (which
must agree with the reference reader or fail the same way), annotation files (JSON, CSV) and the
TOML label mapping. Inputs are mostly-valid documents with one or more fields turned into
something else (wrong types, huge integers, NaN, nulls, unknown names), plus raw bytes. A reader
that leaks ``TypeError``, ``OverflowError``, ``RecursionError``, ``csv.Error`` … fails the test:
its users would see a traceback instead of a message naming the file.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device.annotations import (
    CSV_HEADER,
    AnnotationError,
    LabelMapping,
    read_csv_annotations,
    read_json_annotations,
)
from device.keypoints import (
    BODY25_JOINTS,
    JOINTS,
    KeypointFileError,
    KeypointSequence,
    read_body25_table,
    read_frames_jsonl,
    read_keypoints,
    read_seed_folder,
)
from trainer.frame_files import read_frames

EXAMPLES = 150
FILES = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values a careless or hostile writer puts where a number, a string or an object belongs.
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-5, 5000),
)
ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=10)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
MISSING = object()  # a key left out of its object


def maybe(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = ODD) -> st.SearchStrategy[Any]:
    """Mostly ``good``, sometimes a wrong value or a missing key, so deep checks are reached too."""
    return st.one_of(good, good, good, bad, st.just(MISSING))


def present(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not MISSING}


@st.composite
def joint_entries(draw: st.DrawFn) -> Any:
    coordinate = st.floats(-2000, 2000, allow_nan=False)
    entry = present(
        x=draw(maybe(coordinate, st.one_of(ODD, NUMBERS))),
        y=draw(maybe(coordinate, st.one_of(ODD, NUMBERS))),
        z=draw(maybe(coordinate, st.one_of(ODD, NUMBERS))),
        visibility=draw(maybe(st.floats(0, 1))),
        presence=draw(maybe(st.floats(0, 1))),
    )
    if draw(st.integers(0, 9)) == 0:
        entry[draw(st.text(min_size=1, max_size=6))] = draw(JSON_VALUES)
    return draw(st.one_of(st.just(entry), st.just(entry), st.just(entry), ODD))


@st.composite
def frame_records(draw: st.DrawFn) -> Any:
    """One frame object of the frame schema, usually valid, with any field possibly wrong."""
    names = st.one_of(st.sampled_from(JOINTS), st.sampled_from(JOINTS), st.text(max_size=10))
    positions = draw(maybe(st.dictionaries(names, joint_entries(), max_size=6)))
    size = st.integers(1, 4000)
    record = present(
        sequence_id=draw(maybe(st.one_of(st.text(max_size=8), st.integers(0, 2**40)))),
        sequence_source="mediapipe",
        frame_number=draw(maybe(st.integers(1, 10**6), st.one_of(ODD, NUMBERS))),
        timestamp_ms=draw(maybe(st.floats(0, 1e7), st.one_of(ODD, NUMBERS))),
        image_dimensions=draw(
            maybe(
                st.fixed_dictionaries({"height": maybe(size, NUMBERS), "width": maybe(size, NUMBERS)}).map(
                    lambda d: present(**d)
                )
            )
        ),
        joint_positions=positions,
    )
    if draw(st.integers(0, 9)) == 0:
        record[draw(st.text(min_size=1, max_size=6))] = draw(JSON_VALUES)
    return draw(st.one_of(st.just(record), st.just(record), st.just(record), st.just(record), JSON_VALUES))


@st.composite
def frame_file_text(draw: st.DrawFn) -> str:
    lines = [json.dumps(r) for r in draw(st.lists(frame_records(), max_size=5))]
    if draw(st.integers(0, 5)) == 0:  # a garbled, blank or deeply nested line somewhere
        garbage = st.one_of(st.text(max_size=20), st.just(""), st.integers(1, 5000).map(lambda n: "[" * n))
        lines.insert(draw(st.integers(0, len(lines))), draw(garbage))
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example (hypothesis runs many examples inside one test call)."""
    with tempfile.TemporaryDirectory(prefix="hostile-") as folder:
        yield Path(folder)


def outcome(read: Callable[[Path], Any], path: Path, error: type[Exception]) -> Any:
    """What ``read`` returned, or the documented ``error`` it raised; anything else propagates (fails)."""
    try:
        return read(path)
    except error as exc:
        assert str(path) in str(exc), f"the message must name the file: {exc}"
        return exc


def assert_same(fast: KeypointSequence, reference: KeypointSequence) -> None:
    assert fast.sequence_id == reference.sequence_id
    for field in ("frame_numbers", "timestamps_ms", "sizes", "points"):
        np.testing.assert_array_equal(getattr(fast, field), getattr(reference, field))  # NaN == NaN here


# --------------------------------------------------------------------------- frame files


@FILES
@given(text=frame_file_text())
def test_frame_files_are_read_or_refused_and_both_readers_agree(text: str) -> None:
    with scratch() as folder:
        path = folder / "clip.frames.jsonl"
        path.write_text(text, encoding="utf-8")
        reference = outcome(read_frames_jsonl, path, KeypointFileError)
        fast = outcome(read_frames, path, KeypointFileError)
    if isinstance(reference, KeypointFileError):
        assert isinstance(fast, KeypointFileError) and str(fast) == str(reference)
    else:
        assert isinstance(fast, KeypointSequence), f"the fast reader refused what the reference read: {fast}"
        assert_same(fast, reference)
        assert reference.points.shape == (len(reference), len(JOINTS), 5)


@FILES
@given(data=st.binary(max_size=300))
def test_frame_files_of_raw_bytes(data: bytes) -> None:
    with scratch() as folder:
        path = folder / "raw.frames.jsonl"
        path.write_bytes(data)
        reference = outcome(read_keypoints, path, KeypointFileError)
        fast = outcome(read_frames, path, KeypointFileError)
    assert type(fast) is type(reference)


VALID_LINE = '{"frame_number": 1, "image_dimensions": {"height": 1, "width": 1}}\n'


@pytest.mark.parametrize("text", ["null\n", "  null\n", VALID_LINE + "null\n", "\n\nnull\n{}\n"])
def test_a_null_line_is_refused_and_does_not_crash_the_process(tmp_path: Path, text: str) -> None:
    """Found by the property above: pyarrow 19's JSON reader segfaults on a block starting with null.

    Run in a child process, so a regression fails this test instead of killing the test run.
    """
    path = tmp_path / "null.frames.jsonl"
    path.write_text(text)
    script = (
        "import sys\nfrom device.keypoints import KeypointFileError\n"
        "from trainer.frame_files import read_frames\n"
        "try:\n    read_frames(sys.argv[1])\nexcept KeypointFileError as exc:\n    print(exc)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.startswith(str(path)) and "expected a JSON object" in child.stdout


@settings(max_examples=60, deadline=None)
@given(frames=st.lists(st.one_of(frame_records(), st.text(max_size=30)), min_size=1, max_size=4))
def test_seed_folders_are_read_or_refused(frames: list[Any]) -> None:
    with scratch() as folder:
        seed = folder / "walk"
        seed.mkdir()
        for number, frame in enumerate(frames, start=1):
            text = frame if isinstance(frame, str) else json.dumps(frame)
            (seed / f"keypoints-{number:04d}.json").write_text(text, encoding="utf-8")
        result = outcome(read_seed_folder, seed, KeypointFileError)
        if isinstance(result, KeypointSequence):
            assert result.sequence_id == "walk" and len(result) == len(frames)
            assert_same(outcome(read_frames, seed, KeypointFileError), result)


# --------------------------------------------------------------------------- BODY-25 tables

BODY25_HEADER = ["label", "accuracy"] + [f"{a}{i}" for i in range(len(BODY25_JOINTS)) for a in ("x", "y")]
CELLS = st.one_of(
    st.floats(-1000, 1000).map(repr),
    st.sampled_from(["0", "", "nan", "inf", "-1e999", "1e400", "x", " 3 "]),
    st.text(max_size=6),
)


@st.composite
def body25_tables(draw: st.DrawFn) -> str:
    header = list(BODY25_HEADER)
    if draw(st.integers(0, 6)) == 0:
        del header[draw(st.integers(0, len(header) - 1))]
    rows = []
    for _ in range(draw(st.integers(0, 4))):
        row = [draw(st.text(max_size=6)), "1"] + [draw(CELLS) for _ in range(50)]
        cut = draw(st.one_of(st.just(len(row)), st.integers(0, len(row) + 2)))
        rows.append(row[:cut] + ["7"] * max(0, cut - len(row)))
    lines = [",".join(header)] + [",".join(f'"{c}"' if "," in c or '"' in c else c for c in r) for r in rows]
    if draw(st.integers(0, 8)) == 0:
        lines.append('"' + "a" * 140_000 + '"')  # one field beyond csv's limit
    return "\n".join(lines) + "\n"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=body25_tables(), gzipped=st.booleans())
def test_body25_tables_are_imported_or_refused(text: str, gzipped: bool) -> None:
    with scratch() as folder:
        path = folder / ("poses.csv.gz" if gzipped else "poses.csv")
        data = text.encode("utf-8", "surrogatepass")
        path.write_bytes(gzip.compress(data) if gzipped else data)
        result = outcome(read_body25_table, path, KeypointFileError)
    if not isinstance(result, KeypointFileError):
        assert result.points.shape == (len(result.labels), len(JOINTS), 5)


@settings(max_examples=80, deadline=None)
@given(data=st.binary(max_size=200), cut=st.integers(0, 200), flip=st.integers(0, 400))
def test_gzipped_tables_that_are_truncated_or_corrupt_are_refused(data: bytes, cut: int, flip: int) -> None:
    packed = bytearray(gzip.compress(",".join(BODY25_HEADER).encode() + b"\n" + data))
    packed = packed[: len(packed) - cut % len(packed)] if cut else packed
    if packed:
        packed[flip % len(packed)] ^= 0x5A
    with scratch() as folder:
        path = folder / "poses.csv.gz"
        path.write_bytes(bytes(packed))
        outcome(read_body25_table, path, KeypointFileError)


# --------------------------------------------------------------------------- annotations


@st.composite
def annotation_documents(draw: st.DrawFn) -> Any:
    frame = maybe(st.integers(-3, 10**6), st.one_of(ODD, NUMBERS))
    item = st.fixed_dictionaries(
        {
            "label": maybe(st.sampled_from(["Left Step", "Right Step", " ", ""])),
            "metadata": maybe(
                st.fixed_dictionaries(
                    {"system": maybe(st.fixed_dictionaries({"frame": frame, "endFrame": frame}))}
                )
            ),
        }
    ).map(lambda d: present(**{k: present(**v) if isinstance(v, dict) else v for k, v in d.items()}))
    document = present(
        name=draw(maybe(st.text(min_size=1, max_size=10))),
        annotations=draw(maybe(st.lists(st.one_of(item, item, ODD), max_size=4))),
    )
    return draw(st.one_of(st.just(document), st.just(document), JSON_VALUES))


@FILES
@given(document=annotation_documents(), nesting=st.sampled_from([0, 0, 0, 100_000]))
def test_json_annotations_are_read_or_refused(document: Any, nesting: int) -> None:
    with scratch() as folder:
        path = folder / "clip.json"
        path.write_text("[" * nesting + json.dumps(document) + "]" * nesting, encoding="utf-8")
        result = outcome(read_json_annotations, path, AnnotationError)
    if not isinstance(result, AnnotationError):
        assert all(1 <= s.start <= s.end and s.label for s in result.spans)


@FILES
@given(
    rows=st.lists(
        st.lists(st.one_of(st.text(max_size=8), st.integers(-3, 99).map(str)), max_size=7), max_size=5
    ),
    header=st.one_of(st.just(list(CSV_HEADER)), st.lists(st.text(max_size=6), max_size=6)),
    bom=st.booleans(),
)
def test_csv_annotations_are_read_or_refused(rows: list[list[str]], header: list[str], bom: bool) -> None:
    with scratch() as folder:
        path = folder / "labels.csv"
        text = "\n".join(",".join(json.dumps(cell) for cell in row) for row in [header, *rows])
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8", "surrogatepass"))
        result = outcome(read_csv_annotations, path, AnnotationError)
    if not isinstance(result, AnnotationError):
        assert all(1 <= s.start <= s.end and s.label and s.column for s in result.spans)


TOML_VALUES = st.one_of(
    st.lists(
        st.sampled_from(['"Left Step"', '"Right Step"', '""', '" "', "1", "true", "[]"]), max_size=3
    ).map(lambda items: "[" + ", ".join(items) + "]"),
    st.sampled_from(['"text"', "3", "{}", "[[[[[[[[[[]]]]]]]]]]", "nan", "1979-05-27"]),
    st.integers(1, 5000).map(lambda n: "[" * n + "]" * n),
)


@FILES
@given(
    table=st.sampled_from(["[columns]", "[columns]", "[other]", "", "[columns.sub]", "columns = 3"]),
    entries=st.lists(
        st.tuples(st.sampled_from(["step_type", "video_id", '""', "a.b", "weight"]), TOML_VALUES), max_size=3
    ),
    noise=st.one_of(st.just(""), st.text(max_size=20)),
)
def test_label_mappings_are_read_or_refused(table: str, entries: list[tuple[str, str]], noise: str) -> None:
    text = "\n".join([table, *(f"{key} = {value}" for key, value in entries), noise])
    with scratch() as folder:
        path = folder / "labels.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        result = outcome(LabelMapping.load, path, AnnotationError)
    if not isinstance(result, AnnotationError):
        assert result.columns and all(labels for labels in result.columns.values())
