"""``trainer extract``: videos -> ``<stem>.frames.jsonl`` keypoint files, in parallel.

Each video is decoded by :class:`device.sources.VideoFileSource` and run through
:class:`device.pose.PoseEstimator`, the very code the kiosk runs, so training keypoints match
serving keypoints. Every decoded frame gets a line, with empty ``joint_positions`` when nobody is
in view, so frame numbers line up with annotations. The columnar copy of each finished file
(:mod:`trainer.frame_columns`) is written right after it.

A batch is resumable: a finished frame file is written atomically (``.partial`` then rename) and
skipped next time; one unreadable video is reported and the rest carry on. Where the videos run
(a local process pool or a Dask cluster) is a :class:`trainer.cluster.Backend`; this module
only decides what runs and how results are reported. MediaPipe and OpenCV are imported where
videos are decoded, so declaring the command (``--help``) does not load them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from device.cli import Command, ExitStatus, UsageError
from device.keypoints import FRAMES_SUFFIX, frame_record, write_frames_jsonl
from trainer.cluster import ADDRESS_FORMS, Backend, ClusterError, DaskCluster, LocalPool, Report, TlsFiles

if TYPE_CHECKING:
    from device.pose import PoseOptions

VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v"})
"""Searched for in input directories (case-insensitive); files given by name are tried anyway."""

DASK_TIMEOUT = 10.0
"""Seconds to wait for a remote Dask scheduler to answer and to have a worker."""


class Outcome(StrEnum):
    DONE = "done"
    SKIPPED = "skipped"  # a finished frame file was already there
    FAILED = "failed"


def _default_pose() -> PoseOptions:
    from device.pose import PoseOptions

    return PoseOptions()


@dataclass(frozen=True)
class ExtractOptions:
    """What to extract and whether to redo finished videos."""

    pose: PoseOptions = field(default_factory=_default_pose)
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
    import cv2

    from device.pose import PoseEstimator, main_pose
    from device.sources import VideoFileSource
    from trainer.frame_columns import write_columns

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
    write_columns(output)  # the same keypoints as arrays, which `trainer dataset` reads
    return ExtractResult(
        video, output, Outcome.DONE, frames, with_person, seconds=time.perf_counter() - started
    )


# --------------------------------------------------------------------------- batches


def _failure(video: Path, out_dir: Path, exc: BaseException) -> ExtractResult:
    # Our own errors name their file already; anything else gets the video's name in front, and
    # one line (Dask's messages run over several).
    from device.pose import PoseModelError
    from device.sources import SourceError

    named = isinstance(exc, SourceError | PoseModelError)
    message = str(exc) if named else f"{video}: {type(exc).__name__}: {' '.join(str(exc).split())}"
    return ExtractResult(video, output_path(video, out_dir), Outcome.FAILED, error=message)


def _extract_task(
    report: Report, index: int, video: Path, out_dir: Path, options: ExtractOptions
) -> ExtractResult:
    """One video on a worker (pool process or Dask worker): progress per frame, failures as results."""

    def on_frame(frame_number: int, announced: int) -> None:
        report(index, frame_number, announced)

    try:
        return extract_video(video, out_dir, options, on_frame=on_frame)
    except Exception as exc:  # one bad video must not end the batch; the user reads why
        return _failure(video, out_dir, exc)


def announced_frames(video: Path) -> int:
    """The frame count in the video's container header; 0 when it states none or does not open.

    Read for every video before the batch starts, so that the progress bar's total is right from
    the first frame instead of growing each time a worker opens its next video.
    """
    from device.sources import SourceError, VideoFileSource

    try:
        with VideoFileSource(video) as source:
            return source.frame_count
    except SourceError:  # the worker reports it, as a failed video
        return 0


class FrameProgress:
    """A tqdm bar over the frames of all videos, its total the frames their containers announce.

    ``announced`` maps each video's index to its announced frame count. A video that decodes
    more frames than announced (or announces none) raises the total as it goes; a video that
    ends short or fails lowers it to what it decoded, so the bar ends full.
    """

    def __init__(self, bar: tqdm, announced: dict[int, int]):
        self._bar = bar
        self._done: dict[int, int] = {}
        self._expected: dict[int, int] = dict(announced)
        self._finished: set[int] = set()
        self._bar.total = sum(self._expected.values())
        self._bar.refresh()

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


def extract_batch(
    videos: Sequence[Path], out_dir: Path, options: ExtractOptions, backend: Backend | None = None
) -> list[ExtractResult]:
    """Extract many videos in parallel on ``backend`` (default: a local process pool); results in order.

    Videos whose frame file is finished are skipped here, before anything starts. Failures are
    printed as they happen (one line each) and returned as :attr:`Outcome.FAILED` results.
    Raises :class:`ClusterError` when the backend cannot start.
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

    announced = {i: announced_frames(videos[i]) for i in pending}
    runner = (backend or LocalPool()).open(len(pending))
    bar = tqdm(total=0, unit="frame", desc="extract", file=sys.stderr, disable=None, dynamic_ncols=True)
    progress = FrameProgress(bar, announced)
    try:
        tickets = {runner.submit(_extract_task, i, videos[i], out_dir, options): i for i in pending}
        while tickets:
            finished = runner.wait(timeout=0.2)
            for message in runner.progress():
                progress.advance(*message)
            for task in finished:
                index = tickets.pop(task.ticket)
                # an error here means the infrastructure failed: a worker process died, out of memory
                result = task.value if task.error is None else _failure(videos[index], out_dir, task.error)
                progress.finish(index, result.frames)
                if result.outcome is Outcome.FAILED:
                    tqdm.write(f"trainer extract: {result.error}", file=sys.stderr)
                results[index] = result
    finally:
        runner.close()
        bar.close()
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
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="parallel local processes (default: one per core; not with --dask)",
    )
    parser.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run on a Dask cluster instead: local (a worker process per core), local:N, or tls://HOST:PORT "
        "(tcp:// on this machine) of a running scheduler; needs pip install .[dask]",
    )
    for option, what in (
        ("--dask-ca", "the CA that signed the cluster's certificates"),
        ("--dask-cert", "this client's certificate, signed by a CA the scheduler trusts"),
        ("--dask-key", "the key of --dask-cert (unless appended to it)"),
    ):
        parser.add_argument(
            option, type=Path, metavar="PEM", help=f"with --dask tls://…: {what} (default: Dask's config)"
        )
    parser.add_argument(
        "--dask-insecure",
        action="store_true",
        help="allow --dask tcp://… to another machine: no encryption, and anyone reaching the scheduler "
        "runs code on its workers",
    )
    parser.add_argument(
        "--dask-timeout",
        type=float,
        metavar="SECONDS",
        help="with --dask tls:// or tcp://: how long to wait for the scheduler and a worker "
        f"(default: {DASK_TIMEOUT:g})",
    )
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


