"""Feature throughput: the vectorized engine against a per-joint pure-Python baseline.

Both compute the default feature spec (normalized coordinates of 33 joints, 11 angles, 6
distances) on the same frames, measured in the same run; the baseline's results are checked
against the engine's first, so the ratio compares equal work. Frames are the reference squats
landmarks repeated.

Run: ``python -m benchmarks features`` (``python -m benchmarks table`` shows it with the others).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from benchmarks import command
from benchmarks.rows import Row, render_text
from benchmarks.samples import reference_points
from benchmarks.timing import timed
from device.features import ANGLES, DEFAULT_DISTANCES, FeatureEngine, FeatureSpec, WindowSpec, window_features
from device.keypoints import JOINTS

WINDOW = WindowSpec(size=30, stride=1, flatten=False)
BASELINE = "per-joint pure Python"

# --- the baseline: one frame at a time, one joint at a time, plain Python -----------------


def _angle(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> float:
    ux, uy, vx, vy = a[0] - b[0], a[1] - b[1], c[0] - b[0], c[1] - b[1]
    return math.degrees(math.atan2(abs(ux * vy - uy * vx), ux * vx + uy * vy))


def baseline_frame(frame: list[list[float]]) -> list[float]:
    """The default spec's features of one frame, joint by joint in dicts."""
    joints = {name: (row[0], row[1]) for name, row in zip(JOINTS, frame, strict=True) if row[3] >= 0.5}
    ls, rs, lh, rh = (joints[j] for j in ("left_shoulder", "right_shoulder", "left_hip", "right_hip"))
    joints["neck"] = ((ls[0] + rs[0]) / 2, (ls[1] + rs[1]) / 2)
    mid = joints["mid_hip"] = ((lh[0] + rh[0]) / 2, (lh[1] + rh[1]) / 2)
    joints["vertical"] = (mid[0], mid[1] - 1.0)
    torso = math.dist(joints["neck"], mid)
    row = []
    for name in JOINTS:
        x, y = joints[name]
        row += [(x - mid[0]) / torso, (y - mid[1]) / torso]
    for a, b, c in ANGLES.values():
        row.append(_angle(joints[a], joints[b], joints[c]))
    for a, b in DEFAULT_DISTANCES:
        row.append(math.dist(joints[a], joints[b]) / torso)
    return row


def baseline_window(frames: list[list[list[float]]]) -> list[float]:
    """Pooled mean/std/min/max/delta of a window, feature by feature."""
    rows = [baseline_frame(f) for f in frames]
    out: list[float] = []
    columns = list(zip(*rows, strict=True))
    out += [sum(c) / len(c) for c in columns]
    for c in columns:
        m = sum(c) / len(c)
        out.append(math.sqrt(sum((v - m) ** 2 for v in c) / len(c)))
    out += [min(c) for c in columns]
    out += [max(c) for c in columns]
    out += [c[-1] - c[0] for c in columns]
    return out


# --- measurement ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureNumbers:
    features: int
    frames: int
    engine_frames_per_s: float
    baseline_frames_per_s: float
    engine_ms_per_window: float
    baseline_ms_per_window: float

    def rows(self) -> list[Row]:
        return [
            Row(
                "features",
                f"throughput, default spec ({self.features} features/frame, {self.frames:,} frames)",
                self.engine_frames_per_s,
                "frames/s",
                self.baseline_frames_per_s,
                BASELINE,
            ),
            Row(
                "features",
                f"per 30-frame window (features + mean/std/min/max/delta of {self.features})",
                self.engine_ms_per_window,
                "ms",
                self.baseline_ms_per_window,
                BASELINE,
            ),
        ]


def measure(
    frames: int = 100_000, baseline_frames: int = 5_000, windows: int = 1000, baseline_windows: int = 100
) -> FeatureNumbers:
    """Engine and baseline on the same frames, after checking that they compute the same numbers."""
    engine = FeatureEngine(FeatureSpec())
    points = reference_points(frames)
    as_lists = points[:baseline_frames].tolist()

    # same results first: the ratio must compare equal work
    np.testing.assert_allclose(
        np.array([baseline_frame(f) for f in as_lists[:200]]),
        engine.compute(points[:200]),
        rtol=1e-9,
        atol=1e-9,
    )
    window_points = points[:30]
    window_list = window_points.tolist()
    np.testing.assert_allclose(
        np.array(baseline_window(window_list)),
        window_features(engine.compute(window_points), WINDOW)[0],
        rtol=1e-9,
        atol=1e-9,
    )

    _, engine_s = timed(engine.compute, points, repeat=5)
    _, baseline_s = timed(lambda: [baseline_frame(f) for f in as_lists], repeat=3)
    _, window_s = timed(
        lambda: [window_features(engine.compute(window_points), WINDOW) for _ in range(windows)], repeat=3
    )
    _, baseline_window_s = timed(
        lambda: [baseline_window(window_list) for _ in range(baseline_windows)], repeat=3
    )
    return FeatureNumbers(
        features=len(engine.names),
        frames=frames,
        engine_frames_per_s=frames / engine_s,
        baseline_frames_per_s=baseline_frames / baseline_s,
        engine_ms_per_window=window_s / windows * 1000,
        baseline_ms_per_window=baseline_window_s / baseline_windows * 1000,
    )


def main(argv: list[str] | None = None) -> int:
    command("features", __doc__).parse_args(argv)
    print(render_text(measure().rows()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
