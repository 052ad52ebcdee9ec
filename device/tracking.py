"""Who is who from frame to frame: anonymous track ids for the people MediaPipe finds.

MediaPipe's pose landmarker returns several people per frame (``num_poses``) but no identity, so
each frame's poses are matched to the tracks of the frames before: a constant-velocity prediction
of each track's joints to this frame's time, a cost per (track, pose) pair — the median distance
of the joints both see (waving arms move a few joints far; the body stays), in units of the
track's body size — and an optimal one-to-one assignment
(``scipy.optimize.linear_sum_assignment``, the Hungarian method). A pair costing more than
``max_cost`` is no match. A pose nobody matches starts a track with a new id; a track nobody
matches survives ``max_missing_s`` (a short occlusion, someone crossing in front) and then ends.
Ids only grow, so an id is never reused while its person could still be in view.

Why not norfair: it is built for exactly this (keypoint tracking with a Kalman filter), but it
would add a dependency and its own distance conventions for about a hundred lines that are plain
numpy here and tested with the kiosk's own keypoints; the assignment is scipy's, which
scikit-learn already brings to every kiosk.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from device.keypoints import VISIBILITY, X, Y

MIN_VISIBILITY = 0.5
"""Joints less visible than this take no part in the distance."""
MAX_PREDICTION_MS = 100.0
"""How far ahead a track's motion is extrapolated: joints do not keep a frame's velocity for long
(on the lab clip, extrapolating a 0.27 s occlusion pushed a standing woman past ``max_cost``)."""


@dataclass
class _Track:
    id: int
    xy: np.ndarray  # (33, 2) where the joints were last seen (NaN where not)
    velocity: np.ndarray  # (33, 2) pixels per millisecond
    seen_ms: float

    def predicted(self, t_ms: float) -> np.ndarray:
        """Where the joints should be at ``t_ms``: moving on as they moved, for a short while."""
        return self.xy + self.velocity * min(t_ms - self.seen_ms, MAX_PREDICTION_MS)

    @property
    def size(self) -> float:
        """The body's extent in pixels (the diagonal of its joints' box): distances scale with it."""
        span = np.nanmax(self.xy, axis=0) - np.nanmin(self.xy, axis=0)
        return max(float(np.hypot(*span)), 1.0) if np.isfinite(span).all() else 1.0


@dataclass(frozen=True)
class Tracked:
    """One frame's people with their track ids, and the tracks that ended at this frame."""

    people: tuple[tuple[int, np.ndarray], ...]  # (id, (33, 5) points), in the order found
    ended: tuple[int, ...]


@dataclass
class PersonTracker:
    """Assigns track ids to each frame's poses (see the module docstring)."""

    max_missing_s: float = 0.5
    max_cost: float = 0.5
    _tracks: list[_Track] = field(default_factory=list)
    _next_id: int = 1

    def reset(self) -> tuple[int, ...]:
        """A new clip: every track ends (their ids are returned); ids keep counting up."""
        ended = tuple(t.id for t in self._tracks)
        self._tracks = []
        return ended

    @property
    def active(self) -> tuple[int, ...]:
        return tuple(t.id for t in self._tracks)

    def update(self, t_ms: float, poses: np.ndarray) -> Tracked:
        """``poses`` is ``(n, 33, 5)`` (n may be 0) at source time ``t_ms``."""
        xy = np.where(poses[:, :, [VISIBILITY]] >= MIN_VISIBILITY, poses[:, :, [X, Y]], np.nan)
        # a track unseen for too long has ended before this frame: it must not catch a newcomer
        gone = [t for t in self._tracks if t_ms - t.seen_ms > 1000.0 * self.max_missing_s]
        self._tracks = [t for t in self._tracks if t not in gone]
        pairs = self._assign(t_ms, xy)
        ids: dict[int, int] = {}
        for track_index, pose_index in pairs:
            track = self._tracks[track_index]
            elapsed = t_ms - track.seen_ms
            moved = (xy[pose_index] - track.xy) / elapsed if elapsed > 0 else np.zeros_like(track.xy)
            track.velocity = np.where(np.isfinite(moved), moved, 0.0)
            track.xy = np.where(np.isfinite(xy[pose_index]), xy[pose_index], track.predicted(t_ms))
            track.seen_ms = t_ms
            ids[pose_index] = track.id
        ended = [t.id for t in gone]
        for pose_index in range(len(poses)):
            if pose_index not in ids:
                ids[pose_index] = self._next_id
                self._tracks.append(
                    _Track(self._next_id, xy[pose_index], np.zeros_like(xy[pose_index]), t_ms)
                )
                self._next_id += 1
        people = tuple((ids[i], poses[i]) for i in range(len(poses)))
        return Tracked(people, tuple(ended))

    def _assign(self, t_ms: float, xy: np.ndarray) -> list[tuple[int, int]]:
        """Optimal (track index, pose index) pairs whose cost is at most ``max_cost``."""
        if not self._tracks or not len(xy):
            return []
        predicted = np.stack([t.predicted(t_ms) for t in self._tracks])  # (tracks, 33, 2)
        sizes = np.array([t.size for t in self._tracks])
        gaps = np.linalg.norm(predicted[:, None] - xy[None], axis=-1)  # (tracks, poses, 33)
        with warnings.catch_warnings():  # no joint seen by both: an all-NaN row, no match
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(gaps, axis=-1)
        cost = np.where(np.isfinite(median), median, np.inf) / sizes[:, None]
        finite = np.where(np.isfinite(cost), cost, 1e9)
        # imported here: scipy.optimize costs a kiosk that follows one person 32 MB it never uses
        from scipy.optimize import linear_sum_assignment

        rows, columns = linear_sum_assignment(finite)
        return [(int(r), int(c)) for r, c in zip(rows, columns, strict=True) if cost[r, c] <= self.max_cost]