def _backend(args: argparse.Namespace) -> Backend:
    """The local pool, or the Dask cluster ``--dask`` names; checked before anything is written.

    ``--workers`` belongs to the local pool only: with ``--dask`` the size is part of the address
    (``local:N``) or the remote cluster's own business, and one way to say it avoids conflicts.
    """
    tls_options = {"--dask-ca": args.dask_ca, "--dask-cert": args.dask_cert, "--dask-key": args.dask_key}
    if args.dask is None:
        given = [o for o, v in [("--dask-timeout", args.dask_timeout), *tls_options.items()] if v is not None]
        if args.dask_insecure:
            given.append("--dask-insecure")
        if given:
            raise UsageError(f"{given[0]}: only meaningful with --dask")
        return LocalPool(args.workers)
    if args.workers is not None:
        raise UsageError(f"--workers sizes the local process pool; with --dask give {ADDRESS_FORMS}")
    timeout = DASK_TIMEOUT if args.dask_timeout is None else args.dask_timeout
    if not timeout > 0:
        raise UsageError(f"--dask-timeout {timeout:g}: expected more than 0 seconds")
    for option, path in tls_options.items():
        if path is not None and not path.is_file():
            raise UsageError(f"{option} {path}: no such file")
    tls = TlsFiles(args.dask_ca, args.dask_cert, args.dask_key) if any(tls_options.values()) else None
    try:
        return DaskCluster.from_address(args.dask, timeout, tls, args.dask_insecure)
    except (ValueError, ClusterError) as exc:
        raise UsageError(f"--dask {args.dask}: {exc}") from exc


