"""Annotations: which frames of which video carry which label, and in which label column.

Two file forms are read. The seed's JSON file describes one video (``name`` is the video file)
and lists ``annotations`` whose ``metadata.system.frame``/``endFrame`` bound a label (both ends
inclusive, 1-based); its labels say nothing about columns, so a :class:`LabelMapping` assigns
each label to a label column (Left/Right Step -> ``step_type``). The plain CSV form
(``video,start_frame,end_frame,column,label``) names the column on every row.

Annotation files are matched to keypoint files by video stem. Matching is where mistakes in a
labeling project show up, so :func:`match_annotations` and :func:`check_frame_ranges` return a
:class:`ValidationReport` of every problem found rather than stopping at the first. Errors are
the problems that would silently lose or corrupt labels (an annotated video without keypoints,
a label no column takes, two labels claiming one frame in one column, a range wholly outside its
video); warnings are the ones with a single sensible outcome (keypoints nobody annotated, a range
that runs past the last frame and is clipped, a label repeated over overlapping ranges).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from device.documents import read_document

CSV_HEADER: tuple[str, ...] = ("video", "start_frame", "end_frame", "column", "label")
ANNOTATION_SUFFIXES: tuple[str, ...] = (".json", ".csv")
RESERVED_COLUMNS = frozenset({"video_id", "first_frame", "last_frame"})
"""Dataset columns that a label column may not be called."""


class AnnotationError(ValueError):
    """An annotation or mapping file (or option) that cannot be used; the message names it."""


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class Span:
    """One annotated range as a file states it: frames ``start``..``end``, both inclusive."""

    video: str
    label: str
    start: int
    end: int
    column: str | None  # CSV rows name their column; JSON labels get theirs from a LabelMapping
    where: str  # file and position, for messages


@dataclass(frozen=True)
class AnnotationFile:
    """The spans of one file, and the videos it names (a JSON file names one even when empty)."""

    path: Path
    videos: tuple[str, ...]
    spans: tuple[Span, ...]


def _frame(value: object, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AnnotationError(f"{where}: {what} must be a whole frame number, got {value!r}")
    return value


def _span(video: str, label: object, start: int, end: int, column: str | None, where: str) -> Span:
    """A checked span: a non-empty label and a non-empty range of 1-based frames."""
    if not isinstance(label, str) or not label.strip():
        raise AnnotationError(f"{where}: the label must be a non-empty string, got {label!r}")
    if start < 1 or end < start:
        raise AnnotationError(f"{where}: frame range {start}-{end} is empty or starts before frame 1")
    return Span(video, label.strip(), start, end, column, where)


def read_json_annotations(path: str | Path) -> AnnotationFile:
    """Read the seed's JSON annotation file of one video."""
    path = Path(path)
    data = read_document(path, "JSON", AnnotationError)
    if not (
        isinstance(data, dict)
        and isinstance(data.get("name"), str)
        and data["name"].strip()
        and isinstance(data.get("annotations"), list)
    ):
        expected = 'an object with "name" (the video file) and an "annotations" list'
        raise AnnotationError(f"{path}: expected {expected}")
    video = data["name"].strip()
    spans = []
    for number, item in enumerate(data["annotations"], start=1):
        where = f"{path} (annotation {number})"
        try:
            label, system = item["label"], item["metadata"]["system"]
            start, end = system["frame"], system["endFrame"]
        except (KeyError, TypeError) as exc:
            raise AnnotationError(f"{where}: needs label and metadata.system.frame/endFrame") from exc
        first, last = _frame(start, "frame", where), _frame(end, "endFrame", where)
        spans.append(_span(video, label, first, last, None, where))
    return AnnotationFile(path, (video,), tuple(spans))


def _csv_int(text: str, what: str, where: str) -> int:
    try:
        return int(text)
    except ValueError as exc:
        raise AnnotationError(f"{where}: {what} must be a whole frame number, got {text!r}") from exc


def read_csv_annotations(path: str | Path) -> AnnotationFile:
    """Read a CSV annotation file (``video,start_frame,end_frame,column,label``; any videos)."""
    path = Path(path)
    spans = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets write a BOM
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != CSV_HEADER:
                raise AnnotationError(f"{path}: the first line must be {','.join(CSV_HEADER)}")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(CSV_HEADER):
                    raise AnnotationError(f"{where}: expected {len(CSV_HEADER)} cells, got {len(row)}")
                video, start, end, column, label = (cell.strip() for cell in row)
                if not video or not column:
                    raise AnnotationError(f"{where}: video and column must not be empty")
                first, last = _csv_int(start, "start_frame", where), _csv_int(end, "end_frame", where)
                spans.append(_span(video, label, first, last, column, where))
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read ({exc.strerror})") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise AnnotationError(f"{path}: not a readable CSV file ({exc})") from exc
    return AnnotationFile(path, tuple(dict.fromkeys(s.video for s in spans)), tuple(spans))


