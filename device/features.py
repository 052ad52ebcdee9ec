"""The one feature implementation, shared by the trainer and the kiosk.

A :class:`FeatureSpec` names exactly what is computed; it travels inside every model bundle, so
the device computes the columns the model was trained on, in the same order. A
:class:`FeatureEngine` turns a spec into index arrays once, and then computes every feature of
every frame with a handful of numpy operations over whole ``(frames, joints, dims)`` arrays —
never joint by joint in Python — which is what makes a 30-frame window cost well under a
millisecond on a Raspberry Pi.

Geometry is in image coordinates (x right, y down, z toward the camera in x's scale), 2D unless
the spec asks for z. Two virtual joints are derived for every source, BlazePose or BODY-25 alike:
``neck`` (mid-shoulders) and ``mid_hip`` (mid-hips); the torso length is their distance. Any
missing or low-visibility joint makes the features that use it NaN; nothing raises.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.keypoints import JOINT_INDEX, JOINTS, VISIBILITY

VIRTUAL_JOINTS: dict[str, tuple[str, str]] = {
    "neck": ("left_shoulder", "right_shoulder"),
    "mid_hip": ("left_hip", "right_hip"),
}
"""Joints derived as midpoints; appended after the 33 BlazePose joints."""

# "vertical" is mid_hip moved one unit up the image, so that the trunk lean is one more
# angle between two point differences, computed in the same gather as all the others.
_EXTENDED: tuple[str, ...] = (*JOINTS, *VIRTUAL_JOINTS, "vertical")
_EXT_INDEX: dict[str, int] = {name: i for i, name in enumerate(_EXTENDED)}
_NECK, _MID_HIP, _VERTICAL = _EXT_INDEX["neck"], _EXT_INDEX["mid_hip"], _EXT_INDEX["vertical"]
_L_SHOULDER, _R_SHOULDER = JOINT_INDEX["left_shoulder"], JOINT_INDEX["right_shoulder"]
_L_HIP, _R_HIP = JOINT_INDEX["left_hip"], JOINT_INDEX["right_hip"]

ANGLES: dict[str, tuple[str, str, str]] = {
    "left_elbow": ("left_shoulder", "left_elbow", "left_wrist"),
    "right_elbow": ("right_shoulder", "right_elbow", "right_wrist"),
    "left_shoulder": ("left_elbow", "left_shoulder", "left_hip"),
    "right_shoulder": ("right_elbow", "right_shoulder", "right_hip"),
    "left_hip": ("left_shoulder", "left_hip", "left_knee"),
    "right_hip": ("right_shoulder", "right_hip", "right_knee"),
    "left_knee": ("left_hip", "left_knee", "left_ankle"),
    "right_knee": ("right_hip", "right_knee", "right_ankle"),
    "left_ankle": ("left_knee", "left_ankle", "left_foot_index"),
    "right_ankle": ("right_knee", "right_ankle", "right_foot_index"),
    "trunk_lean": ("neck", "mid_hip", "vertical"),
}
"""Angles in degrees (0–180) at the middle point of each triple; the trunk lean is 0 upright."""
ANGLE_NAMES: tuple[str, ...] = tuple(ANGLES)

DEFAULT_DISTANCES: tuple[tuple[str, str], ...] = (
    ("left_wrist", "right_wrist"),
    ("left_elbow", "right_elbow"),
    ("left_knee", "right_knee"),
    ("left_ankle", "right_ankle"),
    ("left_wrist", "left_hip"),
    ("right_wrist", "right_hip"),
)

# --- the seed's preset: OpenPose BODY-25 body segments measured against the plumb line
# (neck -> mid_hip). Fixed here: the left forearm has its own vector (the seed stored it under
# the right forearm's name), each arm pairs with its own forearm, neck_mid_hip pairs with
# nose_neck as its name says, and both sides have the same leg pairs. Two measures that are zero
# by construction are left out: the plumb line against itself, and the distances of neck and
# mid_hip (which lie on it) to the plumb line.
SEED_SEGMENTS: dict[str, tuple[str, str]] = {
    f"{a}_{b}": (a, b)
    for a, b in (
        ("nose", "neck"),
        ("neck", "mid_hip"),
        ("neck", "right_shoulder"),
        ("neck", "left_shoulder"),
        ("right_shoulder", "right_elbow"),
        ("right_elbow", "right_wrist"),
        ("left_shoulder", "left_elbow"),
        ("left_elbow", "left_wrist"),
        ("mid_hip", "right_hip"),
        ("right_hip", "right_knee"),
        ("right_knee", "right_ankle"),
        ("mid_hip", "left_hip"),
        ("left_hip", "left_knee"),
        ("left_knee", "left_ankle"),
        ("nose", "right_eye"),
        ("right_eye", "right_ear"),
        ("nose", "left_eye"),
        ("left_eye", "left_ear"),
        ("left_ankle", "left_foot_index"),
        ("left_ankle", "left_heel"),
        ("right_ankle", "right_foot_index"),
        ("right_ankle", "right_heel"),
    )
}
PLUMB_LINE = "neck_mid_hip"
SEED_SEGMENT_PAIRS: tuple[tuple[str, str], ...] = (
    *((s, PLUMB_LINE) for s in SEED_SEGMENTS if s != PLUMB_LINE),
    ("nose_neck", "neck_right_shoulder"),
    ("neck_mid_hip", "mid_hip_left_hip"),
    ("neck_right_shoulder", "right_shoulder_right_elbow"),
    ("neck_left_shoulder", "left_shoulder_left_elbow"),
    ("right_shoulder_right_elbow", "right_elbow_right_wrist"),
    ("left_shoulder_left_elbow", "left_elbow_left_wrist"),
    ("mid_hip_right_hip", "right_hip_right_knee"),
    ("mid_hip_left_hip", "left_hip_left_knee"),
    ("right_hip_right_knee", "right_knee_right_ankle"),
    ("left_hip_left_knee", "left_knee_left_ankle"),
    ("right_knee_right_ankle", "right_ankle_right_heel"),
    ("left_knee_left_ankle", "left_ankle_left_heel"),
    ("right_knee_right_ankle", "right_ankle_right_foot_index"),
    ("left_knee_left_ankle", "left_ankle_left_foot_index"),
    ("nose_right_eye", "right_eye_right_ear"),
    ("nose_left_eye", "left_eye_left_ear"),
    ("left_ankle_left_heel", "right_ankle_right_foot_index"),
)
SEED_PLUMB_JOINTS: tuple[str, ...] = (
    "nose",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
    "left_foot_index",
    "left_heel",
    "right_foot_index",
    "right_heel",
)

PRESETS: tuple[str, ...] = ("seed",)
POOLS: tuple[str, ...] = ("mean", "std", "min", "max", "delta")
MAX_FPS = 1000.0
"""The highest frame rate a window may be sampled at (high-speed cameras stay well below it)."""
GROUPS: tuple[str, ...] = ("normalized", "angles", "distances", "seed")
SPEC_VERSION = 1
_TRANSPOSE_BLOCK = 512  # frames per block when laying keypoints out as (dims, joints, frames)


class FeatureSpecError(ValueError):
    """A feature spec that names something this device cannot compute."""


def _check_names(kind: str, names: Iterable[str], allowed: Iterable[str]) -> None:
    allowed = set(allowed)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise FeatureSpecError(f"unknown {kind} {', '.join(map(repr, unknown))}")


@dataclass(frozen=True)
class FeatureSpec:
    """What to compute per frame. Serialized with :meth:`to_dict` into every bundle."""

    normalized: tuple[str, ...] = JOINTS
    angles: tuple[str, ...] = ANGLE_NAMES
    distances: tuple[tuple[str, str], ...] = DEFAULT_DISTANCES
    presets: tuple[str, ...] = ()
    z: bool = False
    min_visibility: float = 0.5

    def __post_init__(self) -> None:
        _check_names("joint", self.normalized, JOINTS)
        _check_names("angle", self.angles, ANGLE_NAMES)
        _check_names("distance joint", (j for pair in self.distances for j in pair), JOINTS)
        _check_names("preset", self.presets, PRESETS)
        if not 0.0 <= self.min_visibility <= 1.0:
            raise FeatureSpecError(f"min_visibility must be within 0..1, got {self.min_visibility}")

    @classmethod
    def from_groups(cls, groups: Sequence[str], z: bool = False, min_visibility: float = 0.5) -> FeatureSpec:
        """A spec with whole groups switched on: normalized, angles, distances, seed."""
        _check_names("feature group", groups, GROUPS)
        return cls(
            normalized=JOINTS if "normalized" in groups else (),
            angles=ANGLE_NAMES if "angles" in groups else (),
            distances=DEFAULT_DISTANCES if "distances" in groups else (),
            presets=("seed",) if "seed" in groups else (),
            z=z,
            min_visibility=min_visibility,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SPEC_VERSION,
            "normalized": list(self.normalized),
            "angles": list(self.angles),
            "distances": [list(p) for p in self.distances],
            "presets": list(self.presets),
            "z": self.z,
            "min_visibility": self.min_visibility,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Rebuild a spec; unknown keys, names or a newer version are refused, by name."""
        if not isinstance(data, dict):
            raise FeatureSpecError("a feature spec must be a JSON object")
        data = dict(data)
        version = data.pop("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise FeatureSpecError(f"feature spec version {version!r} is not supported (this device: 1)")
        known = {"normalized", "angles", "distances", "presets", "z", "min_visibility"}
        _check_names("feature spec key", data, known)
        try:
            kwargs: dict[str, Any] = {}
            for key in ("normalized", "angles", "presets"):
                if key in data:
                    kwargs[key] = tuple(str(v) for v in data[key])
            if "distances" in data:
                pairs = [tuple(str(j) for j in p) for p in data["distances"]]
                if any(len(p) != 2 for p in pairs):
                    raise FeatureSpecError("each distance must name two joints")
                kwargs["distances"] = tuple(pairs)
            if "z" in data:
                kwargs["z"] = bool(data["z"])
            if "min_visibility" in data:
                kwargs["min_visibility"] = float(data["min_visibility"])
        except TypeError as exc:
            raise FeatureSpecError(f"malformed feature spec ({exc})") from exc
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path) -> FeatureSpec:
        """Read a spec from a JSON file; errors name the file."""
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except OSError as exc:
            raise FeatureSpecError(f"{path}: cannot read ({exc.strerror})") from exc
        except (json.JSONDecodeError, FeatureSpecError) as exc:
            raise FeatureSpecError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class WindowSpec:
    """How per-frame features become one row per window of ``size`` frames every ``stride``.

    ``fps`` is the frame rate those frames were sampled at (the training data's), which makes a
    window a span of time: ``(size - 1) / fps`` seconds, one every ``stride / fps`` seconds. A
    kiosk running pose at another rate resamples to ``fps`` first (:mod:`device.window`). None
    while the rate is unknown (a table without timestamps); a bundle's window always has one.
    """

    size: int
    stride: int = 1
    flatten: bool = False
    pool: tuple[str, ...] = field(default=("mean", "std", "min", "max", "delta"))
    fps: float | None = None

    def __post_init__(self) -> None:
        if self.size < 1 or self.stride < 1:
            raise FeatureSpecError(f"window size and stride must be >= 1, got {self.size}, {self.stride}")
        if self.fps is not None and not 0 < self.fps <= MAX_FPS:
            raise FeatureSpecError(f"window fps must be within 0..{MAX_FPS:g}, got {self.fps}")
        _check_names("pooling statistic", self.pool, POOLS)
        if not self.flatten and not self.pool:
            raise FeatureSpecError("a window needs flattening, pooling or both")

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "stride": self.stride,
            "flatten": self.flatten,
            "pool": list(self.pool),
            "fps": self.fps,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WindowSpec:
        _check_names("window key", data, {"size", "stride", "flatten", "pool", "fps"})
        fps = data.get("fps")
        return cls(
            size=int(data["size"]),
            stride=int(data.get("stride", 1)),
            flatten=bool(data.get("flatten", False)),
            pool=tuple(data.get("pool", POOLS)),
            fps=None if fps is None else float(fps),
        )

    @property
    def duration_s(self) -> float | None:
        """Seconds from the window's first sample to its last, or None without a frame rate."""
        return None if self.fps is None else (self.size - 1) / self.fps

    @property
    def step_s(self) -> float | None:
        """Seconds from one window to the next, or None without a frame rate."""
        return None if self.fps is None else self.stride / self.fps


