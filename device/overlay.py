"""The live picture of the status page: the newest frame with the skeleton and the current label.

Drawing happens only when somebody looks (``/frame.jpg``, ``/stream.mjpg``), never in the
pipeline, so an unwatched kiosk spends nothing on it. The frame is downscaled first because a
phone-sized view of a 1080p camera needs a quarter of the pixels, which makes both drawing and
JPEG encoding four times cheaper on a Raspberry Pi.
"""

from __future__ import annotations

import cv2
import numpy as np

from device.keypoints import JOINT_INDEX, VISIBILITY, X, Y
from device.stations import Station
from device.status import LiveView, PersonView

BONES: tuple[tuple[str, str], ...] = (
    # face
    ("nose", "left_eye_inner"),
    ("left_eye_inner", "left_eye"),
    ("left_eye", "left_eye_outer"),
    ("left_eye_outer", "left_ear"),
    ("nose", "right_eye_inner"),
    ("right_eye_inner", "right_eye"),
    ("right_eye", "right_eye_outer"),
    ("right_eye_outer", "right_ear"),
    ("mouth_left", "mouth_right"),
    # shoulders, arms and hands
    ("left_shoulder", "right_shoulder"),
    ("left_shoulder", "left_elbow"),
    ("left_elbow", "left_wrist"),
    ("left_wrist", "left_pinky"),
    ("left_wrist", "left_index"),
    ("left_wrist", "left_thumb"),
    ("left_pinky", "left_index"),
    ("right_shoulder", "right_elbow"),
    ("right_elbow", "right_wrist"),
    ("right_wrist", "right_pinky"),
    ("right_wrist", "right_index"),
    ("right_wrist", "right_thumb"),
    ("right_pinky", "right_index"),
    # torso
    ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"),
    ("left_hip", "right_hip"),
    # legs and feet
    ("left_hip", "left_knee"),
    ("left_knee", "left_ankle"),
    ("left_ankle", "left_heel"),
    ("left_heel", "left_foot_index"),
    ("left_ankle", "left_foot_index"),
    ("right_hip", "right_knee"),
    ("right_knee", "right_ankle"),
    ("right_ankle", "right_heel"),
    ("right_heel", "right_foot_index"),
    ("right_ankle", "right_foot_index"),
)
"""The 35 connections of MediaPipe's ``POSE_CONNECTIONS``, by joint name."""

MIN_VISIBILITY = 0.5
"""Joints MediaPipe itself considers probably hidden are not drawn (nor their bones)."""

BONE_PAIRS: tuple[tuple[int, int], ...] = tuple((JOINT_INDEX[a], JOINT_INDEX[b]) for a, b in BONES)
"""The bones as joint indices (``/api/pose`` gives them, so a page draws what this module draws)."""

_BONE_INDEX = np.array(BONE_PAIRS, dtype=np.intp)
# One colour per body side, so a mirrored or crossed pose is readable at a glance (BGR).
_LEFT, _RIGHT, _CENTER = (0, 165, 255), (255, 200, 0), (235, 235, 235)
_SIDE_COLORS = (_LEFT, _RIGHT, _CENTER)


def _side(a: str, b: str) -> int:
    """Index into ``_SIDE_COLORS``: a bone joining both sides (or on the face's midline) is central."""
    for side, prefix in enumerate(("left_", "right_")):
        if a.startswith(prefix) and b.startswith(prefix):
            return side
    return 2


_SIDE_MASKS = tuple(np.array([_side(a, b) == side for a, b in BONES]) for side in range(len(_SIDE_COLORS)))
_OUTLINE = (20, 20, 20)
_STATION = (80, 220, 120)  # stations in green (BGR)
_SHIFT = 4  # sub-pixel precision bits for OpenCV's anti-aliased drawing
_FONT = cv2.FONT_HERSHEY_DUPLEX


def draw_view(view: LiveView, max_width: int = 960, *, banner: bool = True) -> np.ndarray:
    """A new BGR image: ``view.image`` at most ``max_width`` wide, with the skeletons, the
    stations and (unless ``banner`` is False) the label banner.

    The view's image is shared and read-only; it is never modified.
    """
    image = view.image
    scale = min(1.0, max_width / image.shape[1])
    if scale < 1.0:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        canvas = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    else:
        canvas = image.copy()
    thickness = max(2, round(canvas.shape[1] / 240))
    for station in view.stations:
        _draw_station(canvas, station, scale, thickness)
    if view.people:  # several people classified: each skeleton tagged with its id and label
        for person in view.people:
            _draw_skeleton(canvas, person.points, scale, thickness)
            _draw_tag(canvas, person, scale)
    elif view.points is not None:
        _draw_skeleton(canvas, view.points, scale, thickness)
    if banner:
        _draw_banner(canvas, view)
    return canvas


