"""Stations: named zones of the camera image (one camera, four mats, four counters).

Like Frigate's zones, a station is a polygon in image pixels. With stations configured, a person
is classified only while the midpoint of their hips is inside one, and their results carry that
station's name; someone walking past between the mats is tracked but not classified.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from device.keypoints import X, Y

HIPS = (23, 24)  # BlazePose left_hip, right_hip


@dataclass(frozen=True)
class Station:
    name: str
    polygon: tuple[tuple[float, float], ...]  # (x, y) image pixels, at least three corners

    def contains(self, x: float, y: float) -> bool:
        """Even-odd ray casting: is (x, y) inside the polygon?"""
        corners = np.asarray(self.polygon, dtype=np.float64)
        x0, y0 = corners[:, 0], corners[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        return bool(np.count_nonzero(crosses & (x < at)) % 2)


def station_of(points: np.ndarray, stations: tuple[Station, ...]) -> str | None:
    """The first station holding the person's hip midpoint, or None (also when the hips are unseen)."""
    hip = (
        np.nanmean(points[list(HIPS)][:, [X, Y]], axis=0)
        if not np.isnan(points[list(HIPS), X]).all()
        else None
    )
    if hip is None:
        return None
    return next((s.name for s in stations if s.contains(float(hip[0]), float(hip[1]))), None)