def _indices(names: Iterable[str]) -> np.ndarray:
    return np.array([_EXT_INDEX[n] for n in names], dtype=np.intp)


def _selector(index: np.ndarray) -> np.ndarray | slice:
    """A slice when the positions are consecutive: indexing then makes a view, not a copy."""
    if len(index) > 1 and (np.diff(index) == 1).all():
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


class FeatureEngine:
    """Computes a spec's features for whole arrays of frames.

    Construction resolves every name to index arrays once; :meth:`compute` then does a fixed,
    small number of vectorized operations regardless of how many features the spec has.
    """

    def __init__(self, spec: FeatureSpec | None = None) -> None:
        self.spec = spec or FeatureSpec()
        s = self.spec
        self.dims = 3 if s.z else 2
        axes = ("x", "y", "z")[: self.dims]
        self._norm_count = len(s.normalized)
        self._norm_joints = _selector(_indices(s.normalized))

        # every angle is between (head1 - tail1) and (head2 - tail2): one gather for all of them
        pairs: list[tuple[str, str, str, str]] = [
            (a, b, c, b) for a, b, c in (ANGLES[name] for name in s.angles)
        ]
        angle_names = [f"angle.{a}" for a in s.angles]
        seed_angle_names: list[str] = []
        if "seed" in s.presets:
            for first, second in SEED_SEGMENT_PAIRS:
                (a1, b1), (a2, b2) = SEED_SEGMENTS[first], SEED_SEGMENTS[second]
                pairs.append((b1, a1, b2, a2))
                target = "plumb_line" if second == PLUMB_LINE else second
                seed_angle_names.append(f"seed.angle.{first}_to_{target}")
        self._angle_idx = tuple(_indices(col) for col in zip(*pairs, strict=True)) if pairs else None

        dist_pairs = list(s.distances)
        self._dist_a = _indices(a for a, _ in dist_pairs)
        self._dist_b = _indices(b for _, b in dist_pairs)
        self._plumb_joints = _indices(SEED_PLUMB_JOINTS if "seed" in s.presets else ())

        names = [f"joint.{j}.{axis}_norm" for j in s.normalized for axis in axes]
        names += angle_names + seed_angle_names
        names += [f"seed.dist.{j}_to_plumb_line" for j in SEED_PLUMB_JOINTS if "seed" in s.presets]
        names += [f"dist.{a}.{b}" for a, b in dist_pairs]
        self.names: tuple[str, ...] = tuple(names)

    def compute(self, points: np.ndarray) -> np.ndarray:
        """Features of ``(frames, 33, C)`` keypoints as a ``(frames, len(names))`` float64 array.

        Internally coordinates are laid out as ``(dims, joints, frames)``, so that every gather
        of a joint picks one contiguous row of frames; the result is a transposed view of a
        ``(features, frames)`` buffer (Fortran-ordered), which every numpy consumer accepts.
        """
        if points.ndim != 3 or points.shape[1] != len(JOINTS):
            raise ValueError(f"expected keypoints of shape (frames, 33, C), got {points.shape}")
        n, d = points.shape[0], self.dims
        ext = np.empty((d, len(_EXTENDED), n))
        joints = ext[:, : len(JOINTS)]
        for start in range(0, n, _TRANSPOSE_BLOCK):  # blockwise: a whole-array transpose thrashes the cache
            stop = start + _TRANSPOSE_BLOCK
            joints[:, :, start:stop] = points[start:stop, :, :d].transpose(2, 1, 0)
        if self.spec.min_visibility > 0:
            hidden = self.spec.min_visibility > points[:, :, VISIBILITY].T
            np.copyto(joints, np.nan, where=hidden[None])
        np.add(ext[:, _L_SHOULDER], ext[:, _R_SHOULDER], out=ext[:, _NECK])
        ext[:, _NECK] *= 0.5
        np.add(ext[:, _L_HIP], ext[:, _R_HIP], out=ext[:, _MID_HIP])
        ext[:, _MID_HIP] *= 0.5
        neck, origin = ext[:, _NECK], ext[:, _MID_HIP]
        ext[:, _VERTICAL] = origin
        ext[1, _VERTICAL] -= 1.0  # image y points down
        plumb = origin - neck  # neck -> mid_hip, (d, n)
        with np.errstate(invalid="ignore", divide="ignore"):
            inv_torso = 1.0 / np.sqrt(np.einsum("dn,dn->n", plumb, plumb))
        inv_torso[~np.isfinite(inv_torso)] = np.nan

        out = np.empty((len(self.names), n))
        col = 0
        k = self._norm_count
        if k:
            block = out[col : col + k * d].reshape(k, d, n).transpose(1, 0, 2)  # (d, k, n) view
            np.subtract(ext[:, self._norm_joints], origin[:, None], out=block)
            block *= inv_torso
            col += k * d
        if self._angle_idx is not None:
            h1, t1, h2, t2 = self._angle_idx
            k = len(h1)
            _angle_between(ext[:, h1] - ext[:, t1], ext[:, h2] - ext[:, t2], out=out[col : col + k])
            col += k
        k = len(self._plumb_joints)
        if k:
            rel = ext[:, self._plumb_joints] - neck[:, None]  # (d, k, n)
            if d == 2:
                cross = np.abs(rel[0] * plumb[1] - rel[1] * plumb[0])
            else:
                cross = np.linalg.norm(np.cross(rel, plumb[:, None], axis=0), axis=0)
            np.multiply(cross, inv_torso * inv_torso, out=out[col : col + k])
            col += k
        k = len(self._dist_a)
        if k:
            diff = ext[:, self._dist_a] - ext[:, self._dist_b]
            np.multiply(np.sqrt(np.einsum("dkn,dkn->kn", diff, diff)), inv_torso, out=out[col : col + k])
        return out.T

    def definitions(self) -> list[tuple[str, str]]:
        """Every column name with a one-line definition, for ``features --list`` and README."""
        return [(name, describe(name)) for name in self.names]


