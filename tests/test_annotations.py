"""Annotation files, label mappings, validation and label arrays (``device.annotations``).

The seed's real annotation file and the shipped example mapping are read in place; the other
files are small ones written per test. The CLI side of validation (exit status, one line on
stderr, nothing written) is tested in test_dataset.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from device.annotations import (
    AnnotationError,
    LabelMapping,
    LabelRange,
    Problem,
    Severity,
    ValidationError,
    ValidationPolicy,
    check_frame_ranges,
    label_codes,
    match_annotations,
    read_annotations,
    read_csv_annotations,
    read_json_annotations,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_MAPPING = REPO / "examples" / "example_video.labels.toml"
STEP, TRANSFER = "step_type", "weight_transfer_type"
KEYPOINTS = {"example_video": Path("kp/example_video.frames.jsonl")}  # matching needs names only
HEADER = "video,start_frame,end_frame,column,label\n"
FLOAT_FRAME = {"frame": 1.5, "endFrame": 3}


@pytest.fixture(scope="module")
def example_json(data_dir: Path) -> Path:
    return data_dir / "annotations" / "example_video.json"


@pytest.fixture(scope="module")
def mapping() -> LabelMapping:
    return LabelMapping.load(EXAMPLE_MAPPING)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def seed_json(path: Path, video: str, *spans: tuple[str, int, int]) -> Path:
    """A seed-format annotation file with (label, frame, endFrame) spans."""
    annotations = [
        {"label": label, "metadata": {"system": {"startTime": 0, "endTime": 1, "frame": a, "endFrame": b}}}
        for label, a, b in spans
    ]
    return write(path, json.dumps({"name": video, "annotations": annotations}))


# --------------------------------------------------------------------------- files


def test_reads_the_seed_json_file(example_json: Path) -> None:
    file = read_json_annotations(example_json)
    assert file.videos == ("example_video.webm",)
    assert len(file.spans) == 12
    first = file.spans[0]
    assert (first.label, first.start, first.end, first.column) == ("Right Step", 7, 49, None)
    assert min(s.start for s in file.spans) == 7 and max(s.end for s in file.spans) == 237


def test_reads_csv_files_with_their_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path / "labels.csv",
        "\ufeff" + HEADER + "walk.mp4,1,10,step_type,Left Step\n\nrun,5,5,pace, fast \n",
    )
    file = read_csv_annotations(path)
    assert file.videos == ("walk.mp4", "run")
    assert [(s.video, s.start, s.end, s.column, s.label) for s in file.spans] == [
        ("walk.mp4", 1, 10, "step_type", "Left Step"),
        ("run", 5, 5, "pace", "fast"),
    ]
    assert file.spans[1].where == f"{path}:4"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("video,start,end,column,label\n", "the first line must be video,start_frame,end_frame,column,label"),
        (HEADER + "w,1,x,c,L\n", ":2: end_frame must be a whole frame number"),
        (HEADER + "w,9,3,c,L\n", ":2: frame range 9-3 is empty"),
        (HEADER + "w,0,3,c,L\n", "starts before frame 1"),
        (HEADER + "w,1,3,c\n", ":2: expected 5 cells, got 4"),
        (HEADER + "w,1,3,,L\n", "video and column must not be empty"),
        (HEADER + "w,1,3,c,\n", "the label must be a non-empty string"),
    ],
)
def test_bad_csv_files_are_named_with_their_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(AnnotationError, match="bad.csv") as caught:
        read_csv_annotations(path)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"name": "v.mp4", "annotations": [', "not valid JSON"),
        ('["v.mp4"]', 'expected an object with "name"'),
        ('{"name": "v.mp4", "annotations": [{"label": "L"}]}', "(annotation 1): needs label and metadata"),
        (
            json.dumps({"name": "v", "annotations": [{"label": "L", "metadata": {"system": FLOAT_FRAME}}]}),
            "frame must be a whole frame number",
        ),
    ],
)
def test_bad_json_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(AnnotationError, match="bad.json") as caught:
        read_json_annotations(write(tmp_path / "bad.json", text))
    assert message in str(caught.value)


def test_a_folder_gives_its_json_and_csv_files_in_name_order(tmp_path: Path, example_json: Path) -> None:
    seed_json(tmp_path / "b.json", "b.mp4", ("L", 1, 2))
    write(tmp_path / "a.csv", HEADER + "a,1,2,c,L\n")
    write(tmp_path / "notes.txt", "not an annotation")
    assert [f.path.name for f in read_annotations(tmp_path)] == ["a.csv", "b.json"]
    assert [f.path for f in read_annotations(example_json)] == [example_json]
    with pytest.raises(AnnotationError, match="missing: no such file or folder"):
        read_annotations(tmp_path / "missing")


def test_an_empty_folder_or_a_wrong_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match=r"no annotation files \(\*\.json, \*\.csv\)"):
        read_annotations(tmp_path)
    with pytest.raises(AnnotationError, match="expected .json or .csv"):
        read_annotations(write(tmp_path / "notes.txt", "x"))


# --------------------------------------------------------------------------- mapping


def test_the_example_mapping_assigns_the_seed_labels(mapping: LabelMapping) -> None:
    assert mapping.columns == {
        STEP: ("Left Step", "Right Step"),
        TRANSFER: ("Successful Weight Transfer", "Failure Weight Transfer"),
    }
    assert mapping.columns_of("Left Step") == (STEP,)
    assert mapping.columns_of("Jump") == ()


def test_command_line_pairs_parse_and_merge(mapping: LabelMapping) -> None:
    parsed = LabelMapping.parse(["Left Step=step_type", "a=b=c", " Hop = moves"])
    assert parsed.columns == {STEP: ("Left Step",), "c": ("a=b",), "moves": ("Hop",)}
    merged = mapping.merged(LabelMapping.parse(["Hop=step_type"]))
    assert merged.columns[STEP] == ("Left Step", "Right Step", "Hop")
    assert merged.columns_of("Hop") == (STEP,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("step = [", "not valid TOML"),
        ('step_type = ["Left Step"]', "expected exactly one table, [columns]"),
        ('[columns]\nstep_type = "Left Step"', "columns.step_type must be a non-empty list"),
        ("[columns]\nstep_type = []", "columns.step_type must be a non-empty list"),
        ('[columns]\nvideo_id = ["Left Step"]', "'video_id' is a dataset column"),
        ('[columns]\nstep_type = ["L"]\n[other]\nx = 1', "expected exactly one table"),
    ],
)
def test_bad_mapping_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(AnnotationError, match="labels.toml") as caught:
        LabelMapping.load(write(tmp_path / "labels.toml", text))
    assert message in str(caught.value)


@pytest.mark.parametrize("pair", ["Left Step", "=step_type", "Left Step=", "Left Step=last_frame"])
def test_bad_label_options_are_refused(pair: str) -> None:
    with pytest.raises(AnnotationError, match="--label"):
        LabelMapping.parse([pair])


# --------------------------------------------------------------------------- validation


def test_the_seed_example_matches_cleanly(example_json: Path, mapping: LabelMapping) -> None:
    matched, report = match_annotations(read_annotations(example_json), KEYPOINTS, mapping)
    assert report.issues == ()
    assert matched.columns == (STEP, TRANSFER)
    assert matched.categories[STEP] == ("Left Step", "Right Step")
    ranges = matched.ranges["example_video"]
    assert len(ranges) == 12
    assert sum(r.column == STEP for r in ranges) == 6
    assert LabelRange(STEP, "Right Step", 7, 49, f"{example_json} (annotation 1)") in ranges


def test_a_video_without_keypoints_is_an_error_unless_skipped(tmp_path: Path, mapping: LabelMapping) -> None:
    files = [read_json_annotations(seed_json(tmp_path / "ghost.json", "ghost.webm", ("Left Step", 1, 5)))]
    matched, report = match_annotations(files, KEYPOINTS, mapping)
    (issue,) = report.of(Problem.UNKNOWN_VIDEO)
    assert issue.severity is Severity.ERROR
    expected = "no keypoint file for video 'ghost.webm' (looked for 'ghost')"
    assert str(issue) == f"{tmp_path / 'ghost.json'}: {expected}"
    assert "ghost" not in matched.ranges
    with pytest.raises(ValidationError) as caught:
        report.raise_for_errors()
    assert str(caught.value) == str(issue)
    assert caught.value.report is report

    _, lenient = match_annotations(files, KEYPOINTS, mapping, ValidationPolicy(skip_unknown_videos=True))
    assert [i.severity for i in lenient.of(Problem.UNKNOWN_VIDEO)] == [Severity.WARNING]
    assert str(lenient.warnings[0]).endswith("; ignored")
    lenient.raise_for_errors()  # warnings only


def test_keypoints_without_annotations_are_a_warning(example_json: Path, mapping: LabelMapping) -> None:
    keypoints = {**KEYPOINTS, "squats": Path("kp/squats.frames.jsonl")}
    _, report = match_annotations(read_annotations(example_json), keypoints, mapping)
    (issue,) = report.issues
    assert (issue.problem, issue.severity) == (Problem.UNANNOTATED_VIDEO, Severity.WARNING)
    assert str(issue).startswith("kp/squats.frames.jsonl: not annotated")


def test_labels_outside_the_mapping_are_an_error_unless_ignored(example_json: Path) -> None:
    steps_only = LabelMapping.parse(["Left Step=step_type", "Right Step=step_type"])
    files = read_annotations(example_json)
    matched, report = match_annotations(files, KEYPOINTS, steps_only)
    assert sorted(str(i).split(": ", 1)[1] for i in report.errors) == [
        "label 'Failure Weight Transfer' is in no column of the label mapping (1 range)",
        "label 'Successful Weight Transfer' is in no column of the label mapping (5 ranges)",
    ]
    with pytest.raises(ValidationError, match=r"\(and 1 more error\)$"):
        report.raise_for_errors()

    policy = ValidationPolicy(ignore_unmapped_labels=True)
    matched, report = match_annotations(files, KEYPOINTS, steps_only, policy)
    assert not report.errors and len(report.warnings) == 2
    assert matched.columns == (STEP,) and len(matched.ranges["example_video"]) == 6


def test_json_labels_need_a_mapping(example_json: Path) -> None:
    _, report = match_annotations(read_annotations(example_json), KEYPOINTS, LabelMapping())
    assert len(report.errors) == 4
    assert all("has no label column: no label mapping was given" in str(i) for i in report.errors)


def test_csv_columns_are_checked_against_a_given_mapping(tmp_path: Path, mapping: LabelMapping) -> None:
    csv = write(
        tmp_path / "a.csv",
        HEADER + "example_video,1,5,step_type,Left Step\n"
        "example_video,6,9,step_type,Jump\n"
        "example_video,6,9,pace,fast\n",
    )
    files = read_annotations(csv)
    _, report = match_annotations(files, KEYPOINTS, mapping)
    assert sorted(str(i).split(": ", 1)[1] for i in report.errors) == [
        "label 'Jump' in column 'step_type' is not in the label mapping (1 range)",
        "label 'fast' in column 'pace' is not in the label mapping (1 range)",
    ]
    matched, report = match_annotations(files, KEYPOINTS, LabelMapping())  # no mapping: the CSV rules
    assert report.issues == ()
    assert matched.categories == {STEP: ("Jump", "Left Step"), "pace": ("fast",)}


def test_overlapping_ranges_in_one_column(tmp_path: Path, mapping: LabelMapping) -> None:
    path = seed_json(
        tmp_path / "example_video.json",
        "example_video.webm",
        ("Left Step", 1, 20),
        ("Successful Weight Transfer", 1, 40),  # another column: no conflict
        ("Right Step", 15, 30),
        ("Right Step", 25, 35),
    )
    _, report = match_annotations(read_annotations(path), KEYPOINTS, mapping)
    errors, warnings = report.errors, report.warnings
    assert [i.problem for i in report.issues] == [Problem.OVERLAP, Problem.OVERLAP]
    assert len(errors) == 1 and len(warnings) == 1
    assert str(errors[0]) == (
        f"{path} (annotation 3): 'Right Step' frames 15-30 overlaps 'Left Step' frames 1-20 "
        f"({path} (annotation 1)) in column 'step_type' of video 'example_video'"
    )
    assert str(warnings[0]).endswith("; merged")


def test_ranges_are_checked_against_the_video_frames() -> None:
    frames = np.arange(1, 383)
    inside = LabelRange(STEP, "Left Step", 1, 382, "a.csv:2")
    partly = LabelRange(STEP, "Left Step", 370, 400, "a.csv:3")
    outside = LabelRange(STEP, "Left Step", 383, 390, "a.csv:4")
    assert check_frame_ranges("v", [inside], frames).issues == ()
    report = check_frame_ranges("v", [inside, partly, outside], frames)
    assert [(i.problem, i.severity) for i in report.issues] == [
        (Problem.OUT_OF_RANGE, Severity.WARNING),
        (Problem.OUT_OF_RANGE, Severity.ERROR),
    ]
    assert str(report.warnings[0]) == (
        "a.csv:3: 'Left Step' frames 370-400 lie outside video 'v' (frames 1-382); clipped to 370-382"
    )
    assert str(report.errors[0]) == "a.csv:4: 'Left Step' frames 383-390 lie outside video 'v' (frames 1-382)"


# --------------------------------------------------------------------------- label arrays


def test_label_arrays_of_the_seed_example(example_json: Path, mapping: LabelMapping) -> None:
    matched, _ = match_annotations(read_annotations(example_json), KEYPOINTS, mapping)
    ranges = matched.ranges["example_video"]
    codes = label_codes(ranges, np.arange(1, 383), matched.columns, matched.categories)
    assert codes.shape == (2, 382) and codes.dtype == np.int32
    step, transfer = codes
    left, right = 0, 1
    assert (step == left).sum() == 122 and (step == right).sum() == 105
    assert (transfer == 0).sum() == 181 and (transfer == 1).sum() == 46
    # frames 7..49 inclusive, 1-based: indices 6..48
    assert step[5] == -1 and step[6] == right and step[48] == right and step[49] == -1
    assert (codes[:, 237:] == -1).all()


def test_label_arrays_follow_frame_numbers_and_clip() -> None:
    ranges = [LabelRange("c", "b", 8, 12, "x"), LabelRange("c", "a", 1, 6, "x")]
    codes = label_codes(ranges, np.arange(5, 11), ["c"], {"c": ("a", "b")})  # frames 5..10
    assert codes.tolist() == [[0, 0, -1, 1, 1, 1]]
    assert label_codes([], np.arange(1, 4), ["c"], {"c": ("a",)}).tolist() == [[-1, -1, -1]]


@given(
    frames=st.integers(1, 60),
    cuts=st.lists(st.integers(1, 70), min_size=0, max_size=12, unique=True),
    labels=st.lists(st.integers(0, 2), min_size=6, max_size=6),
)
def test_label_arrays_equal_a_frame_by_frame_reference(
    frames: int, cuts: list[int], labels: list[int]
) -> None:
    """Non-overlapping ranges between sorted cut points, labeled in turn, against a plain loop."""
    bounds = sorted(cuts)
    ranges = [
        LabelRange("c", "abc"[labels[k % 6]], a, b - 1, "x")
        for k, (a, b) in enumerate(zip(bounds[::2], bounds[1::2], strict=False))
        if b - 1 >= a
    ]
    expected = [-1] * frames
    for r in ranges:
        for n in range(r.start, min(r.end, frames) + 1):
            expected[n - 1] = "abc".index(r.label)
    codes = label_codes(ranges, np.arange(1, frames + 1), ["c"], {"c": ("a", "b", "c")})
    assert codes[0].tolist() == expected
