"""``trainer extract`` end to end: real videos, real MediaPipe, real worker processes."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, REPO
from tqdm import tqdm

from device.keypoints import read_frames_jsonl
from device.pose import PoseOptions, main_pose
from device.sources import SourceError, VideoFileSource
from trainer.__main__ import main
from trainer.extract import (
    ExtractOptions,
    FrameProgress,
    Outcome,
    announced_frames,
    extract_video,
    find_videos,
)
from trainer.frame_columns import CopyState, check_copy

VIDEOS = DATA / "videos"
SQUATS, DANCE = VIDEOS / "squats.mp4", VIDEOS / "dance.mp4"
FRAME_COUNTS = {"squats": 65, "dance": 102}
RECORD_KEYS = {
    "sequence_id",
    "sequence_source",
    "frame_number",
    "timestamp_ms",
    "image_dimensions",
    "joint_positions",
}


@pytest.fixture(scope="module")
def extracted(
    tmp_path_factory: pytest.TempPathFactory, task_path: Path
) -> tuple[Path, subprocess.CompletedProcess]:
    """Both videos extracted once by the real command line, two worker processes."""
    out = tmp_path_factory.mktemp("extracted")
    command = [sys.executable, "-m", "trainer", "extract", str(SQUATS), str(DANCE), "--out", str(out)]
    command += ["--workers", "2", "--pose-model", str(task_path)]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    return out, completed


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_extracts_every_decoded_frame_of_each_video(extracted) -> None:
    out, completed = extracted
    assert completed.returncode == 0, completed.stderr
    assert "2 done, 0 skipped, 0 failed; 167 frames" in completed.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == ["dance.frames.arrow", "dance.frames.jsonl", "squats.frames.arrow", "squats.frames.jsonl"]
    for stem, count in FRAME_COUNTS.items():
        records = _lines(out / f"{stem}.frames.jsonl")
        assert [r["frame_number"] for r in records] == list(range(1, count + 1))
        assert all(set(r) >= RECORD_KEYS and r["sequence_id"] == stem for r in records)
        timestamps = [r["timestamp_ms"] for r in records]
        assert timestamps == sorted(timestamps) and timestamps[0] == 0
        sequence = read_frames_jsonl(out / f"{stem}.frames.jsonl")
        assert sequence.has_person.mean() > 0.9, f"{stem}: people found in most frames"
        joint = records[0]["joint_positions"]["nose"]
        width = records[0]["image_dimensions"]["width"]
        assert joint["x_normalized"] == pytest.approx(joint["x"] / width)


def test_each_frame_file_gets_a_fresh_columnar_copy_with_the_same_keypoints(extracted) -> None:
    out, completed = extracted
    assert completed.returncode == 0, completed.stderr
    for stem in FRAME_COUNTS:
        copied, how = check_copy(out / f"{stem}.frames.jsonl")
        assert how.state is CopyState.FRESH
        reference = read_frames_jsonl(out / f"{stem}.frames.jsonl")
        assert copied.sequence_id == reference.sequence_id == stem
        for field in ("frame_numbers", "timestamps_ms", "sizes", "points"):
            assert getattr(copied, field).tobytes() == getattr(reference, field).tobytes(), field


def finished_squats_and_stale_dance(out: Path, extracted_dir: Path) -> tuple[Path, Path]:
    """An interrupted batch in ``out``: squats finished (an old mtime, to see it is left alone), dance
    half-written. Returns (finished file, stale ``.partial``)."""
    finished = out / "squats.frames.jsonl"
    shutil.copy(extracted_dir / "squats.frames.jsonl", finished)
    os.utime(finished, ns=(1_000_000_000, 1_000_000_000))
    stale = out / "dance.frames.jsonl.partial"
    stale.write_text('{"frame_number": 1, "truncated')
    return finished, stale


def test_resume_skips_finished_files_and_redoes_partial_ones(
    extracted, tmp_path: Path, task_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    finished, stale = finished_squats_and_stale_dance(tmp_path, extracted[0])

    status = main(
        ["extract", str(SQUATS), str(DANCE), "--out", str(tmp_path), "--pose-model", str(task_path)]
    )

    assert status == 0
    assert "1 done, 1 skipped, 0 failed; 102 frames" in capsys.readouterr().out
    assert finished.stat().st_mtime_ns == 1_000_000_000, "a finished file is left alone"
    assert not stale.exists()
    assert len(_lines(tmp_path / "dance.frames.jsonl")) == FRAME_COUNTS["dance"]


def test_overwrite_redoes_finished_files(tmp_path: Path, task_path: Path) -> None:
    options = ExtractOptions(PoseOptions(model_path=task_path))
    finished = tmp_path / "squats.frames.jsonl"
    finished.write_text("old\n")
    assert extract_video(SQUATS, tmp_path, options).outcome is Outcome.SKIPPED

    result = extract_video(SQUATS, tmp_path, ExtractOptions(overwrite=True, pose=options.pose))
    assert result.outcome is Outcome.DONE and result.output == finished
    assert result.frames == FRAME_COUNTS["squats"] and result.frames_with_person == result.frames
    assert len(_lines(finished)) == FRAME_COUNTS["squats"]


def broken_videos(folder: Path) -> list[str]:
    """Two files named like videos that are not (noise, text); returns the failure lines they must give."""
    (folder / "noise.mp4").write_bytes(np.random.default_rng(1).bytes(50_000))
    (folder / "notes.mp4").write_text("meeting notes, not a video\n")
    return [
        f"trainer extract: {folder / name}: cannot open as a video" for name in ("noise.mp4", "notes.mp4")
    ]


def failure_lines(err: str) -> list[str]:
    """The per-video failure lines of a batch's stderr, sorted (workers finish in any order)."""
    return sorted(line for line in err.splitlines() if line.startswith("trainer extract:"))