_READERS = {".json": read_json_annotations, ".csv": read_csv_annotations}


def read_annotations(path: str | Path) -> list[AnnotationFile]:
    """Read one annotation file, or every ``*.json`` and ``*.csv`` file of a folder (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _READERS)
        if not files:
            raise AnnotationError(f"{path}: no annotation files (*.json, *.csv)")
    elif path.is_file():
        if path.suffix.lower() not in _READERS:
            raise AnnotationError(f"{path}: not an annotation file (expected .json or .csv)")
        files = [path]
    else:
        raise AnnotationError(f"{path}: no such file or folder")
    return [_READERS[p.suffix.lower()](p) for p in files]


# --------------------------------------------------------------------------- label mapping


def _column_name(column: str, where: str) -> str:
    column = column.strip()
    if not column:
        raise AnnotationError(f"{where}: a label column needs a name")
    if column in RESERVED_COLUMNS:
        raise AnnotationError(f"{where}: {column!r} is a dataset column; choose another label column name")
    return column


@dataclass(frozen=True)
class LabelMapping:
    """Label column -> the labels it takes, in order (a label may feed more than one column)."""

    columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def columns_of(self, label: str) -> tuple[str, ...]:
        return tuple(column for column, labels in self.columns.items() if label in labels)

    def merged(self, other: LabelMapping) -> LabelMapping:
        """Both mappings' columns; a column in both takes the labels of both."""
        columns = {c: tuple(labels) for c, labels in self.columns.items()}
        for column, labels in other.columns.items():
            columns[column] = tuple(dict.fromkeys((*columns.get(column, ()), *labels)))
        return LabelMapping(columns)

    @classmethod
    def load(cls, path: str | Path) -> LabelMapping:
        """Read a TOML file with one table, ``[columns]``: ``column = ["Label", ...]``."""
        path = Path(path)
        data = read_document(path, "TOML", AnnotationError)
        table = data.get("columns")
        if set(data) != {"columns"} or not isinstance(table, dict) or not table:
            expected = 'exactly one table, [columns], holding column = ["Label", ...]'
            raise AnnotationError(f"{path}: expected {expected}")
        columns: dict[str, tuple[str, ...]] = {}
        for column, labels in table.items():
            strings = isinstance(labels, list) and all(isinstance(x, str) and x.strip() for x in labels)
            if not strings or not labels:
                raise AnnotationError(f"{path}: columns.{column} must be a non-empty list of label strings")
            columns[_column_name(column, str(path))] = tuple(dict.fromkeys(x.strip() for x in labels))
        return cls(columns)

    @classmethod
    def parse(cls, pairs: Iterable[str]) -> LabelMapping:
        """Mapping from ``LABEL=COLUMN`` strings (the last ``=`` separates: labels may contain one)."""
        columns: dict[str, tuple[str, ...]] = {}
        for pair in pairs:
            label, sep, column = pair.rpartition("=")
            if not sep or not label.strip():
                raise AnnotationError(f"--label {pair!r}: expected LABEL=COLUMN")
            column = _column_name(column, f"--label {pair!r}")
            columns[column] = tuple(dict.fromkeys((*columns.get(column, ()), label.strip())))
        return cls(columns)


# --------------------------------------------------------------------------- validation


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


class Problem(StrEnum):
    UNKNOWN_VIDEO = "unknown video"
    UNANNOTATED_VIDEO = "unannotated video"
    UNMAPPED_LABEL = "unmapped label"
    OUT_OF_RANGE = "range outside video"
    OVERLAP = "overlapping ranges"


@dataclass(frozen=True)
class Issue:
    problem: Problem
    severity: Severity
    message: str  # one line, naming the file

    def __str__(self) -> str:
        return self.message


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class ValidationError(AnnotationError):
    """Raised with a report that has errors; the message is one line, the report holds them all."""

    def __init__(self, report: ValidationReport) -> None:
        first, more = report.errors[0], len(report.errors) - 1
        super().__init__(f"{first}" + (f" (and {_count(more, 'more error')})" if more else ""))
        self.report = report


@dataclass(frozen=True)
class ValidationReport:
    """Every problem found in a set of annotations, in the order found."""

    issues: tuple[Issue, ...] = ()

    @property
    def errors(self) -> tuple[Issue, ...]:
        return tuple(i for i in self.issues if i.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Issue, ...]:
        return tuple(i for i in self.issues if i.severity is Severity.WARNING)

    def of(self, problem: Problem) -> tuple[Issue, ...]:
        return tuple(i for i in self.issues if i.problem is problem)

    def __add__(self, other: ValidationReport) -> ValidationReport:
        return ValidationReport(self.issues + other.issues)

    def raise_for_errors(self) -> None:
        if self.errors:
            raise ValidationError(self)


