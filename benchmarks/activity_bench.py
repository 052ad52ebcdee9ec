"""What counting repetitions costs per frame, next to what classifying the frame costs.

The demo's 20-pose model with three activities (a ``phases`` squat on Squat/Stand with knee
measures, an ``angle`` knee bend, a ``hold`` of Stand) runs over the squats reference landmarks
at 30 frames/s through :class:`device.decisions.DecisionPipeline`; the stage timer reports the
activity stage's time per frame and the classifier's (features + model + smoothing) per result,
both p50 and p99. The target: the activity stage stays a rounding error (< 0.1 ms p99 here).

Run: ``python -m benchmarks activities``.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks import command
from benchmarks.daemon_process import train_model
from benchmarks.rows import Row, render_text
from benchmarks.samples import reference_points
from benchmarks.timing import p50_p99_ms
from device.activity_specs import AngleActivity, HoldActivity, PhasesActivity
from device.decisions import DecisionPipeline
from device.model.store import open_model
from trainer.recipes import PoseBundle

KNEES = ("angle.left_knee", "angle.right_knee")
ACTIVITIES = (
    PhasesActivity("squat", ("Stand", "Squat"), measures=KNEES),
    AngleActivity("knee_bend", "angle.left_knee", 100.0, 160.0, measures=KNEES),
    HoldActivity("standing", "Stand", 0.8),
)


@dataclass(frozen=True)
class ActivityNumbers:
    frames: int
    activities_ms: tuple[float, float]  # p50, p99 per frame
    classify_ms: tuple[float, float]  # p50, p99 per result (features + model + smoothing)

    def rows(self) -> list[Row]:
        return [
            Row(
                "activities",
                f"activity stage, {len(ACTIVITIES)} activities, per frame ({name})",
                ours,
                "ms",
                theirs,
                f"classifier per result ({name})",
            )
            for name, ours, theirs in zip(("p50", "p99"), self.activities_ms, self.classify_ms, strict=True)
        ]


def measure(model: PoseBundle, frames: int = 5000) -> ActivityNumbers:
    loaded = open_model(model.bundle, [model.public_key])
    # the same model with the activities, as a bundle exported with --activities would carry them
    loaded.manifest = replace(loaded.manifest, activities=ACTIVITIES)
    spent: dict[str, list[float]] = defaultdict(list)
    pipeline = DecisionPipeline(loaded, timer=lambda stage, seconds: spent[stage].append(seconds))
    for n, points in enumerate(reference_points(frames), start=1):
        pipeline.push(n, n * 1000 / 30, points)
    classify = [f + c for f, c in zip(spent["features"], spent["classify"], strict=True)]
    return ActivityNumbers(frames, p50_p99_ms(spent["activities"]), p50_p99_ms(classify))


def main(argv: list[str] | None = None) -> int:
    parser = command("activities", __doc__)
    parser.add_argument("--frames", type=int, default=5000, help="frames fed (default 5000)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-activities-") as tmp:
        numbers = measure(train_model(Path(tmp)), args.frames)
    print(render_text(numbers.rows()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
