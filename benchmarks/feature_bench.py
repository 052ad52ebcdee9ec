"""Feature throughput: the vectorized engine against a per-joint pure-Python baseline.

Both compute the default feature spec (normalized coordinates of 33 joints, 11 angles, 6
distances) on the same frames, measured in the same run; the baseline's results are checked
against the engine's first, so the ratio compares equal work. Frames are the reference squats
landmarks repeated.

Run: ``python -m benchmarks.feature_bench`` (or ``make bench`` for every benchmark).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from device.features import ANGLES, DEFAULT_DISTANCES, FeatureEngine, FeatureSpec, WindowSpec, window_features
from device.keypoints import JOINTS, empty_points

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FRAMES = 100_000
BASELINE_FRAMES = 5_000
WINDOW = WindowSpec(size=30, stride=1, flatten=False)


def reference_frames(count: int) -> np.ndarray:
    ref = np.array(json.loads((DATA / "keypoints" / "squats.reference_blazepose.json").read_text()))
    points = empty_points(len(ref))
    points[:, :, :3] = ref
    points[:, :, 3:] = 1.0
    reps = -(-count // len(ref))
    return np.ascontiguousarray(np.tile(points, (reps, 1, 1))[:count])


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


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    """Best wall time of ``repeats`` runs: the least disturbed by other work on the machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> dict[str, float]:
    engine = FeatureEngine(FeatureSpec())
    points = reference_frames(FRAMES)
    as_lists = points[:BASELINE_FRAMES].tolist()

    # same results first: the ratio must compare equal work
    np.testing.assert_allclose(
        np.array([baseline_frame(f) for f in as_lists[:200]]),
        engine.compute(points[:200]),
        rtol=1e-9,
        atol=1e-9,
    )
    window_points = points[:30]
    np.testing.assert_allclose(
        np.array(baseline_window(window_points.tolist())),
        window_features(engine.compute(window_points), WINDOW)[0],
        rtol=1e-9,
        atol=1e-9,
    )

    engine_s = best_of(5, lambda: engine.compute(points))
    baseline_s = best_of(3, lambda: [baseline_frame(f) for f in as_lists])
    windows = 1000
    window_s = best_of(
        3, lambda: [window_features(engine.compute(window_points), WINDOW) for _ in range(windows)]
    )
    window_list = window_points.tolist()
    baseline_window_s = best_of(3, lambda: [baseline_window(window_list) for _ in range(100)])

    results = {
        "engine_frames_per_s": FRAMES / engine_s,
        "baseline_frames_per_s": BASELINE_FRAMES / baseline_s,
        "engine_ms_per_window": window_s / windows * 1000,
        "baseline_ms_per_window": baseline_window_s / 100 * 1000,
    }
    print(f"Feature engine, default spec ({len(engine.names)} features per frame)")
    print(f"  frames/s   engine {results['engine_frames_per_s']:>12,.0f}   (on {FRAMES:,} frames)")
    print(f"             baseline {results['baseline_frames_per_s']:>10,.0f}   (per-joint Python, same run)")
    print(f"             ratio {results['engine_frames_per_s'] / results['baseline_frames_per_s']:>13,.0f}x")
    print(f"  30-frame window (features + mean/std/min/max/delta pooling of {len(engine.names)} features)")
    print(f"             engine {results['engine_ms_per_window']:>10.3f} ms")
    print(f"             baseline {results['baseline_ms_per_window']:>8.3f} ms")
    print(
        f"             ratio {results['baseline_ms_per_window'] / results['engine_ms_per_window']:>11,.0f}x"
    )
    return results


if __name__ == "__main__":
    main()
