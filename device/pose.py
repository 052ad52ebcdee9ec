"""Pose detection with MediaPipe's ``PoseLandmarker``, working without any download.

MediaPipe's Tasks API loads a ``.task`` model bundle that is normally downloaded on first use; a
kiosk may never see the internet. The mediapipe wheel does ship the two BlazePose networks (the
detector and the *full* landmark model), so :func:`offline_task_path` assembles a ``.task`` from
them once and caches it. The landmark network lacks the metadata the Tasks API requires (how to
normalize the input image), which is added with mediapipe's own ``MetadataWriter``.

:class:`PoseEstimator` returns plain numpy arrays in the layout of :mod:`device.keypoints`
(``(poses, 33, 5)``: x, y in pixels, z in the same pixel scale, visibility, presence), so nothing
downstream ever touches MediaPipe's objects.
"""

from __future__ import annotations

import os
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mediapipe as mp
import numpy as np
from mediapipe.tasks.python import BaseOptions, vision
from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer, model_asset_bundle_utils

from device.keypoints import CHANNELS, JOINTS, X, Y

# The members of a pose landmarker ``.task`` bundle, as MediaPipe's graph looks them up.
DETECTOR_MEMBER = "pose_detector.tflite"
LANDMARKER_MEMBER = "pose_landmarks_detector.tflite"

_MODULES = Path(mp.__file__).resolve().parent / "modules"
_SHIPPED_DETECTOR = _MODULES / "pose_detection" / "pose_detection.tflite"
_SHIPPED_LANDMARKER = _MODULES / "pose_landmark" / "pose_landmark_full.tflite"
# The landmark network's output tensors, in the order the BlazePose graph reads them.
_LANDMARKER_OUTPUTS = ("landmarks", "pose_flag", "segmentation", "heatmap", "world_landmarks")
# The version is part of the name so that upgrading mediapipe builds a fresh bundle from its models.
_OFFLINE_TASK_NAME = f"pose_landmarker_full-mediapipe-{mp.__version__}.task"
_REINSTALL_HINT = f"reinstall mediapipe=={mp.__version__} with `make venv`"
_TASK_HINT = "pass a valid pose landmarker .task file with --pose-model"


class PoseModelError(ValueError):
    """A pose model that is missing or unusable; the one-line message names the path and the fix."""


