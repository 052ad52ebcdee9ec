"""``trainer extract``: videos -> ``<stem>.frames.jsonl`` keypoint files, one process per core.

Each video is decoded by :class:`device.sources.VideoFileSource` and run through
:class:`device.pose.PoseEstimator`, the very code the kiosk runs, so training keypoints match
serving keypoints. Every decoded frame gets a line, with empty ``joint_positions`` when nobody is
in view, so frame numbers line up with annotations.

A batch is resumable: a finished frame file is written atomically (``.partial`` then rename) and
skipped next time; one unreadable video is reported and the rest carry on.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from queue import Empty

import cv2
from tqdm import tqdm

from device.cli import Command, ExitStatus, UsageError
from device.keypoints import FRAMES_SUFFIX, frame_record, write_frames_jsonl
from device.pose import (
    PoseEstimator,
    PoseModelError,
    PoseOptions,
    check_task_file,
    main_pose,
    offline_task_path,
)
from device.sources import SourceError, VideoFileSource

VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v"})
"""Searched for in input directories (case-insensitive); files given by name are tried anyway."""


class Outcome(StrEnum):
    DONE = "done"
    SKIPPED = "skipped"  # a finished frame file was already there
    FAILED = "failed"


@dataclass(frozen=True)
class ExtractOptions:
    """What to extract and whether to redo finished videos."""

    pose: PoseOptions = field(default_factory=PoseOptions)
    overwrite: bool = False


@dataclass(frozen=True)
class ExtractResult:
    """What happened to one video; plain data, so it travels between processes (and Dask workers)."""

    video: Path
    output: Path
    outcome: Outcome
    frames: int = 0
    frames_with_person: int = 0
    seconds: float = 0.0
    error: str = ""


FrameCallback = Callable[[int, int], None]
"""Called after each frame with (frame_number, frames the container announces, 0 if unknown)."""


def output_path(video: Path, out_dir: Path) -> Path:
    return out_dir / f"{video.stem}{FRAMES_SUFFIX}"


def _already_done(video: Path, out_dir: Path, options: ExtractOptions) -> ExtractResult | None:
    """The skip result for a video whose frame file exists, unless overwriting.

    Only the final name counts: ``write_frames_jsonl`` renames ``.partial`` into place as its
    last step, so a leftover ``.partial`` from an interrupted run is never taken for finished.
    """
    output = output_path(video, out_dir)
    if options.overwrite or not output.is_file():
        return None
    return ExtractResult(video, output, Outcome.SKIPPED)


def extract_video(
    video: str | Path,
    out_dir: str | Path,
    options: ExtractOptions,
    on_frame: FrameCallback | None = None,
) -> ExtractResult:
    """Write ``out_dir/<stem>.frames.jsonl`` for one video, or skip it when it is already there.

    Uses a fresh :class:`PoseEstimator` in video mode per video: tracking state must not leak
    from one video into the next, so a video's keypoints do not depend on which worker ran it.
    Raises :class:`SourceError` for an unreadable video and :class:`PoseModelError` for a bad model.
    """
    video, out_dir = Path(video), Path(out_dir)
    skipped = _already_done(video, out_dir, options)
    if skipped:
        return skipped
    output = output_path(video, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with_person = 0
    with VideoFileSource(video) as source, PoseEstimator(options.pose, mode="video") as estimator:

        def records() -> Iterator[dict]:
            nonlocal with_person
            for frame in source:
                rgb = cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB)
                joints = main_pose(estimator.detect(rgb, frame.timestamp_ms))
                with_person += joints is not None
                height, width = frame.image.shape[:2]
                yield frame_record(video.stem, frame.frame_number, frame.timestamp_ms, height, width, joints)
                if on_frame:
                    on_frame(frame.frame_number, source.frame_count)

        frames = write_frames_jsonl(records(), output)
    return ExtractResult(
        video, output, Outcome.DONE, frames, with_person, seconds=time.perf_counter() - started
    )


# --------------------------------------------------------------------------- worker processes

# Each worker process's channel for progress messages; set once by _init_worker, because a
# multiprocessing queue can reach a spawned process only at its creation.
_progress_queue: multiprocessing.Queue | None = None


def _init_worker(progress_queue: multiprocessing.Queue) -> None:
    """Prepare a worker process: progress channel, Ctrl-C, native logging.

    SIGINT kills a worker at once (default action, no traceback); the parent sees Ctrl-C too and
    exits with status 130, leaving ``.partial`` files that the next run redoes. MediaPipe and
    FFmpeg log from C++ straight to file descriptor 2 (GPU probes, "moov atom not found"), which
    would shred the progress bar, so descriptor 2 goes to /dev/null while Python's ``sys.stderr``
    keeps the real one.
    """
    global _progress_queue
    _progress_queue = progress_queue
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # e.g. under nohup: stay immune
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    python_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(python_stderr, "w", buffering=1)


def _failure(video: Path, out_dir: Path, exc: BaseException) -> ExtractResult:
    # Our own errors name their file already; anything else gets the video's name in front.
    named = isinstance(exc, SourceError | PoseModelError)
    message = str(exc) if named else f"{video}: {type(exc).__name__}: {exc}"
    return ExtractResult(video, output_path(video, out_dir), Outcome.FAILED, error=message)


def _extract_in_worker(index: int, video: Path, out_dir: Path, options: ExtractOptions) -> ExtractResult:
    def report(frame_number: int, announced: int) -> None:
        if _progress_queue is not None:
            _progress_queue.put((index, frame_number, announced))

    try:
        return extract_video(video, out_dir, options, on_frame=report)
    except Exception as exc:  # one bad video must not end the batch; the user reads why
        return _failure(video, out_dir, exc)


class _FrameProgress:
    """A tqdm bar over the frames of all videos; totals grow as workers open their videos."""

    def __init__(self, bar: tqdm):
        self._bar = bar
        self._done: dict[int, int] = {}
        self._expected: dict[int, int] = {}
        self._finished: set[int] = set()

    def advance(self, index: int, frame_number: int, announced: int) -> None:
        if index in self._finished:  # the queue may lag behind the video's result
            return
        self._expected[index] = max(announced, frame_number, self._expected.get(index, 0))
        delta = frame_number - self._done.get(index, 0)
        if delta > 0:
            self._done[index] = frame_number
            self._bar.total = sum(self._expected.values())
            self._bar.update(delta)

    def finish(self, index: int, frames: int) -> None:
        self.advance(index, frames, 0)
        self._finished.add(index)
        self._expected[index] = self._done.get(index, 0)  # a failed video stops short
        self._bar.total = sum(self._expected.values())
        self._bar.refresh()

    def drain(self, progress_queue: multiprocessing.Queue) -> None:
        while True:
            try:
                self.advance(*progress_queue.get_nowait())
            except Empty:
                return


def extract_batch(
    videos: Sequence[Path], out_dir: Path, options: ExtractOptions, workers: int | None = None
) -> list[ExtractResult]:
    """Extract many videos in parallel processes; results in the order of ``videos``.

    Processes are spawned, not forked: MediaPipe's threads do not survive a fork. Failures are
    printed as they happen (one line each) and returned as :attr:`Outcome.FAILED` results.
    """
    results: dict[int, ExtractResult] = {}
    pending: list[int] = []
    for index, video in enumerate(videos):
        skipped = _already_done(video, out_dir, options)
        if skipped:
            results[index] = skipped
        else:
            pending.append(index)
    if not pending:
        return [results[i] for i in range(len(videos))]

    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue()
    pool = ProcessPoolExecutor(
        max_workers=min(workers or os.cpu_count() or 1, len(pending)),
        mp_context=context,
        initializer=_init_worker,
        initargs=(progress_queue,),
    )
    bar = tqdm(total=0, unit="frame", desc="extract", file=sys.stderr, disable=None, dynamic_ncols=True)
    progress = _FrameProgress(bar)
    try:
        futures: dict[Future, int] = {
            pool.submit(_extract_in_worker, i, videos[i], out_dir, options): i for i in pending
        }
        running = set(futures)
        while running:
            finished, running = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
            progress.drain(progress_queue)
            for future in finished:
                index = futures[future]
                exc = future.exception()  # only when a worker process died (crash, out of memory)
                result = future.result() if exc is None else _failure(videos[index], out_dir, exc)
                progress.finish(index, result.frames)
                if result.outcome is Outcome.FAILED:
                    tqdm.write(f"trainer extract: {result.error}", file=sys.stderr)
                results[index] = result
    finally:
        pool.shutdown(cancel_futures=True)
        bar.close()
        progress_queue.close()
    return [results[i] for i in range(len(videos))]


# --------------------------------------------------------------------------- command line


def find_videos(inputs: Sequence[Path]) -> list[Path]:
    """The videos named by files and directories, each once, in a stable order.

    Directories contribute their video files (by extension, not recursively); files named
    explicitly are taken whatever their extension and fail later if they are not videos.
    Raises :class:`UsageError` for a missing input, an empty result, or two videos whose frame
    files would have the same name.
    """
    found: dict[Path, Path] = {}
    for item in inputs:
        if item.is_dir():
            candidates = sorted(
                p for p in item.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
            )
        elif item.exists():
            candidates = [item]
        else:
            raise UsageError(f"{item}: no such file or directory")
        for path in candidates:
            found.setdefault(path.resolve(), path)
    if not found:
        names = ", ".join(str(p) for p in inputs)
        raise UsageError(f"no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) in {names}")
    by_stem: dict[str, Path] = {}
    for path in found.values():
        other = by_stem.setdefault(path.stem, path)
        if other is not path:
            raise UsageError(
                f"{other} and {path} would both write {path.stem}{FRAMES_SUFFIX}; rename one or extract apart"
            )
    return list(found.values())


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="VIDEO_OR_DIR", help="video files or folders")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="where frame files go")
    parser.add_argument("--workers", type=int, metavar="N", help="parallel processes (default: one per core)")
    parser.add_argument(
        "--pose-model",
        type=Path,
        metavar="FILE",
        help="a MediaPipe pose landmarker .task file (default: built offline from mediapipe's own models)",
    )
    parser.add_argument(
        "--num-poses",
        type=int,
        default=1,
        metavar="N",
        help="people to detect per frame; the largest is recorded (default: 1)",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo videos whose frame file exists")


def _run(args: argparse.Namespace) -> int:
    out_dir: Path = args.out
    for option, value in (("--workers", args.workers), ("--num-poses", args.num_poses)):
        if value is not None and value < 1:
            raise UsageError(f"{option} {value}: expected at least 1")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: is a file, expected a directory")
    videos = find_videos(args.inputs)
    try:
        model = args.pose_model or offline_task_path()
        check_task_file(model)
    except PoseModelError as exc:
        raise UsageError(str(exc)) from exc
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out_dir}: cannot create ({exc.strerror})") from exc
    options = ExtractOptions(PoseOptions(model_path=model, num_poses=args.num_poses), args.overwrite)

    started = time.perf_counter()
    results = extract_batch(videos, out_dir, options, args.workers)
    seconds = time.perf_counter() - started
    count = {outcome: sum(r.outcome is outcome for r in results) for outcome in Outcome}
    frames = sum(r.frames for r in results)
    print(
        f"{count[Outcome.DONE]} done, {count[Outcome.SKIPPED]} skipped, {count[Outcome.FAILED]} failed; "
        f"{frames} frames in {seconds:.1f} s ({frames / seconds:.1f} frames/s) -> {out_dir}"
    )
    return ExitStatus.FAILED if count[Outcome.FAILED] else ExitStatus.OK


COMMAND = Command(
    help="detect poses in videos and write <stem>.frames.jsonl keypoint files",
    description="""\
Detect the pose of the person in every frame of each video with MediaPipe (the kiosk's own
pose code) and write one keypoint file per video: DIR/<stem>.frames.jsonl, one JSON line per
decoded frame (frames without a person have empty joint_positions).

Videos run in parallel, one process each. Finished files are skipped, so an interrupted batch
continues where it stopped; an unreadable video is reported and the others go on (exit status 1).
The pose model is built offline from mediapipe's own files unless --pose-model names a .task file.

Examples:
  python -m trainer extract recordings/ --out keypoints/
  python -m trainer extract walk.mp4 squat.webm --out keypoints/ --workers 2
  python -m trainer extract recordings/ --out keypoints/ --pose-model pose_landmarker_heavy.task --overwrite
""",
    add_arguments=_add_arguments,
    run=_run,
)