@dataclass(frozen=True)
class ValidationPolicy:
    """The two strict defaults a user may relax, each turning its errors into warnings."""

    skip_unknown_videos: bool = False  # annotations of videos without keypoints are ignored
    ignore_unmapped_labels: bool = False  # labels that no column takes are ignored


@dataclass(frozen=True)
class LabelRange:
    """A span resolved to its label column; frames ``start``..``end`` inclusive."""

    column: str
    label: str
    start: int
    end: int
    where: str


@dataclass(frozen=True)
class AnnotationSet:
    """Annotations matched to keypoint files: label columns, their labels, ranges per video stem."""

    columns: tuple[str, ...]
    categories: Mapping[str, tuple[str, ...]]
    ranges: Mapping[str, tuple[LabelRange, ...]]  # every annotated video, possibly with no ranges


def _stem(name: str, known: Mapping[str, Path]) -> str:
    """The keypoint stem a video name refers to: the name itself, or its file stem."""
    base = Path(name).name
    return base if base in known else Path(base).stem


def _resolve(span: Span, mapping: LabelMapping) -> tuple[str, ...]:
    """The columns a span's label goes to; empty when the mapping does not take it."""
    if span.column is None:
        return mapping.columns_of(span.label)
    if not mapping.columns or span.label in mapping.columns.get(span.column, ()):
        return (span.column,)
    return ()


def _label_columns(files: Sequence[AnnotationFile], mapping: LabelMapping) -> dict[str, tuple[str, ...]]:
    """The mapping's columns in its order; without one, the CSV columns with their labels sorted."""
    if mapping.columns:
        return dict(mapping.columns)
    found: dict[str, set[str]] = {}
    for span in (s for f in files for s in f.spans if s.column is not None):
        found.setdefault(span.column, set()).add(span.label)
    return {column: tuple(sorted(labels)) for column, labels in found.items()}


def _unmapped_issue(
    path: Path, label: str, column: str | None, count: int, mapping: LabelMapping, severity: Severity
) -> Issue:
    if not mapping.columns:
        what = f"label {label!r} has no label column: no label mapping was given"
    elif column is None:
        what = f"label {label!r} is in no column of the label mapping"
    else:
        what = f"label {label!r} in column {column!r} is not in the label mapping"
    ignored = "; ignored" if severity is Severity.WARNING else ""
    return Issue(Problem.UNMAPPED_LABEL, severity, f"{path}: {what} ({_count(count, 'range')}){ignored}")


def match_annotations(
    files: Sequence[AnnotationFile],
    keypoints: Mapping[str, Path],
    mapping: LabelMapping,
    policy: ValidationPolicy | None = None,
) -> tuple[AnnotationSet, ValidationReport]:
    """Match annotation files to keypoint files (stem -> path) and resolve labels to columns.

    Checks everything that needs no frames: unknown videos, unannotated keypoint files,
    unmapped labels, overlapping ranges. Frame ranges are checked per video once its frames are
    read (:func:`check_frame_ranges`).
    """
    policy = policy or ValidationPolicy()
    issues: list[Issue] = []
    ranges: dict[str, list[LabelRange]] = {}
    for file in files:
        issues += _match_videos(file, keypoints, ranges, policy)
        issues += _resolve_spans(file, keypoints, mapping, ranges, policy)
    unannotated = (path for stem, path in keypoints.items() if stem not in ranges)
    issues += [
        Issue(Problem.UNANNOTATED_VIDEO, Severity.WARNING, f"{path}: not annotated; its frames are unlabeled")
        for path in unannotated
    ]
    for stem, video_ranges in ranges.items():
        issues += _overlaps(stem, video_ranges)
    categories = _label_columns(files, mapping)
    matched = AnnotationSet(tuple(categories), categories, {s: tuple(r) for s, r in ranges.items()})
    return matched, ValidationReport(tuple(issues))


def _match_videos(
    file: AnnotationFile,
    keypoints: Mapping[str, Path],
    ranges: dict[str, list[LabelRange]],
    policy: ValidationPolicy,
) -> list[Issue]:
    """Register the file's videos that have keypoints; report the ones that do not."""
    severity = Severity.WARNING if policy.skip_unknown_videos else Severity.ERROR
    ignored = "; ignored" if severity is Severity.WARNING else ""
    issues = []
    for name in file.videos:
        stem = _stem(name, keypoints)
        if stem in keypoints:
            ranges.setdefault(stem, [])
        else:
            message = f"{file.path}: no keypoint file for video {name!r} (looked for {stem!r}){ignored}"
            issues.append(Issue(Problem.UNKNOWN_VIDEO, severity, message))
    return issues


