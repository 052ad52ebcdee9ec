"""The options and help of ``push`` and ``status``, declared without importing their work.

``--help`` must answer at once, so this module imports only argparse; the run functions (pydantic,
HTTP, TLS pinning, MLflow for ``models:/``) are named as ``"module:function"`` and imported when the
command runs (:func:`device.cli.lazy`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from device.cli import Command, lazy


def _fleet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fleet", type=Path, required=True, metavar="FILE", help="the inventory (fleet.toml)"
    )
    parser.add_argument(
        "--device", action="append", metavar="NAME", help="only this device (repeatable; default: all)"
    )
    parser.add_argument(
        "--parallel", type=_positive_int, default=8, metavar="N", help="devices handled at once (default 8)"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow http:// urls beyond loopback (the token then crosses the network readable)",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


PUSH_DESCRIPTION = """\
Upload a signed model bundle to every device of the inventory (or those named by --device) at
once, wait until each reports the new version active, and print one row per device:
  ok            the device runs the new version
  rejected      the device refused the bundle; the detail is its reason (signature, hash, smoke
                test, older version without --force, too large); it keeps its previous model
  unauthorized  wrong token, or the device has no token configured
  untrusted     its certificate is not the one fleet.toml pins: nothing was sent to it
  unreachable   no answer after the retries (connection refused/reset, timeouts, HTTP 5xx)
  timeout       the device accepted the upload but did not report the version within --timeout
  failed        an answer outside the API (404, not a JSON object, larger than 1 MiB)
Network failures and 5xx are retried with exponential backoff; a refusal (4xx) is never retried.
Exit status: 0 when every device is ok, 1 when any is not, 2 for a usage error (bad fleet file,
missing bundle, a token's environment variable unset, http:// beyond loopback without --insecure).

Transport: an https:// url with a fingerprint is a pinned kiosk: the TLS handshake is completed,
the certificate's SHA-256 compared with the fingerprint, and only then is the request (and its
token) written. https:// without a fingerprint is checked against the system's CAs and the host
name. http:// is for loopback; beyond it, only with --insecure.

BUNDLE may be a registered model version (optional extra: pip install .[mlflow]):
models:/NAME@ALIAS or models:/NAME/VERSION in the MLflow store of --tracking-uri (default
$MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db, where `trainer train --mlflow` registers). The
bundle is downloaded and checked against the version's sha256, model id and version tags before
anything is uploaded. --promote ALIAS then moves ALIAS to that version, only if every device is ok.

Examples:
  python -m provisioning push model.zip --fleet fleet.toml
  python -m provisioning push model.zip --fleet fleet.toml --device kiosk-1 --device kiosk-2
  KIOSK1_TOKEN=... python -m provisioning push old.zip --fleet fleet.toml --force   # a downgrade
  python -m provisioning push models:/poses@candidate --fleet fleet.toml --promote production
  python -m provisioning push models:/poses@production --fleet fleet.toml --device kiosk-3 \\
      --tracking-uri http://mlflow.lan:5000
"""


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "bundle",
        metavar="BUNDLE",
        help="signed bundle from `python -m trainer export`, or models:/NAME@ALIAS from the MLflow registry",
    )
    _fleet_arguments(parser)
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=180.0,
        metavar="S",
        help="per device: seconds for upload, retries and activation (default 180)",
    )
    parser.add_argument(
        "--force", action="store_true", help="allow a downgrade; upload even if already active"
    )
    parser.add_argument(
        "--tracking-uri", metavar="URI", help="MLflow store of a models:/ BUNDLE (default: see above)"
    )
    parser.add_argument(
        "--promote", metavar="ALIAS", help="for a models:/ BUNDLE: move ALIAS to it when every device is ok"
    )


STATUS_DESCRIPTION = """\
Ask every device of the inventory (or those named by --device) for its status at once and print
one row per device: the active model, the pose stage's frames per second, the MQTT connection,
the camera's state and the daemon's uptime — or why it could not be reached, or what was wrong
with its answer. The device's token is sent when it is at hand (it also grants viewing, which a
kiosk serving beyond loopback asks for); http:// beyond loopback needs --insecure, as for push.
Exit status: 0 when every device answered, 1 when any did not, 2 for a usage error.

Examples:
  python -m provisioning status --fleet fleet.toml
  python -m provisioning status --fleet fleet.toml --device kiosk-1 --timeout 3
"""


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    _fleet_arguments(parser)
    parser.add_argument(
        "--timeout", type=_positive_float, default=5.0, metavar="S", help="per request (default 5)"
    )


PUSH = Command(
    PUSH_DESCRIPTION,
    add_push_arguments,
    lazy("provisioning.push:run_push"),
)
STATUS = Command(
    STATUS_DESCRIPTION,
    add_status_arguments,
    lazy("provisioning.fleet_status:run_status"),
)
