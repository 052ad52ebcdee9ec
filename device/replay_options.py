"""The options and help of ``device replay``, declared without importing its work.

Replaying needs MediaPipe, OpenCV and numpy; ``device --help`` must not wait for them, so the
command's run function (:func:`device.replay.run`) is imported when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = """\
Run a signed model bundle on video files exactly as a kiosk would, and write what the kiosk would
publish: one JSON object per line, {"source": VIDEO, "topic": "classification", "payload": {...}}
(DESIGN.md §9). Pose, windows, features, model and smoothing are the daemon's own code; timestamps
come from the file, so two runs give identical lines. In the payload, `ts` is the window's end in
seconds of the video and `latency_ms` is 0. A summary (results, time per label, and with
--annotations the per-frame accuracy, macro F1 and confusion) goes to stderr.

--fps F replays as a kiosk that manages F frames per second would see the video: after each
frame it takes the newest one that arrived while it was busy. A model's windows are spans of
time, so its labels should barely change with F.

Examples:
  python -m device replay squats.mp4 --bundle model.zip --trusted-key keys/signing.pub
  python -m device replay videos/*.mp4 --bundle model.zip --trusted-key signing.pub --out results.jsonl
  python -m device replay squats.mp4 --bundle model.zip --trusted-key signing.pub --fps 5 \\
      --video-out squats.replay.mp4
  python -m device replay example_video.webm --bundle steps.zip --trusted-key signing.pub \\
      --annotations annotations/ --labels labels.toml
  python -m device replay squats.mp4 --bundle fitness.zip --trusted-key signing.pub --reps reps.csv

--reps scores the counting against annotated repetitions (CSV video,start_frame,end_frame,activity):
per video and activity the count and its error, then the mean absolute error relative to the
annotated count, the share within one (off-by-one accuracy) and the timing error of matched reps.
"""

VIDEO_SUFFIX = ".replay.mp4"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", type=Path, metavar="VIDEO", help="video files to replay")
    parser.add_argument("--bundle", type=Path, required=True, help="signed model bundle (.zip)")
    parser.add_argument(
        "--trusted-key",
        type=Path,
        action="append",
        required=True,
        metavar="KEY.pub",
        help="public key the bundle must be signed with (repeatable)",
    )
    parser.add_argument("--fps", type=float, metavar="F", help="replay as a kiosk processing F frames/s")
    parser.add_argument(
        "--people",
        type=int,
        metavar="N",
        help="follow up to N people, each with a track id and decisions of their own (default: the "
        "largest person only, as person 1)",
    )
    parser.add_argument(
        "--out", type=Path, metavar="FILE.jsonl", help="write the lines here (default stdout)"
    )
    parser.add_argument(
        "--video-out",
        type=Path,
        metavar="PATH",
        help=f"render the video(s) with skeleton and label: FILE.mp4 for one video, else a folder "
        f"receiving <stem>{VIDEO_SUFFIX}",
    )
    parser.add_argument("--annotations", type=Path, metavar="PATH", help="annotation file or folder to score")
    parser.add_argument(
        "--labels", type=Path, metavar="MAP.toml", help="label mapping for --annotations ([columns] table)"
    )
    parser.add_argument(
        "--reps",
        type=Path,
        metavar="FILE.csv",
        help="annotated repetitions (video,start_frame,end_frame,activity) to score the counting",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


USER_ERRORS = (
    "device.model.store:ModelRejected",
    "device.annotations:AnnotationError",
    "device.counting:RepAnnotationError",
)
"""What replay's users get wrong, named as ``device.cli.run_cli`` takes them."""