def _resolve_spans(
    file: AnnotationFile,
    keypoints: Mapping[str, Path],
    mapping: LabelMapping,
    ranges: dict[str, list[LabelRange]],
    policy: ValidationPolicy,
) -> list[Issue]:
    """Add the file's spans to their videos' ranges, one per column; report unmapped labels."""
    severity = Severity.WARNING if policy.ignore_unmapped_labels else Severity.ERROR
    unmapped: dict[tuple[str, str | None], int] = {}
    for span in file.spans:
        columns = _resolve(span, mapping)
        if not columns:
            unmapped[span.label, span.column] = unmapped.get((span.label, span.column), 0) + 1
        stem = _stem(span.video, keypoints)
        if stem in keypoints:
            ranges[stem] += [LabelRange(c, span.label, span.start, span.end, span.where) for c in columns]
    return [
        _unmapped_issue(file.path, label, column, count, mapping, severity)
        for (label, column), count in unmapped.items()
    ]


def _overlaps(stem: str, ranges: Sequence[LabelRange]) -> list[Issue]:
    """Ranges of one column of one video that share frames: an error unless the label is the same."""
    issues = []
    by_column: dict[str, list[LabelRange]] = {}
    for r in ranges:
        by_column.setdefault(r.column, []).append(r)
    for column, column_ranges in by_column.items():
        ordered = sorted(column_ranges, key=lambda r: (r.start, r.end))
        reach = ordered[0]  # the range reaching furthest so far
        for r in ordered[1:]:
            if r.start <= reach.end:
                same = r.label == reach.label
                message = (
                    f"{r.where}: {r.label!r} frames {r.start}-{r.end} overlaps {reach.label!r} frames "
                    f"{reach.start}-{reach.end} ({reach.where}) in column {column!r} of video {stem!r}"
                )
                if same:
                    issues.append(Issue(Problem.OVERLAP, Severity.WARNING, message + "; merged"))
                else:
                    issues.append(Issue(Problem.OVERLAP, Severity.ERROR, message))
            if r.end > reach.end:
                reach = r
    return issues


def check_frame_ranges(
    stem: str, ranges: Sequence[LabelRange], frame_numbers: np.ndarray
) -> ValidationReport:
    """Ranges against the frames a video has: wholly outside is an error, partly outside a warning."""
    if not len(ranges):
        return ValidationReport()
    first, last = (int(frame_numbers[0]), int(frame_numbers[-1])) if len(frame_numbers) else (1, 0)
    issues = []
    for r in ranges:
        if r.start >= first and r.end <= last:
            continue
        message = (
            f"{r.where}: {r.label!r} frames {r.start}-{r.end} lie outside video {stem!r} "
            f"(frames {first}-{last})"
        )
        if r.start > last or r.end < first:
            issues.append(Issue(Problem.OUT_OF_RANGE, Severity.ERROR, message))
        else:
            clipped = f"; clipped to {max(r.start, first)}-{min(r.end, last)}"
            issues.append(Issue(Problem.OUT_OF_RANGE, Severity.WARNING, message + clipped))
    return ValidationReport(tuple(issues))


# --------------------------------------------------------------------------- label arrays


def _ranges_to_indices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """All of ``starts[k] .. starts[k] + lengths[k] - 1``, concatenated, without a Python loop."""
    ends = np.cumsum(lengths)
    return np.arange(ends[-1] if len(ends) else 0) + np.repeat(starts - (ends - lengths), lengths)


def label_codes(
    ranges: Sequence[LabelRange],
    frame_numbers: np.ndarray,
    columns: Sequence[str],
    categories: Mapping[str, Sequence[str]],
) -> np.ndarray:
    """Per label column and frame, the index of the frame's label in its column's categories.

    Returns ``(len(columns), frames)`` int32, -1 where a frame has no label. ``frame_numbers``
    must increase; ranges reaching past the video are clipped. All ranges are written in one
    fancy-indexed assignment (ranges of one column must not overlap with different labels,
    which :func:`match_annotations` reports as an error).
    """
    codes = np.full((len(columns), len(frame_numbers)), -1, dtype=np.int32)
    if not ranges:
        return codes
    row_of = {c: i for i, c in enumerate(columns)}
    rows = np.array([row_of[r.column] for r in ranges])
    values = np.array([categories[r.column].index(r.label) for r in ranges], dtype=np.int32)
    lo = np.searchsorted(frame_numbers, [r.start for r in ranges], side="left")
    hi = np.searchsorted(frame_numbers, [r.end for r in ranges], side="right")
    lengths = np.maximum(hi - lo, 0)
    codes[np.repeat(rows, lengths), _ranges_to_indices(lo, lengths)] = np.repeat(values, lengths)
    return codes