def test_corrupt_files_are_reported_and_the_batch_goes_on(
    tmp_path: Path, task_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(SQUATS, videos / "squats.MP4")  # extensions match case-insensitively
    expected_failures = broken_videos(videos)
    (videos / "readme.txt").write_text("ignored: not a video extension\n")
    out = tmp_path / "out"

    status = main(["extract", str(videos), "--out", str(out), "--pose-model", str(task_path)])

    captured = capsys.readouterr()
    assert status == 1
    assert failure_lines(captured.err) == expected_failures
    assert "1 done, 0 skipped, 2 failed" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["squats.frames.arrow", "squats.frames.jsonl"]


def _empty_dir(tmp: Path) -> list[str]:
    (tmp / "empty").mkdir()
    return [str(tmp / "empty"), "--out", str(tmp / "out")]


def _missing_input(tmp: Path) -> list[str]:
    return [str(tmp / "nowhere.mp4"), "--out", str(tmp / "out")]


def _out_is_a_file(tmp: Path) -> list[str]:
    (tmp / "out").write_text("")
    return [str(SQUATS), "--out", str(tmp / "out")]


def _same_stem_twice(tmp: Path) -> list[str]:
    (tmp / "other").mkdir()
    shutil.copy(SQUATS, tmp / "other" / "squats.webm")
    return [str(SQUATS), str(tmp / "other"), "--out", str(tmp / "out")]


def _corrupt_pose_model(tmp: Path) -> list[str]:
    (tmp / "model.task").write_bytes(b"not a zip")
    return [str(SQUATS), "--out", str(tmp / "out"), "--pose-model", str(tmp / "model.task")]


def _no_workers(tmp: Path) -> list[str]:
    return [str(SQUATS), "--out", str(tmp / "out"), "--workers", "0"]


@pytest.mark.parametrize(
    ("make_args", "expected"),
    [
        (_empty_dir, "no video files"),
        (_missing_input, "nowhere.mp4: no such file"),
        (_out_is_a_file, "is a file, expected a directory"),
        (_same_stem_twice, "would both write squats.frames.jsonl"),
        (_corrupt_pose_model, "model.task: not a pose landmarker .task bundle"),
        (_no_workers, "--workers 0: expected at least 1"),
    ],
)
def test_bad_arguments_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_args, expected: str
) -> None:
    status = main(["extract", *make_args(tmp_path)])

    assert_usage_error(status, capsys.readouterr().err, expected)
    assert not (tmp_path / "out").is_dir(), "nothing is written on a usage error"


def assert_usage_error(status: int, err: str, expected: str) -> None:
    """A user mistake: exit status 2 and one line on stderr that says what is wrong."""
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("trainer extract: error: ") and expected in err, err


def test_missing_option_exits_2_without_traceback(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "trainer", "extract", str(SQUATS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert "--out" in completed.stderr and "Traceback" not in completed.stderr


def test_finds_videos_once_each(tmp_path: Path) -> None:
    for name in ("b.mkv", "a.M4V", "c.json"):
        (tmp_path / name).write_bytes(b"")
    found = find_videos([tmp_path, tmp_path / "a.M4V"])
    assert [p.name for p in found] == ["a.M4V", "b.mkv"]


def test_the_progress_total_is_every_videos_frames_before_any_starts(tmp_path: Path) -> None:
    (tmp_path / "broken.mp4").write_bytes(b"\x00 not a video")
    announced = [announced_frames(v) for v in (SQUATS, DANCE, VIDEOS / "example_video.webm")]
    assert announced == [65, 102, 382]  # from the containers' headers, nothing decoded
    assert announced_frames(tmp_path / "broken.mp4") == 0  # its worker reports it as failed

    bar = tqdm(total=0, file=io.StringIO())
    progress = FrameProgress(bar, {0: 65, 1: 102})
    assert bar.total == 167
    progress.advance(1, 10, 102)  # the second video starts first: the total does not move
    progress.advance(0, 65, 65)
    assert bar.total == 167 and bar.n == 75
    progress.finish(1, 80)  # a video that ends short takes the total down with it, so the bar ends full
    progress.finish(0, 65)
    assert bar.total == bar.n == 145


def test_video_file_source_frames() -> None:
    with VideoFileSource(DANCE) as source:
        frames = list(source)
    assert (source.width, source.height, source.fps, source.frame_count) == (600, 600, 20.0, 102)
    assert [f.frame_number for f in frames] == list(range(1, 103))
    assert frames[1].timestamp_ms == pytest.approx(50.0)
    assert frames[0].image.shape == (600, 600, 3) and not frames[0].image.flags.writeable


@pytest.mark.parametrize("content", [None, b"", b"\x00\x01 not a video"], ids=["missing", "empty", "garbage"])
def test_unreadable_video_is_a_source_error(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "clip.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SourceError, match="clip.mp4"):
        VideoFileSource(path)


def test_main_pose_is_the_largest_person() -> None:
    small = np.zeros((33, 5))
    small[:, :2] = np.linspace(0, 10, 33)[:, None]
    large = small.copy()
    large[:, :2] *= 20
    assert np.array_equal(main_pose(np.stack([small, large])), large)
    assert main_pose(np.empty((0, 33, 5))) is None
