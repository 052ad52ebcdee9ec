"""The daemon's configuration: one TOML file, validated completely before anything starts.

Unknown keys are refused (a typo must not silently fall back to a default), every error names the
key and what is allowed, and secrets come from the environment or systemd credentials rather than
the file: ``MOVEMENT_EDGE_MQTT_PASSWORD``, ``MOVEMENT_EDGE_HTTP_TOKEN`` and
``MOVEMENT_EDGE_HTTP_VIEWER_TOKEN`` (or the credentials ``mqtt_password`` / ``http_token`` /
``http_viewer_token`` in ``$CREDENTIALS_DIRECTORY``).

A kiosk films people, so a server listening beyond loopback must be protected (DESIGN.md §6):
such a ``[http]`` section is refused unless it has a certificate and key (HTTPS), a viewer
credential and a device token. Loopback keeps plain HTTP without credentials.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    ValidationError,
    field_validator,
    model_validator,
)

from device.documents import read_document

SECRET_ENV = {
    "mqtt_password": "MOVEMENT_EDGE_MQTT_PASSWORD",
    "http_token": "MOVEMENT_EDGE_HTTP_TOKEN",
    "http_viewer_token": "MOVEMENT_EDGE_HTTP_VIEWER_TOKEN",
}
# Keys whose values are never echoed in an error: secrets, and a camera's URL or GStreamer
# pipeline, which may carry the camera's password (rtsp://user:password@…).
_SECRET_KEYS = frozenset({"password", "token", "viewer_token", "url", "pipeline"})


DEVICE_ID = r"^[A-Za-z0-9_-]{1,64}$"
"""A device id: safe in MQTT topics, file names and Home Assistant ids."""


class ConfigError(ValueError):
    """An invalid configuration; the message names the file and the offending key."""


class _Section(BaseModel):
    # No NaN or infinity anywhere: an infinite interval or limit is a typo, and waits of inf overflow.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DeviceSection(_Section):
    id: str = Field("kiosk", description="device id, used in MQTT topics", pattern=DEVICE_ID)
    name: str = Field("", description="human name shown on the status page and in Home Assistant")
    state_dir: Path = Field(Path("/var/lib/movement-edge"), description="outbox database and models")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    privacy: bool = Field(
        False, description="no camera image leaves the pose stage: the page draws skeletons on a blank canvas"
    )


class FileSource(_Section):
    kind: Literal["file"]
    paths: list[Path] = Field(min_length=1, description="video files, played in order")
    loop: bool = False
    pace: Literal["realtime", "fast"] = Field(
        "realtime", description="at the file's frame rate or as fast as possible"
    )


class CameraSource(_Section):
    kind: Literal["camera"]
    device: int | str = Field(0, description="camera index or /dev/videoN")
    width: int | None = Field(None, gt=0)
    height: int | None = Field(None, gt=0)
    fps: float | None = Field(None, gt=0)

    @field_validator("device")
    @classmethod
    def _device_path(cls, value: int | str) -> int | str:
        if isinstance(value, str) and not re.fullmatch(r"/dev/video\d+", value):
            raise ValueError("must be a camera index or a /dev/videoN path")
        return value


class UrlSource(_Section):
    kind: Literal["url"]
    url: str = Field(pattern=r"^(rtsp|rtsps|http|https)://", description="RTSP or HTTP stream")


class GStreamerSource(_Section):
    kind: Literal["gstreamer"]
    pipeline: str = Field(min_length=1, description="a GStreamer pipeline ending in appsink")


class PiCameraSource(_Section):
    kind: Literal["picamera2"]
    width: int = Field(640, gt=0)
    height: int = Field(480, gt=0)


SOURCE_KINDS = ("file", "camera", "url", "gstreamer", "picamera2")
SourceSection = Annotated[
    FileSource | CameraSource | UrlSource | GStreamerSource | PiCameraSource, Field(discriminator="kind")
]


class CaptureSection(_Section):
    reconnect_initial_s: float = Field(0.5, gt=0, description="first wait before reopening a lost source")
    reconnect_max_s: float = Field(30.0, gt=0, description="longest wait between reopen attempts")


class PoseSection(_Section):
    model: Path | None = Field(None, description="an official pose landmarker .task; default: built offline")
    num_poses: int = Field(1, ge=1, le=5, description="people MediaPipe looks for in each frame")
    classify: Literal["largest", "everyone"] = Field(
        "largest",
        description="largest: the largest person, as person 1; everyone: each person found gets a "
        "track id and decisions of their own",
    )
    min_detection_confidence: float = Field(0.5, ge=0, le=1)
    min_presence_confidence: float = Field(0.5, ge=0, le=1)
    min_tracking_confidence: float = Field(0.5, ge=0, le=1)


class SmoothingSection(_Section):
    kind: Literal["none", "mean", "hysteresis"] = "none"
    span_s: float = Field(
        0.5, ge=0, le=60, description="mean: seconds of results averaged (source time, any frame rate)"
    )
    enter: float = Field(0.6, ge=0, le=1, description="hysteresis: confidence needed to switch label")
    exit: float = Field(0.4, ge=0, le=1, description="hysteresis: confidence below which a label is left")

    @model_validator(mode="after")
    def _enter_above_exit(self) -> SmoothingSection:
        if self.exit > self.enter:
            raise ValueError("smoothing.exit must not exceed smoothing.enter")
        return self


class ModelSection(_Section):
    bundle: Path | None = Field(
        None, description="signed bundle installed at start while the model store has no active version"
    )
    trusted_keys: list[Path] = Field(
        default_factory=list, description="Ed25519 public keys (PEM) bundles must be signed with"
    )
    keep_versions: int = Field(
        3, ge=1, le=100, description="model versions kept for rollback (the previous one is always kept)"
    )
    max_bundle_mb: float = Field(64.0, gt=0, le=1024, description="largest bundle the model store accepts")
    smoothing: SmoothingSection | None = Field(None, description="overrides the bundle's decision settings")
    no_person: Literal["skip", "reset"] | None = Field(
        None, description="overrides the bundle: on frames without a person"
    )


class TlsSection(_Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = Field(False, description="skip hostname verification (testing only)")


class MqttSection(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    prefix: str = Field("movement", pattern=r"^[^#+\s]+$", description="topic prefix; no wildcards")
    username: str | None = None
    password: str | None = Field(None, description=f"prefer ${SECRET_ENV['mqtt_password']}")
    keepalive_s: int = Field(30, ge=5, le=3600)
    tls: TlsSection | None = None
    stats_interval_s: float = Field(10.0, gt=0)
    discovery: bool = Field(True, description="publish Home Assistant discovery")
    discovery_prefix: str = "homeassistant"

    @model_validator(mode="after")
    def _password_needs_user(self) -> MqttSection:
        if self.password and not self.username:
            raise ValueError("mqtt.password is set but mqtt.username is not")
        return self


class FleetSection(_Section):
    """Models pulled over MQTT (:mod:`device.fleet_pull`): the groups this kiosk follows, fetch
    limits, and the trial a pulled model must pass before it is kept."""

    groups: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]] = Field(
        default_factory=list,
        description="fleet groups whose desired model this kiosk follows (none: it only takes pushes)",
    )
    max_fetch_mb: float = Field(64.0, gt=0, le=1024, description="largest bundle fetched from a URL")
    fetch_timeout_s: float = Field(60.0, gt=0, le=3600, description="per fetch: connect and each read")
    ca_file: Path | None = Field(None, description="CA certificates for https:// URLs; default: the system's")
    retry_s: float = Field(60.0, gt=0, le=86400, description="wait before fetching again after a failure")
    trial_frames: int = Field(
        150, ge=0, le=10_000_000, description="frames a pulled model must process before it is kept"
    )
    trial_stall_s: float = Field(
        30.0, gt=0, le=3600, description="frames stopping this long during a trial fail it"
    )
    trial_known_ratio: float = Field(
        0.5,
        ge=0,
        le=1,
        description="the trial fails when the share of results with a label (not unknown) falls "
        "below this fraction of the previous model's; 0 turns the check off",
    )

    @field_validator("groups")
    @classmethod
    def _unique_groups(cls, groups: list[str]) -> list[str]:
        repeated = next((g for i, g in enumerate(groups) if g in groups[:i]), None)
        if repeated is not None:
            raise ValueError(f"group {repeated!r} is listed twice")
        return groups


class OutboxSection(_Section):
    path: Path | None = Field(None, description="SQLite file; default <state_dir>/outbox.sqlite")
    max_rows: int = Field(
        100_000, ge=10, description="bound; beyond it the oldest rows are dropped and counted"
    )
    synchronous: Literal["full", "normal"] = Field(
        "normal",
        description="normal: results survive a crash, a power cut may cost the last seconds' unsent "
        "ones; full: every result is fsynced (a power cut costs none), with many more SD writes",
    )
    # A row bound alone does not bound the file: payloads vary in size, and the kiosk's SD card is
    # shared with the OS and the models. Reaching this size is handled like a full disk: the
    # oldest rows make room and are counted as dropped (see device/outbox.py).
    max_mb: float | None = Field(
        None, ge=0.1, description="size cap of the SQLite file in MB; beyond it the oldest rows are dropped"
    )


class HttpSection(_Section):
    enabled: bool = True
    bind: IPvAnyAddress = Field(
        IPv4Address("127.0.0.1"), description="an IP address; 0.0.0.0 for every interface"
    )
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port")
    token: str | None = Field(
        None, description=f"bearer token for mutating endpoints; prefer ${SECRET_ENV['http_token']}"
    )
    token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="the token stored hashed")
    max_upload_mb: float = Field(64.0, gt=0, le=1024)
    viewer_token: str | None = Field(
        None,
        min_length=16,
        description=f"credential to look (page, API, metrics) beyond loopback; prefer "
        f"${SECRET_ENV['http_viewer_token']}",
    )
    viewer_token_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="the viewer token stored hashed"
    )
    allowed_hosts: list[str] = Field(
        ["localhost", "127.0.0.1", "::1"],
        min_length=1,
        description="names the Host header may carry (port stripped); the address a client connected "
        "to is always accepted as an IP literal",
    )
    tls_cert: Path | None = Field(None, description="PEM certificate: serve HTTPS (with tls_key)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="a browser login lasts this long")

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, hosts: list[str]) -> list[str]:
        names = [host.strip().lower().removeprefix("[").removesuffix("]") for host in hosts]
        for name in names:
            if not re.fullmatch(r"[a-z0-9_.:-]+", name) or name.strip(".:") == "":
                raise ValueError(f"{name!r} is not a host name or IP address (no scheme, port or path)")
        return names

    @model_validator(mode="after")
    def _exposure_needs_protection(self) -> HttpSection:
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "http.tls_key" if self.tls_key is None else "http.tls_cert"
            raise ValueError(f"{missing} is required: http.tls_cert and http.tls_key go together")
        if self.token_hash is not None and self.token_hash == self.viewer_hash:
            raise ValueError("http.viewer_token must differ from http.token: viewers must not change models")
        if not self.enabled or self.bind.is_loopback:
            return self
        missing = [
            key
            for key, present in (
                ("http.tls_cert and http.tls_key", self.tls_cert is not None),
                (f"http.viewer_token (or ${SECRET_ENV['http_viewer_token']})", self.viewer_hash is not None),
                (f"http.token (or ${SECRET_ENV['http_token']})", self.token_hash is not None),
            )
            if not present
        ]
        if missing:
            raise ValueError(
                f"http.bind {self.bind} listens beyond loopback, so it needs " + ", ".join(missing)
            )
        return self

    @property
    def token_hash(self) -> str | None:
        """The device token's SHA-256 (hex): what the server holds instead of the token."""
        return self.token_sha256 or (_sha256(self.token) if self.token else None)

    @property
    def viewer_hash(self) -> str | None:
        """The viewer token's SHA-256 (hex)."""
        return self.viewer_token_sha256 or (_sha256(self.viewer_token) if self.viewer_token else None)


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class StationSection(_Section):
    name: str = Field(pattern=r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}", description="shown with its results")
    polygon: list[tuple[float, float]] = Field(
        min_length=3, description="corners [x, y] in image pixels; a person inside is classified"
    )

    @field_validator("polygon")
    @classmethod
    def _in_the_image(cls, corners: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if any(x < 0 or y < 0 for x, y in corners):
            raise ValueError("corners are image pixels: x and y must not be negative")
        return corners


class Config(_Section):
    device: DeviceSection = DeviceSection()
    source: SourceSection
    capture: CaptureSection = CaptureSection()
    pose: PoseSection = PoseSection()
    model: ModelSection = ModelSection()
    mqtt: MqttSection = MqttSection()
    outbox: OutboxSection = OutboxSection()
    http: HttpSection = HttpSection()
    fleet: FleetSection = FleetSection()
    stations: list[StationSection] = Field(
        default_factory=list, description="named zones: with any, only people inside one are classified"
    )

    @field_validator("stations")
    @classmethod
    def _unique_station_names(cls, stations: list[StationSection]) -> list[StationSection]:
        names = [s.name for s in stations]
        repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if repeated is not None:
            raise ValueError(f"station name {repeated!r} is used twice")
        return stations

    @model_validator(mode="after")
    def _fleet_needs_mqtt(self) -> Config:
        if self.fleet.groups and not self.mqtt.enabled:
            raise ValueError("fleet.groups needs mqtt.enabled: desired models arrive over MQTT")
        return self

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or self.device.state_dir / "outbox.sqlite"


def _secret(name: str, env: Mapping[str, str]) -> str | None:
    if env.get(SECRET_ENV[name]):
        return env[SECRET_ENV[name]]
    credentials = env.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / name).is_file():
        return (Path(credentials) / name).read_text(encoding="utf-8").strip()
    return None