def default_cache_dir() -> Path:
    """Where built models live: ``$MOVEMENT_EDGE_CACHE``, else the XDG cache folder."""
    explicit = os.environ.get("MOVEMENT_EDGE_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "movement-edge"


def _task_problem(path: Path) -> str | None:
    """What is wrong with a pose landmarker ``.task`` file, or None when it looks usable."""
    if not path.is_file():
        return "no such pose model file"
    try:
        with zipfile.ZipFile(path) as bundle:
            members = set(bundle.namelist())
    except (OSError, zipfile.BadZipFile) as exc:
        return f"not a pose landmarker .task bundle ({exc})"
    missing = sorted({DETECTOR_MEMBER, LANDMARKER_MEMBER} - members)
    return f"the .task bundle lacks {', '.join(missing)}" if missing else None


def check_task_file(path: Path) -> None:
    """Raise :class:`PoseModelError` unless ``path`` is a zip holding both pose networks.

    MediaPipe's own error for a bad file is a bare ``RuntimeError`` from deep in C++; checking
    the bundle first tells the user which file is wrong and what to do about it.
    """
    problem = _task_problem(path)
    if problem:
        raise PoseModelError(f"{path}: {problem}; {_TASK_HINT}")


def _read_shipped(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PoseModelError(
            f"{path}: mediapipe's pose model is missing or unreadable ({exc.strerror}); {_REINSTALL_HINT}"
        ) from exc


def _landmarker_with_metadata(model: bytes) -> bytes:
    """The shipped landmark network plus the metadata the Tasks API insists on.

    The network takes float RGB in [0, 1]; ``norm_mean=0, norm_std=255`` tells the Tasks API to
    divide uint8 pixels by 255. Each output tensor needs a metadata entry, even a bare one.
    """
    writer = metadata_writer.MetadataWriter.create(bytearray(model))
    writer.add_general_info("pose_landmark_full", "BlazePose GHUM 3D full landmark model")
    writer.add_image_input(norm_mean=[0.0], norm_std=[255.0])
    for name in _LANDMARKER_OUTPUTS:
        writer.add_feature_output(name=name)
    try:
        content, _ = writer.populate()
    except ValueError as exc:  # the metadata does not match the network: not the model we expect
        raise PoseModelError(
            f"{_SHIPPED_LANDMARKER}: unexpected pose landmark model ({exc}); {_REINSTALL_HINT}"
        ) from exc
    return bytes(content)


def offline_task_path(cache_dir: Path | None = None) -> Path:
    """The path of a pose landmarker ``.task`` built from mediapipe's shipped models.

    Built on first use (well under a second) and cached in ``cache_dir`` (default:
    :func:`default_cache_dir`). The bundle is written to a temporary file and renamed into place,
    so a crash never leaves a half-written model, and concurrent builders cannot corrupt each
    other; a cached file that is not a valid bundle is rebuilt.
    """
    cache_dir = cache_dir or default_cache_dir()
    target = cache_dir / _OFFLINE_TASK_NAME
    if _task_problem(target) is None:
        return target
    models = {
        DETECTOR_MEMBER: _read_shipped(_SHIPPED_DETECTOR),
        LANDMARKER_MEMBER: _landmarker_with_metadata(_read_shipped(_SHIPPED_LANDMARKER)),
    }
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=cache_dir)
        os.close(fd)
        try:
            # MediaPipe's bundler stores members uncompressed and aligned, so they can be mmapped.
            model_asset_bundle_utils.create_model_asset_bundle(models, temp_name)
            with open(temp_name, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temp_name, target)
        finally:
            if os.path.exists(temp_name):
                os.unlink(temp_name)
    except OSError as exc:
        raise PoseModelError(
            f"{cache_dir}: cannot write the pose model cache ({exc.strerror or exc}); "
            "set MOVEMENT_EDGE_CACHE to a writable folder"
        ) from exc
    return target


@dataclass(frozen=True)
class PoseOptions:
    """How to detect poses. ``model_path`` None means the offline bundle of :func:`offline_task_path`.

    Any official pose landmarker ``.task`` (lite, full, heavy) may be given instead.
    """

    model_path: Path | None = None
    num_poses: int = 1
    min_detection_confidence: float = 0.5
    min_presence_confidence: float = 0.5
    min_tracking_confidence: float = 0.5

    def __post_init__(self) -> None:
        if self.num_poses < 1:
            raise ValueError(f"num_poses must be at least 1, got {self.num_poses}")
        for name in ("min_detection_confidence", "min_presence_confidence", "min_tracking_confidence"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")


DEFAULT_POSE_OPTIONS = PoseOptions()

_NO_POSE = np.empty((0, len(JOINTS), len(CHANNELS)))
_NO_POSE.setflags(write=False)


class PoseEstimator:
    """Detects people in RGB images; one instance per thread (MediaPipe graphs are not shared).

    ``mode="video"`` tracks people from frame to frame (faster and steadier than detecting anew),
    which needs strictly increasing timestamps; ``mode="image"`` treats every image on its own.
    """

    def __init__(
        self, options: PoseOptions = DEFAULT_POSE_OPTIONS, mode: Literal["video", "image"] = "video"
    ):
        if mode not in ("video", "image"):
            raise ValueError(f"mode must be 'video' or 'image', got {mode!r}")
        path = options.model_path or offline_task_path()
        check_task_file(path)
        task_options = vision.PoseLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(path.resolve())),
            running_mode=vision.RunningMode.VIDEO if mode == "video" else vision.RunningMode.IMAGE,
            num_poses=options.num_poses,
            min_pose_detection_confidence=options.min_detection_confidence,
            min_pose_presence_confidence=options.min_presence_confidence,
            min_tracking_confidence=options.min_tracking_confidence,
        )
        try:
            self._landmarker: vision.PoseLandmarker | None = vision.PoseLandmarker.create_from_options(
                task_options
            )
        except (RuntimeError, ValueError) as exc:
            raise PoseModelError(f"{path}: MediaPipe cannot load this model ({exc}); {_TASK_HINT}") from exc
        self.mode = mode
        self.model_path = path
        self._last_timestamp_ms = -1
        self._clock_origin = time.monotonic()
        self._offset_ms = 0.0  # added to the caller's timestamps, so a restarted clip's keep increasing
        self._restart = False

    def restart(self) -> None:
        """Let the next frame begin a new clip without building a new graph.

        Building a landmarker takes 0.15-0.4 s and holds Python's GIL the whole time: every
        thread of the process stalls (measured: 158 ms). A kiosk looping a playlist or reopening
        a camera restarts instead. The next frame is preceded by an empty image, on which the
        tracker loses its person, so it detects afresh; timestamps continue after a gap. The
        keypoints then match a fresh graph's on most frames exactly and on all within 4 px (0.3 %
        of the height) on the sample videos — not bit for bit, as some filter state survives,
        which is why replay and ``trainer extract`` build a fresh graph per video.
        """
        self._restart = True

    def detect(self, rgb: np.ndarray, timestamp_ms: float | None = None) -> np.ndarray:
        """The poses in one RGB image: a read-only float64 array ``(poses_found, 33, 5)``.

        ``rgb`` is uint8 ``(height, width, 3)`` in RGB order; OpenCV decodes BGR, so callers
        convert with ``cv2.cvtColor(image, cv2.COLOR_BGR2RGB)``. x and y are pixels of this
        image, z is MediaPipe's z times the width, then visibility and presence. No person gives
        shape ``(0, 33, 5)``.

        In video mode, ``timestamp_ms`` is the frame's time (default: a monotonic clock). MediaPipe
        rejects a timestamp that does not increase; a repeated or earlier one (a camera glitch, a
        file with broken timestamps) is moved 1 ms after the previous frame instead of failing.
        """
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected a uint8 RGB image (height, width, 3), got {rgb.dtype} {rgb.shape}")
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        if self.mode == "image":
            result = self._landmarker.detect(image)
        else:
            if timestamp_ms is None:
                timestamp_ms = (time.monotonic() - self._clock_origin) * 1000.0
            if self._restart:
                empty = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.zeros_like(rgb))
                self._landmarker.detect_for_video(empty, self._last_timestamp_ms + 1000)
                self._offset_ms = self._last_timestamp_ms + 2000 - timestamp_ms
                self._last_timestamp_ms += 1000
                self._restart = False
            stamp = max(round(timestamp_ms + self._offset_ms), self._last_timestamp_ms + 1)
            self._last_timestamp_ms = stamp
            result = self._landmarker.detect_for_video(image, stamp)
        if not result.pose_landmarks:
            return _NO_POSE
        height, width = rgb.shape[:2]
        # One numpy call over all landmarks; a landmark without a score (None) becomes NaN.
        poses = np.array(
            [[(p.x, p.y, p.z, p.visibility, p.presence) for p in pose] for pose in result.pose_landmarks],
            dtype=np.float64,
        )
        poses[..., :3] *= (width, height, width)
        poses.setflags(write=False)
        return poses

    def close(self) -> None:
        """Release MediaPipe's graph and its threads; closing twice is harmless."""
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> PoseEstimator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def main_pose(poses: np.ndarray) -> np.ndarray | None:
    """The one person the system follows: the largest in the image (usually the nearest).

    Detecting more than one person (``num_poses``) keeps a bystander from being tracked in place
    of the subject; frame files and windows still hold one person per frame.
    """
    if len(poses) <= 1:
        return poses[0] if len(poses) else None
    xy = poses[:, :, [X, Y]]
    extent = np.nanmax(xy, axis=1) - np.nanmin(xy, axis=1)
    return poses[int(np.argmax(extent[:, 0] * extent[:, 1]))]
