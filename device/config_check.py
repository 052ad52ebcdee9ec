"""``check-config`` beyond keys and values: the files and devices a configuration names.

:func:`device.config.load_config` proves a configuration well-formed; it still fails at start
when a trusted key, the bundle, a video or the camera is missing, or the daemon's user cannot
use them. :func:`check_files` tries each of them the way the daemon will, for the user running
the check, and returns one line per problem (the key, the path, what is wrong), so that one run
lists everything to fix. Nothing is changed and nothing runs: no network connection is made (a
stream URL and the MQTT broker are left to the daemon's own reconnecting), no frame is read.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device.certificates import CertificateError, check_server_pair
from device.config import CameraSource, Config, FileSource, GStreamerSource, PiCameraSource
from device.model.bundle import BundleError, load_public_key, open_bundle

Check = Callable[[Config], Iterator[str]]


def check_files(config: Config) -> list[str]:
    """Every problem with what ``config`` names, one line each; empty when the daemon can use it all."""
    return [problem for check in CHECKS for problem in check(config)]


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:  # a container's uid without a passwd entry
        return f"uid {uid}"


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file by this user (missing, a folder, permissions), or None."""
    try:
        with path.open("rb"):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def _not_creatable(folder: Path) -> str | None:
    """Why the daemon could not write in ``folder``, creating it (and its parents) if missing."""
    existing = folder
    try:
        while not existing.exists():
            existing = existing.parent
    except OSError as exc:
        return f"{existing}: {exc.strerror}"
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if os.access(existing, os.W_OK | os.X_OK):
        return None
    return f"{existing} is not writable by {_user()}"


def _state(config: Config) -> Iterator[str]:
    """The state folder (outbox, models) and the outbox file, created at start when missing."""
    problem = _not_creatable(config.device.state_dir)
    if problem:
        yield f"device.state_dir {config.device.state_dir}: {problem}"
    outbox = config.outbox.path
    if outbox is not None:
        problem = _not_creatable(outbox.parent)
        if problem:
            yield f"outbox.path {outbox}: {problem}"
        elif outbox.exists() and not os.access(outbox, os.R_OK | os.W_OK):
            yield f"outbox.path {outbox}: not readable and writable by {_user()}"


def _source(config: Config) -> Iterator[str]:
    """Video files open as videos; the camera device is there and usable; the camera stack exists."""
    source = config.source
    if isinstance(source, FileSource):
        from device.sources import SourceError, VideoFileSource

        for index, path in enumerate(source.paths):
            problem = _unreadable(path)
            if problem is None:
                try:
                    VideoFileSource(path).close()
                except SourceError as exc:
                    problem = str(exc).removeprefix(f"{path}: ")
            if problem:
                yield f"source.paths.{index} {path}: {problem}"
    elif isinstance(source, CameraSource):
        problem = _camera_problem(source.device)
        if problem:
            yield f"source.device {source.device}: {problem}"
    elif isinstance(source, PiCameraSource) and importlib.util.find_spec("picamera2") is None:
        yield "source.kind picamera2: the picamera2 module is not installed (apt install python3-picamera2)"
    elif isinstance(source, GStreamerSource):
        import cv2

        if "GStreamer:                   YES" not in cv2.getBuildInformation():
            yield f"source.kind gstreamer: this OpenCV ({cv2.__version__}) is built without GStreamer"


def _camera_problem(device: int | str) -> str | None:
    """OpenCV opens camera index N as ``/dev/videoN`` (V4L2), read and write."""
    path = Path(f"/dev/video{device}") if isinstance(device, int) else Path(device)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"{path} does not exist: no camera there"
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISCHR(mode):
        return f"{path} is not a camera device"
    if not os.access(path, os.R_OK | os.W_OK):
        return f"{path} cannot be opened by {_user()} (the daemon's user needs the video group)"
    return None


def _pose(config: Config) -> Iterator[str]:
    """A configured pose model must be a ``.task`` bundle with both networks (the default is built)."""
    if config.pose.model is None:
        return
    from device.pose import PoseModelError, check_task_file  # MediaPipe: only when a model is named

    problem = _unreadable(config.pose.model)
    if problem is None:
        try:
            check_task_file(config.pose.model)
        except PoseModelError as exc:
            problem = str(exc).removeprefix(f"{config.pose.model}: ")
    if problem:
        yield f"pose.model {config.pose.model}: {problem}"


def _model(config: Config) -> Iterator[str]:
    """The trusted keys load; the bundle, if any, verifies with them as the model store verifies it."""
    keys: list[Ed25519PublicKey] = []
    for index, path in enumerate(config.model.trusted_keys):
        try:
            keys.append(load_public_key(path))
        except BundleError as exc:
            yield f"model.trusted_keys.{index} {path}: {exc.message.removeprefix(f'{path}: ')}"
    bundle = config.model.bundle
    if bundle is None:
        return
    problem = _unreadable(bundle)
    if problem:
        yield f"model.bundle {bundle}: {problem}"
    elif not config.model.trusted_keys:
        yield f"model.bundle {bundle}: no model.trusted_keys to verify it with, so it would be refused"
    elif len(keys) == len(config.model.trusted_keys):  # the store refuses everything while one key fails
        try:
            open_bundle(bundle, keys, max_size=int(config.model.max_bundle_mb * 1024 * 1024))
        except BundleError as exc:
            yield f"model.bundle {bundle}: {exc}"


def _tls(config: Config) -> Iterator[str]:
    """The MQTT TLS files, read when the daemon connects."""
    tls = config.mqtt.tls
    if not config.mqtt.enabled or tls is None:
        return
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        problem = path and _unreadable(path)
        if problem:
            yield f"mqtt.tls.{key} {path}: {problem}"


def _fleet(config: Config) -> Iterator[str]:
    """The CA that pulled bundles' https:// URLs are checked against, read at each fetch."""
    ca_file = config.fleet.ca_file
    problem = config.fleet.groups and ca_file and _unreadable(ca_file)
    if problem:
        yield f"fleet.ca_file {ca_file}: {problem}"


def _https(config: Config) -> Iterator[str]:
    """The HTTPS certificate and key: readable, a pair, not expired, the key not world-readable."""
    http = config.http
    if not http.enabled or http.tls_cert is None or http.tls_key is None:
        return
    try:
        check_server_pair(http.tls_cert, http.tls_key)
    except CertificateError as exc:
        yield f"http.tls_{exc.which} {exc.path}: {exc.reason}"
        return
    if http.tls_key.stat().st_mode & stat.S_IROTH:
        yield f"http.tls_key {http.tls_key}: readable by every user of the kiosk (chmod o-r)"


CHECKS: tuple[Check, ...] = (_state, _source, _pose, _model, _tls, _fleet, _https)
"""In the order of the example configuration's sections."""
