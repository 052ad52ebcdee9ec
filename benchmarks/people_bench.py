"""Frames per second with 1, 2 and 3 people in view, against MediaPipe alone finding as many.

MediaPipe runs its landmark model once per person, so pose costs grow with the people in view;
what this benchmark watches is the rest: tracking, a decision pipeline per person and the
activity stage, which must stay small beside pose. Each case runs the :class:`Classifier` (the
demo's pose model) and the bare OpenCV + MediaPipe loop with the same ``num_poses`` on the same
frames, in the same run, each twice (``--runs``), alternating, its faster run counting:

- 1 person: ``squats.mp4``, ``num_poses = 1``, the person followed alone (today's kiosk; the
  target is no cost beyond the one-person pipeline of ``python -m benchmarks replay``);
- 2 people: ``squats.mp4`` beside ``dance.mp4`` in one frame (:func:`side_by_side`), everyone;
- 3 people: ``lab_three_people.mp4``, everyone.

Run: ``python -m benchmarks people``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import command
from benchmarks.daemon_process import train_model
from benchmarks.device_bench import bare_loop_fps
from benchmarks.rows import Row, render_text
from benchmarks.samples import DATA, side_by_side
from device.classifier import Classifier
from device.pose import PoseOptions
from device.sources import VideoFileSource
from trainer.recipes import PoseBundle


@dataclass(frozen=True)
class Case:
    people: int
    video: Path
    what: str


@dataclass(frozen=True)
class PeopleNumbers:
    case: Case
    frames: int
    people_seen: float  # mean people found per frame
    fps: float
    bare_fps: float

    def row(self) -> Row:
        mode = "the largest followed" if self.case.people == 1 else "everyone classified"
        return Row(
            "people",
            f"{self.case.people} in view ({self.case.what}, {self.people_seen:.1f} found per frame), {mode}",
            self.fps,
            "frames/s",
            self.bare_fps,
            f"bare MediaPipe, num_poses {self.case.people}",
        )


def classifier_fps(model: PoseBundle, case: Case) -> tuple[float, int, float]:
    """Frames/s through the Classifier with ``num_poses`` = the case's people; frames; people/frame."""
    pose = PoseOptions(num_poses=case.people)
    frames = found = 0
    began = time.perf_counter()
    with (
        Classifier.open(model.bundle, [model.public_key], pose=pose, everyone=case.people > 1) as classifier,
        VideoFileSource(case.video) as source,
    ):
        for frame in source:
            step = classifier.process(frame)
            found += len(step.people) if case.people > 1 else step.person is not None
            frames += 1
    return frames / (time.perf_counter() - began), frames, found / max(1, frames)


def measure(model: PoseBundle, work: Path, runs: int = 2) -> list[PeopleNumbers]:
    cases = (
        Case(1, DATA / "videos" / "squats.mp4", "squats.mp4"),
        Case(2, side_by_side(DATA / "videos" / "squats.mp4", DATA / "videos" / "dance.mp4", work / "two.mp4"),
             "squats.mp4 beside dance.mp4"),
        Case(3, DATA / "videos" / "lab_three_people.mp4", "lab_three_people.mp4"),
    )
    numbers = []
    for case in cases:
        bare = fps = seen = 0.0
        frames = 0
        for _ in range(runs):
            bare = max(bare, bare_loop_fps([case.video], PoseOptions(num_poses=case.people))[0])
            run, frames, seen = classifier_fps(model, case)
            fps = max(fps, run)
        numbers.append(PeopleNumbers(case, frames, seen, fps, bare))
    return numbers


def main(argv: list[str] | None = None) -> int:
    parser = command("people", __doc__)
    parser.add_argument("--runs", type=int, default=2, help="runs of each side (default 2)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-people-") as tmp:
        numbers = measure(train_model(Path(tmp)), Path(tmp), args.runs)
    print(render_text([n.row() for n in numbers]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