def _angle_between(u: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
    """Angles in degrees between ``(dims, k, frames)`` vectors into ``out`` ``(k, frames)``.

    ``atan2(|u x v|, u . v)`` is accurate near 0 and 180 degrees, where ``arccos`` is not. A
    vector of zero length has no direction, so its angle is NaN.
    """
    dot = np.einsum("dkn,dkn->kn", u, v)
    if len(u) == 2:
        cross = np.abs(u[0] * v[1] - u[1] * v[0])
    else:
        cross = np.linalg.norm(np.cross(u, v, axis=0), axis=0)
    np.arctan2(cross, dot, out=out)
    np.degrees(out, out=out)
    degenerate = (dot == 0) & (cross == 0)
    if degenerate.any():
        out[degenerate] = np.nan


def describe(name: str) -> str:
    """A human definition of a feature or window column name."""
    head, _, rest = name.partition(".")
    if head in POOLS:
        what = {
            "mean": "mean over the window of",
            "std": "standard deviation (population) over the window of",
            "min": "minimum over the window of",
            "max": "maximum over the window of",
            "delta": "last minus first frame of the window of",
        }[head]
        return f"{what} {rest}"
    if head.startswith("f") and head[1:].isdigit():
        return f"frame {head[1:]} of the window (0 = oldest): {rest}"
    if head == "joint":
        joint, axis = rest.rsplit(".", 1)
        return f"{joint} {axis[0]} relative to mid_hip, in torso lengths (mid-shoulder to mid-hip)"
    if name == "angle.trunk_lean":
        return "angle of mid_hip->neck against the image vertical, degrees (0 = upright)"
    if head == "angle":
        a, b, c = ANGLES[rest]
        return f"angle at {b} between {a} and {c}, degrees 0-180"
    if head == "dist":
        a, b = rest.split(".")
        return f"distance {a} to {b}, in torso lengths"
    if name.startswith("seed.angle."):
        first, second = rest[len("angle.") :].split("_to_")
        second = "plumb line (neck->mid_hip)" if second == "plumb_line" else f"segment {second}"
        return f"seed preset: angle between segment {first} and {second}, degrees 0-180"
    if name.startswith("seed.dist."):
        joint = rest[len("dist.") :].removesuffix("_to_plumb_line")
        return f"seed preset: distance of {joint} to the plumb line (neck->mid_hip), in torso lengths"
    raise KeyError(name)


# --------------------------------------------------------------------------- windows


def window_names(frame_names: Sequence[str], window: WindowSpec) -> tuple[str, ...]:
    """Column names of a window row: flattened ``f<k>.<feature>`` first, then pooled stats."""
    names: list[str] = []
    if window.flatten:
        names += [f"f{k}.{f}" for k in range(window.size) for f in frame_names]
    names += [f"{stat}.{f}" for stat in window.pool for f in frame_names]
    return tuple(names)


def window_starts(frames: int, window: WindowSpec) -> np.ndarray:
    """Index of the first frame of every complete window in ``frames`` frames."""
    if frames < window.size:
        return np.empty(0, dtype=np.intp)
    return np.arange(0, frames - window.size + 1, window.stride, dtype=np.intp)


def window_features(features: np.ndarray, window: WindowSpec) -> np.ndarray:
    """One row per complete window of per-frame ``(frames, m)`` features.

    Pooling ignores NaN frames (a window where a feature is never defined stays NaN); ``std`` is
    the population standard deviation; ``delta`` is last minus first frame.
    """
    n, m = features.shape
    starts = window_starts(n, window)
    if not len(starts):
        return np.empty((0, len(window_names(range(m), window))))
    # (windows, size, m) view without copying
    stack = np.lib.stride_tricks.sliding_window_view(features, window.size, axis=0)[starts]
    stack = stack.transpose(0, 2, 1)
    parts = []
    if window.flatten:
        parts.append(stack.reshape(len(starts), window.size * m))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows give NaN, as intended
        for stat in window.pool:
            if stat == "mean":
                parts.append(np.nanmean(stack, axis=1))
            elif stat == "std":
                parts.append(np.nanstd(stack, axis=1))
            elif stat == "min":
                parts.append(np.nanmin(stack, axis=1))
            elif stat == "max":
                parts.append(np.nanmax(stack, axis=1))
            else:
                parts.append(stack[:, -1] - stack[:, 0])
    return np.concatenate(parts, axis=1)