def _run(args: argparse.Namespace) -> int:
    out_dir: Path = args.out
    for option, value in (("--workers", args.workers), ("--num-poses", args.num_poses)):
        if value is not None and value < 1:
            raise UsageError(f"{option} {value}: expected at least 1")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: is a file, expected a directory")
    backend = _backend(args)
    videos = find_videos(args.inputs)
    on_dask = isinstance(backend, DaskCluster)
    # MediaPipe (a second to import) only once the quick checks above have passed
    from device.pose import PoseModelError, PoseOptions, check_task_file, offline_task_path

    try:
        if args.pose_model:
            model: Path | None = args.pose_model
            check_task_file(args.pose_model)
        else:  # Dask workers build (and cache) the offline model themselves: they may be other machines
            model = None if on_dask else offline_task_path()
    except PoseModelError as exc:
        raise UsageError(str(exc)) from exc
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out_dir}: cannot create ({exc.strerror})") from exc
    if on_dask:  # workers have their own working directory: hand them paths that do not depend on it
        videos = [video.absolute() for video in videos]
        out_dir = out_dir.absolute()
        model = model and model.absolute()
    options = ExtractOptions(PoseOptions(model_path=model, num_poses=args.num_poses), args.overwrite)

    started = time.perf_counter()
    try:
        results = extract_batch(videos, out_dir, options, backend)
    except ClusterError as exc:  # nothing ran: leave no trace either
        if created:
            out_dir.rmdir()
        raise UsageError(f"--dask {args.dask}: {exc}") from exc
    seconds = time.perf_counter() - started
    count = {outcome: sum(r.outcome is outcome for r in results) for outcome in Outcome}
    frames = sum(r.frames for r in results)
    print(
        f"{count[Outcome.DONE]} done, {count[Outcome.SKIPPED]} skipped, {count[Outcome.FAILED]} failed; "
        f"{frames} frames in {seconds:.1f} s ({frames / seconds:.1f} frames/s) -> {args.out}"
    )
    return ExitStatus.FAILED if count[Outcome.FAILED] else ExitStatus.OK


COMMAND = Command(
    description="""\
Detect the pose of the person in every frame of each video with MediaPipe (the kiosk's own
pose code) and write one keypoint file per video: DIR/<stem>.frames.jsonl, one JSON line per
decoded frame (frames without a person have empty joint_positions). Beside it goes
DIR/<stem>.frames.arrow, the same keypoints as arrays, which `trainer dataset` reads instead of
parsing the JSON (`trainer keypoints-cache` rewrites them when the JSON changes).

Videos run in parallel, one process each. Finished files are skipped, so an interrupted batch
continues where it stopped; an unreadable video is reported and the others go on (exit status 1).
The pose model is built offline from mediapipe's own files unless --pose-model names a .task file.

With --dask the videos run on a Dask cluster instead (pip install .[dask]): "local" starts one
on this machine (a single-threaded worker process per core, "local:N" for N), "tls://HOST:PORT"
uses a running scheduler, whose workers must run this same project and see the videos, --out and
--pose-model at the same absolute paths (a shared filesystem); they write the frame files
themselves, and build the offline pose model in their own cache unless --pose-model is given.
Progress is per frame either way. Ctrl-C stops the batch like the local pool does (what was
running is redone next time), except that videos already running on a remote cluster finish there.

A scheduler runs any code its clients send, on every worker: tls:// is Dask's mutual TLS, where
the scheduler admits only clients whose certificate its CA signed. Give this client's certificate
and key and the cluster's CA with --dask-cert, --dask-key and --dask-ca (or in Dask's
configuration, distributed.comm.tls.*). Plain tcp:// is accepted for a scheduler on this machine
(127.0.0.1, localhost); to another machine only with --dask-insecure.

Examples:
  python -m trainer extract recordings/ --out keypoints/
  python -m trainer extract walk.mp4 squat.webm --out keypoints/ --workers 2
  python -m trainer extract recordings/ --out keypoints/ --pose-model pose_landmarker_heavy.task --overwrite
  python -m trainer extract /shared/recordings --out /shared/keypoints --dask local:2
  python -m trainer extract /shared/recordings --out /shared/keypoints --dask tls://10.0.0.5:8786 \\
      --dask-ca dask/ca.pem --dask-cert dask/client.pem --dask-key dask/client.key
""",
    add_arguments=_add_arguments,
    run=_run,
)
