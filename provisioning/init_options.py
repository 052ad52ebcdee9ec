"""The options and help of ``init-device``, declared without importing its work.

``--help`` must answer at once; making a certificate and validating the device's configuration
(cryptography, pydantic, numpy through the bundle code) happens in :mod:`provisioning.devices`,
imported when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from device.cli import Command, lazy

DEFAULT_PORT = 8080


INIT_DESCRIPTION = """\
Prepare a new kiosk in two folders. Into DIR (--out), copied to the kiosk:
  device.toml        its configuration (python -m device check-config --offline accepts it here,
                     and without --offline on the kiosk, camera and files in place): HTTPS on every
                     interface, the tokens stored as their SHA-256, the Host names it answers to
  *.pub              copies of the trusted public keys (--trusted-key)
  tls.crt, tls.key   its certificate (self-signed for NAME.local, NAME and each --host, or --cert)
                     and private key (mode 0600; or --key)
Into the workstation folder (--workstation, default DIR.workstation; mode 0700), which stays:
  NAME.token         the device token in clear, mode 0600: `push` sends it to change models
  NAME.viewer.token  the viewer token in clear, mode 0600: browser login, scripts, Prometheus
  fleet-entry.toml   the [[device]] entry for fleet.toml: https://NAME.local:PORT, the certificate's
                     SHA-256 fingerprint (pinned by push and status), the device token's file
                     (--fleet FILE appends it for you)
Then on the kiosk: sudo provisioning/install.sh --config DIR/device.toml. Both folders must not
exist or be empty, unless --force.

Examples:
  python -m provisioning init-device --name kiosk-1 --out kiosks/kiosk-1 --trusted-key keys/signing.pub
  python -m provisioning init-device --name kiosk-2 --out kiosks/kiosk-2 --trusted-key keys/signing.pub \\
      --host 192.168.1.52 --url https://192.168.1.52:8080 --mqtt-host broker.local --fleet fleet.toml
  python -m provisioning init-device --name kiosk-3 --out kiosks/kiosk-3 --trusted-key keys/signing.pub \\
      --cert kiosk-3.crt --key kiosk-3.key --url https://kiosk-3.clinic.example:8080
  python -m provisioning init-device --name demo --out kiosks/demo --source file --video /srv/demo.mp4
"""


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError("must be a TCP port, 1-65535")
    return port


def add_init_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name", required=True, help="device id (letters, digits, _ and -), used in MQTT topics"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="the kiosk's folder")
    parser.add_argument(
        "--workstation",
        type=Path,
        metavar="DIR",
        help="folder for the tokens and the fleet entry, which stay here (default: DIR.workstation)",
    )
    parser.add_argument(
        "--trusted-key",
        type=Path,
        action="append",
        default=[],
        metavar="PUB",
        help="public key bundles must be signed with (signing.pub from `trainer keygen`; repeatable)",
    )
    parser.add_argument("--title", default="", help="human name on the status page (default: --name)")
    parser.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"the kiosk's HTTPS port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--url", help="how the workstation reaches it: https://HOST:PORT (default https://NAME.local:PORT)"
    )
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME_OR_IP",
        help="another name or address clients use for it (in the certificate and Host check; repeatable)",
    )
    parser.add_argument("--cert", type=Path, metavar="PEM", help="use this certificate instead of making one")
    parser.add_argument("--key", type=Path, metavar="PEM", help="the private key of --cert")
    parser.add_argument("--mqtt-host", default="127.0.0.1", help="MQTT broker (default: one on the kiosk)")
    parser.add_argument("--mqtt-port", type=_port, default=1883, help="MQTT broker port (default 1883)")
    parser.add_argument("--no-mqtt", action="store_true", help="do not publish to MQTT")
    parser.add_argument(
        "--source",
        choices=("camera", "picamera2", "file"),
        default="camera",
        help="frame source (default camera)",
    )
    parser.add_argument("--camera", default="0", help="camera index or /dev/videoN (default 0)")
    parser.add_argument(
        "--video", type=Path, action="append", metavar="PATH", help="--source file: a video on the kiosk"
    )
    parser.add_argument("--fleet", type=Path, metavar="FILE", help="append the entry to this fleet.toml")
    parser.add_argument("--force", action="store_true", help="write into folders that are not empty")


INIT_DEVICE = Command(
    INIT_DESCRIPTION,
    add_init_arguments,
    lazy("provisioning.devices:run_init"),
)