def _draw_station(canvas: np.ndarray, station: Station, scale: float, thickness: int) -> None:
    """The station's outline and its name at its first corner, so a mat's owner can see its edges."""
    corners = np.round(np.asarray(station.polygon) * scale * (1 << _SHIFT)).astype(np.int32)
    cv2.polylines(canvas, [corners], True, _STATION, max(1, thickness // 2), cv2.LINE_AA, _SHIFT)
    x, y = (int(v) for v in np.asarray(station.polygon[0]) * scale)
    _label(canvas, station.name, (x + 4, y + 4), _STATION, centered=False)


def _draw_tag(canvas: np.ndarray, person: PersonView, scale: float) -> None:
    """``#2 squat`` above the person's highest visible joint."""
    xy = person.points[:, [X, Y]] * scale
    visible = np.isfinite(xy).all(axis=1) & (person.points[:, VISIBILITY] >= MIN_VISIBILITY)
    if not visible.any():
        return
    x = float(np.median(xy[visible, 0]))
    y = float(xy[visible, 1].min())
    text = f"#{person.person}" + (f" {person.label}" if person.label else "")
    _label(canvas, text, (round(x), round(y) - 28), (255, 255, 255), centered=True)


def _label(
    canvas: np.ndarray, text: str, at: tuple[int, int], color: tuple[int, int, int], *, centered: bool
) -> None:
    """Text on a dark box whose top edge is at ``at`` (its middle, or its left end unless
    ``centered``), moved inside the image where it would leave it."""
    font_scale = max(0.4, canvas.shape[1] / 1600)
    (width, height), base = cv2.getTextSize(text, _FONT, font_scale, 1)
    left = at[0] - width // 2 if centered else at[0]
    x = int(np.clip(left, 0, max(0, canvas.shape[1] - width - 4)))
    y = int(np.clip(at[1], 0, max(0, canvas.shape[0] - height - base - 4)))
    cv2.rectangle(canvas, (x, y), (x + width + 4, y + height + base + 4), _OUTLINE, -1)
    cv2.putText(canvas, text, (x + 2, y + height + 2), _FONT, font_scale, color, 1, cv2.LINE_AA)


def _draw_skeleton(canvas: np.ndarray, points: np.ndarray, scale: float, thickness: int) -> None:
    """Bones between visible joints in one ``polylines`` call per side, then the joints on top."""
    xy = points[:, [X, Y]] * scale
    # NaN (no person, or a joint the source lacks) compares False, so it is never "visible".
    visible = np.isfinite(xy).all(axis=1) & (points[:, VISIBILITY] >= MIN_VISIBILITY)
    # Clip before the integer conversion: a wild estimate far off-image must not overflow.
    limit = 4 * max(canvas.shape)
    fixed = np.round(np.clip(np.nan_to_num(xy), -limit, limit) * (1 << _SHIFT)).astype(np.int32)
    drawn = visible[_BONE_INDEX].all(axis=1)
    segments = fixed[_BONE_INDEX]  # (bones, 2, 2)
    if drawn.any():
        cv2.polylines(canvas, list(segments[drawn]), False, _OUTLINE, thickness + 2, cv2.LINE_AA, _SHIFT)
        for mask, color in zip(_SIDE_MASKS, _SIDE_COLORS, strict=True):
            chosen = drawn & mask
            if chosen.any():
                cv2.polylines(canvas, list(segments[chosen]), False, color, thickness, cv2.LINE_AA, _SHIFT)
    radius = (thickness + 1) << _SHIFT
    for x, y in fixed[visible]:
        cv2.circle(canvas, (int(x), int(y)), radius, (255, 255, 255), -1, cv2.LINE_AA, _SHIFT)
        cv2.circle(canvas, (int(x), int(y)), radius, _OUTLINE, 1, cv2.LINE_AA, _SHIFT)


def _draw_banner(canvas: np.ndarray, view: LiveView) -> None:
    """A darkened strip across the top with the activity's count, the label, the confidence and a
    confidence bar.

    OpenCV's Hershey fonts cover ASCII only; the page shows the label in full beside the image.
    """
    height, width = canvas.shape[:2]
    banner = max(28, round(min(width, height) * 0.1))
    canvas[:banner] = cv2.convertScaleAbs(canvas[:banner], alpha=0.3)
    prediction = view.prediction
    if prediction is None:
        text, confidence = "waiting for a classification", None
    else:
        text, confidence = f"{prediction.label}  {prediction.confidence:.0%}", prediction.confidence
    if view.points is None:
        text += "  (no person)"
    if view.counter:
        text = f"{view.counter}  |  {text}"
    margin = max(6, banner // 5)
    font_scale = banner / 50
    (text_width, text_height), _ = cv2.getTextSize(text, _FONT, font_scale, 1)
    if text_width > width - 2 * margin:  # shrink a long label to fit rather than cut it off
        font_scale *= (width - 2 * margin) / text_width
        (_, text_height), _ = cv2.getTextSize(text, _FONT, font_scale, 1)
    weight = max(1, round(font_scale * 2))
    baseline_y = (banner + text_height) // 2
    cv2.putText(canvas, text, (margin, baseline_y), _FONT, font_scale, (255, 255, 255), weight, cv2.LINE_AA)
    if confidence is not None:
        bar = max(3, banner // 12)
        cv2.rectangle(canvas, (0, banner - bar), (round(width * confidence), banner - 1), (90, 200, 60), -1)


def encode_jpeg(image: np.ndarray, quality: int = 80) -> bytes:
    """JPEG bytes of a BGR image; quality 80 keeps a 720p view near 100 KB for the 10 fps stream."""
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not encode an image of shape {image.shape} as JPEG")
    return buffer.tobytes()