def _describe(error: dict[str, Any]) -> str:
    """One line per pydantic error: the dotted key, then what is wrong (and allowed)."""
    loc = list(error["loc"])
    if loc[:1] == ["source"] and len(loc) > 1 and loc[1] in SOURCE_KINDS:
        del loc[1]  # the discriminator's tag is not a key the user wrote
    key = ".".join(str(part) for part in loc)
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if error["type"] == "missing":
        return f"{key}: required"
    if error["type"] == "union_tag_invalid":
        return f"{key}.kind: must be one of {error['ctx']['expected_tags']}"
    if error["type"] == "union_tag_not_found":
        return f"{key}.kind: required (file, camera, url, gstreamer or picamera2)"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if not key:  # a rule across sections: its message names the keys
        return message
    if isinstance(value, dict) or _SECRET_KEYS & set(map(str, loc)):
        return f"{key}: {message}"  # a whole table may hold a secret; a secret is never echoed
    return f"{key}: {message} (got {value!r})"


def parse_config(
    data: dict[str, Any], source: str = "config", env: Mapping[str, str] | None = None
) -> Config:
    """Validate a config mapping; secrets from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a table of sections, got {type(data).__name__}")
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for name, (section, key) in {
        "mqtt_password": ("mqtt", "password"),
        "http_token": ("http", "token"),
        "http_viewer_token": ("http", "viewer_token"),
    }.items():
        value = _secret(name, env)
        if value and isinstance(data.setdefault(section, {}), dict):  # else validation names the section
            data[section][key] = value
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML config file; relative paths in it are relative to the file."""
    path = Path(path)
    data = read_document(path, "TOML", ConfigError)
    config = parse_config(data, str(path), env)
    return _resolve_paths(config, path.parent, str(path))


def _resolve_paths(config: Config, base: Path, source: str) -> Config:
    """Make every relative path absolute against the config file's folder."""

    def fix(value: Any, key: str) -> Any:
        if isinstance(value, Path):
            try:
                return value if value.is_absolute() else (base / value).resolve()
            except (ValueError, OSError, RuntimeError) as exc:  # a NUL byte, a symlink loop
                raise ConfigError(f"{source}: {key}: not a usable path ({exc})") from None
        if isinstance(value, list):
            return [fix(v, f"{key}.{i}") for i, v in enumerate(value)]
        if isinstance(value, BaseModel):
            fixed = {k: fix(getattr(value, k), f"{key}.{k}".lstrip(".")) for k in type(value).model_fields}
            return value.model_copy(update=fixed)
        return value

    return fix(config, "")
