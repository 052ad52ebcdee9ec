"""Models pulled over MQTT: follow the fleet groups' desired model, try it, keep it or roll back.

The kiosk subscribes (through its :class:`~device.publisher.MqttPublisher`) to
``<prefix>/fleet/<group>/model/desired`` of every group in ``[fleet] groups``. The messages are
retained, so a kiosk that was off, or is new, gets the current one when it connects: nothing is
pushed to it and it needs no inbound port. Messages arrive on paho's network thread, which only
drops them into :meth:`FleetPuller.offer` (the newest per group); the worker thread
``fleet-pull`` does everything else:

1. **accept** — :func:`~device.model.desired.read_desired`: signature by a trusted, unrevoked key
   before anything in the message is used, then its schema, then the release: a release lower
   than one this kiosk accepted for the group before, or the same release naming another bundle,
   is refused as a replay (the releases accepted are kept in ``<state_dir>/fleet.json``).
2. **choose** — of the groups' desired models, those that apply to this kiosk: its canary share
   takes it (:func:`~device.model.desired.in_canary`), it did not fail a trial here, its release
   was not refused. The newest version wins, so a kiosk in a canary group and in the group of all
   kiosks follows whichever is ahead. Outside every canary it waits (state ``waiting``).
3. **fetch** — inline, or from the URL with ``fleet.fetch_timeout_s`` and at most the message's
   size (and ``fleet.max_fetch_mb``); https is verified against the system's CAs or
   ``fleet.ca_file``, redirects must obey the same URL rules. Size and sha256 must be what the
   signed message says before the bundle is opened. A network failure is retried after
   ``fleet.retry_s``; a wrong size or hash refuses the release (a new release is the fix).
4. **install** — the model store's own steps (verify, compatibility and version floors, load,
   smoke test, activate) through the daemon, which switches the pipeline; the bundle's signed
   manifest must name the message's model id and version. A pull never forces: an older version
   than the active one is refused, as the store refuses it without ``force``.
5. **trial** — the pulled model must process ``fleet.trial_frames`` frames (counted, not timed:
   a busy or slow kiosk takes longer, never fails for it) while the pipeline keeps running, frames
   keep flowing (no gap of ``fleet.trial_stall_s`` when they flowed before), and the share of
   results with a label rather than ``unknown`` stays at least ``fleet.trial_known_ratio`` of the
   previous model's (its results since it took over, or since the start; none: not checked). A
   trial as long as a looping test video sees each frame once, so there the comparison is
   exact; on a camera, a longer trial evens out who happened to stand in front. A failure
   activates the previous version again (the store's rollback: it ran here and is kept, so its
   floor allows it) and marks the failed version in ``fleet.json``, so it is never pulled
   again, after a restart neither. A trial a restart interrupted (the model may have crashed
   the process) counts as failed, as a reboot during an uncommitted update does on Mender or
   Greengrass. A version pushed over HTTP is the operator's explicit choice and is not affected
   by the mark.

Where the pull stands (:meth:`FleetPuller.state`: groups, desired model, state, detail, last
error) goes to ``/api/status`` (``fleet``) and into the retained ``model/state``. States:
``idle`` (nothing desired), ``waiting`` (outside the canary), ``fetching``, ``trial``, ``ok``
(runs the desired model), ``rolled_back``, ``refused``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, Protocol

from device.config import FleetSection
from device.model.bundle import load_public_key, write_atomic
from device.model.desired import (
    GROUP,
    Desired,
    check_url,
    desired_topic,
    in_canary,
    read_desired,
)
from device.model.fields import (
    BundleError,
    Invalid,
    int_field,
    list_field,
    parse_fields,
    parse_strict_json,
    parse_version,
    text_field,
    version_field,
)
from device.model.store import ModelRejected, ModelStore, verify_bundle

log = logging.getLogger("device.fleet_pull")

STATE_FILE = "fleet.json"
FORMAT = 1
TICK_S = 0.5
"""How often the worker looks at a running trial (and at nothing else: messages wake it)."""
_CHUNK = 64 * 1024


class ModelChanger(Protocol):
    """What switches the running model: the daemon (:meth:`device.daemon.Daemon.install`)."""

    def install(self, data: bytes, force: bool = False) -> dict[str, Any]: ...

    def activate(self, version: str, force: bool = False) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Health:
    """Counts since the kiosk started, and whether frames flow now; a trial compares two of them."""

    frames: int
    classifications: int
    unknown: int
    flowing: bool
    failure: str | None = None
    """Why the kiosk is not running at all (its pipeline stopped), or None."""

    @property
    def known(self) -> int:
        return self.classifications - self.unknown

    def since(self, earlier: Health) -> Health:
        """The counts between ``earlier`` and this one (what one model did while it ran)."""
        return Health(
            self.frames - earlier.frames,
            self.classifications - earlier.classifications,
            self.unknown - earlier.unknown,
            self.flowing,
            self.failure,
        )


class FetchFailed(Exception):
    """The bundle could not be had; ``retry`` for network failures, not for a wrong size or hash."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


# --------------------------------------------------------------------------- fetching


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to a URL the message itself could have named (https, or loopback http)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        try:
            check_url(newurl)
        except Invalid as exc:
            raise FetchFailed(f"redirected to a URL that is not allowed: {exc}", retry=False) from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_bundle(desired: Desired, max_bytes: int, timeout_s: float, ca_file: Path | None = None) -> bytes:
    """The bundle the message names, checked against its size and sha256 (inline or from its URL)."""
    if desired.size > max_bytes:
        raise FetchFailed(
            f"size: the bundle is {desired.size} bytes; fleet.max_fetch_mb allows {max_bytes}", retry=False
        )
    data = desired.bundle if desired.bundle is not None else _download(desired, timeout_s, ca_file)
    if len(data) != desired.size:
        raise FetchFailed(f"size: {len(data)} bytes arrived, the message says {desired.size}", retry=False)
    if hashlib.sha256(data).hexdigest() != desired.sha256:
        raise FetchFailed("hash: the bundle's sha256 is not the one the message names", retry=False)
    return data


def _download(desired: Desired, timeout_s: float, ca_file: Path | None) -> bytes:
    """At most ``size + 1`` bytes from the URL (one more than promised shows a lie)."""
    assert desired.url is not None  # read_desired guarantees a URL when nothing is inline
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise FetchFailed(f"fleet.ca_file {ca_file}: cannot load ({exc})", retry=True) from exc
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _CheckedRedirects)
    request = urllib.request.Request(desired.url, headers={"Accept": "application/zip"})
    try:
        with opener.open(request, timeout=timeout_s) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > desired.size:
                raise FetchFailed(
                    f"size: the server announces {length} bytes, the message says {desired.size}", retry=False
                )
            chunks, total = [], 0
            while total <= desired.size and (chunk := response.read(min(_CHUNK, desired.size + 1 - total))):
                chunks.append(chunk)
                total += len(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as exc:
        raise FetchFailed(f"fetch: {desired.url} answered HTTP {exc.code}", retry=True) from None
    except (urllib.error.URLError, HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FetchFailed(f"fetch: {desired.url}: {reason}", retry=True) from None


# --------------------------------------------------------------------------- the trial


@dataclass(frozen=True)
class Trial:
    """A pulled model on trial: what it replaced, and the health before and at its switch."""

    model_id: str
    version: str
    previous: str | None
    baseline: Health  # the previous model's record: its counts from its switch to this install
    start: Health  # just after the switch

    @property
    def label(self) -> str:
        return f"{self.model_id} {self.version}"

    def judge(self, now: Health, settings: FleetSection) -> tuple[bool, str] | None:
        """(passed, why) once decided; None while the trial runs. Counts decide, never the clock."""
        if now.failure is not None:
            return False, now.failure
        if self.start.flowing and not now.flowing:
            return False, f"frames stopped flowing for {settings.trial_stall_s:g} s"
        frames = now.frames - self.start.frames
        if frames < settings.trial_frames:
            return None
        results = now.classifications - self.start.classifications
        known = now.known - self.start.known
        before = self.baseline
        if settings.trial_known_ratio > 0 and results > 0 and before.classifications > 0 and before.known > 0:
            share, previous = known / results, before.known / before.classifications
            if share < settings.trial_known_ratio * previous:
                return False, (
                    f"{share:.0%} of its {results} results had a label (not unknown), against {previous:.0%} "
                    f"of the previous model's; the trial needs {settings.trial_known_ratio:g} of that"
                )
        return True, f"{frames} frames, {results} results"


# --------------------------------------------------------------------------- what the kiosk remembers


@dataclass
class _Memory:
    """``fleet.json``: releases accepted per group, versions that failed a trial, a trial under way."""

    releases: dict[str, tuple[int, str]]  # group -> (release, bundle sha256)
    failed: dict[tuple[str, str], str]  # (model id, version) -> why
    trial: tuple[str, str, str | None] | None  # (model id, version, previous) of a running trial

    def document(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "releases": {g: {"release": r, "sha256": s} for g, (r, s) in sorted(self.releases.items())},
            "failed": [{"model_id": m, "version": v, "reason": why} for (m, v), why in self.failed.items()],
            "trial": None
            if self.trial is None
            else dict(zip(("model_id", "version", "previous"), self.trial, strict=True)),
        }


def _read_memory(path: Path) -> _Memory:
    """The file, or an empty memory when there is none; a damaged one is moved aside (and logged)."""
    empty = _Memory({}, {}, None)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return empty
    except OSError as exc:
        log.error("fleet state unreadable", extra={"path": str(path), "reason": exc.strerror})
        return empty
    try:
        document = parse_fields(
            parse_strict_json(data, "fleet", path.name),
            {
                "format": lambda v: int_field(v, minimum=FORMAT, maximum=FORMAT),
                "releases": lambda v: v,
                "failed": lambda v: list_field(v, lambda e: e),
                "trial": lambda v: v,
            },
            "fleet",
        )
        releases = {}
        for group, entry in _object(document["releases"]).items():
            fields = parse_fields(
                entry, {"release": lambda v: int_field(v, minimum=1), "sha256": text_field}, group
            )
            releases[text_field(group, GROUP)] = (fields["release"], fields["sha256"])
        failed = {}
        for entry in document["failed"]:
            fields = parse_fields(
                entry, {"model_id": text_field, "version": version_field, "reason": str}, "failed"
            )
            failed[(fields["model_id"], fields["version"])] = fields["reason"]
        trial = None
        if document["trial"] is not None:
            fields = parse_fields(
                document["trial"],
                {
                    "model_id": text_field,
                    "version": version_field,
                    "previous": lambda v: v if v is None else version_field(v),
                },
                "trial",
            )
            trial = (fields["model_id"], fields["version"], fields["previous"])
    except (BundleError, Invalid) as exc:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        try:
            path.rename(aside)
        except OSError:
            aside = path
        log.error("fleet state damaged; starting afresh", extra={"path": str(aside), "reason": str(exc)})
        return empty
    return _Memory(releases, failed, trial)


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"expected an object, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------- the puller


class FleetPuller:
    """Follows the desired model of ``settings.groups`` (see the module docstring).

    ``health`` reports the kiosk's counts (the daemon's status board; a test kiosk's own);
    ``on_change`` receives :meth:`state` whenever it changes, on the worker thread.
    """

    def __init__(
        self,
        device_id: str,
        prefix: str,
        settings: FleetSection,
        store: ModelStore,
        changer: ModelChanger,
        health: Callable[[], Health],
        on_change: Callable[[Mapping[str, Any]], None],
        *,
        state_dir: Path,
        tick_s: float = TICK_S,
    ) -> None:
        self.device_id = device_id
        self.settings = settings
        self._store = store
        self._changer = changer
        self._health = health
        self._on_change = on_change
        self._tick_s = tick_s
        self._groups = {desired_topic(prefix, group): group for group in settings.groups}
        self._path = Path(state_dir) / STATE_FILE
        self._memory = _read_memory(self._path)
        self._inbox: dict[str, bytes] = {}  # group -> newest unread message (paho's thread writes)
        self._inbox_lock = threading.Lock()
        self._desired: dict[str, Desired] = {}  # group -> accepted message
        self._refused: set[tuple[str, int]] = set()  # (group, release) not to try again
        self._retry_at: dict[tuple[str, int], float] = {}  # (group, release) -> monotonic time
        self._trial: Trial | None = None
        self._switched = _NO_HEALTH  # the counts when the running model took over (start: none yet)
        self._state: dict[str, Any] = {
            "groups": list(settings.groups),
            "state": "idle",
            "detail": "",
            "last_error": None,
            "desired": None,
            "failed": sorted(f"{m} {v}" for m, v in self._memory.failed),
        }
        self._state_lock = threading.Lock()
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._worker = threading.Thread(target=self._run, name="fleet-pull", daemon=True)

    @property
    def topics(self) -> list[str]:
        """The desired-model topics to subscribe to, one per group."""
        return list(self._groups)

    def state(self) -> dict[str, Any]:
        with self._state_lock:
            return json.loads(json.dumps(self._state))  # a deep copy for another thread

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the worker; call after the active model is loaded (a trial a restart cut short is judged)."""
        self._publish_state()
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker (a fetch under way ends within ``fleet.fetch_timeout_s``)."""
        self._halt.set()
        self._wake.set()
        if self._worker.is_alive():
            self._worker.join(timeout)

    def offer(self, topic: str, payload: bytes) -> None:
        """A message from paho's network thread: kept as its group's newest; the worker reads it."""
        group = self._groups.get(topic)
        if group is None:
            return
        with self._inbox_lock:
            self._inbox[group] = payload
        self._wake.set()

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        self._resume()
        while not self._halt.is_set():
            self._wake.wait(self._tick_s)
            self._wake.clear()
            try:
                self._step()
            except Exception:  # a bug must not end the pulling for good; the next message retries
                log.exception("fleet pull step failed")
                self._halt.wait(self._tick_s)

    def _step(self) -> None:
        with self._inbox_lock:
            messages, self._inbox = self._inbox, {}
        for group, payload in messages.items():
            self._receive(group, payload)
        if self._trial is not None:
            self._judge(self._trial)
        else:
            self._converge()

    def _resume(self) -> None:
        """A trial recorded in fleet.json and still active at start was cut short by a restart: failed."""
        if self._memory.trial is None:
            return
        model_id, version, previous = self._memory.trial
        if self._store.active() == version:
            trial = Trial(model_id, version, previous, _NO_HEALTH, _NO_HEALTH)
            self._fail(trial, "the kiosk restarted during its trial")
        else:
            self._memory.trial = None
            self._save()

    def _receive(self, group: str, payload: bytes) -> None:
        """Step 1: verify and accept one group's message, or refuse it (the earlier one stays)."""
        try:
            keys = [load_public_key(path) for path in self._store.trusted_keys]
            desired = read_desired(payload, group, keys, self._store.revocations.revoked)
        except BundleError as exc:
            self._refuse(f"group {group}: the desired model message was refused", str(exc))
            return
        seen = self._memory.releases.get(group)
        if seen is not None and desired.release < seen[0]:
            self._refuse(
                f"group {group}: release {desired.release} refused",
                f"replay: release {desired.release} is older than release {seen[0]} accepted before",
            )
            return
        if seen is not None and desired.release == seen[0] and desired.sha256 != seen[1]:
            self._refuse(
                f"group {group}: release {desired.release} refused",
                f"replay: release {desired.release} was accepted before with another bundle",
            )
            return
        self._desired[group] = desired
        if seen != (desired.release, desired.sha256):
            self._memory.releases[group] = (desired.release, desired.sha256)
            self._save()
        log.info(
            "desired model received",
            extra={"group": group, "release": desired.release, "model": desired.label},
        )

    def _choose(self) -> tuple[Desired | None, Desired | None, Desired | None]:
        """Step 2: the desired model to run (newest applicable), one this kiosk waits for (outside
        its canary), and one it will not take again (it failed its trial here)."""
        candidates, waiting, failed = [], None, None
        for group in self.settings.groups:
            desired = self._desired.get(group)
            if desired is None:
                continue
            if (desired.model_id, desired.version) in self._memory.failed:
                failed = failed or desired
                continue
            if (group, desired.release) in self._refused:
                continue
            if in_canary(self.device_id, group, desired.release, desired.canary_percent):
                candidates.append(desired)
            else:
                waiting = waiting or desired
        chosen = max(candidates, key=lambda d: parse_version(d.version), default=None)
        return chosen, waiting, failed

    def _converge(self) -> None:
        chosen, waiting, failed = self._choose()
        if chosen is None:
            if failed is not None and self._state["state"] in ("idle", "waiting", "ok"):
                why = self._memory.failed[(failed.model_id, failed.version)]
                self._set(
                    "rolled_back",
                    f"{failed.label} failed its trial here ({why}); it is not pulled again",
                    desired=failed,
                    error=why,
                )
            elif waiting is not None and self._state["state"] in ("idle", "waiting", "ok"):
                self._set(
                    "waiting",
                    f"release {waiting.release} of group {waiting.group} ({waiting.label}) is a "
                    f"{waiting.canary_percent} % canary that does not include this kiosk",
                    desired=waiting,
                )
            return
        if self._running() == (chosen.model_id, chosen.version):
            if self._state["state"] in ("idle", "waiting", "fetching") or self._state["desired"] != _summary(
                chosen, True
            ):
                self._set(
                    "ok", f"runs {chosen.label}, release {chosen.release} of group {chosen.group}", chosen
                )
            return
        key = (chosen.group, chosen.release)
        if time.monotonic() < self._retry_at.get(key, 0.0):
            return
        self._pull(chosen)

    def _pull(self, desired: Desired) -> None:
        """Steps 3 and 4, then the trial starts."""
        key = (desired.group, desired.release)
        self._set("fetching", f"{desired.label}, release {desired.release} of group {desired.group}", desired)
        settings = self.settings
        try:
            data = fetch_bundle(
                desired, int(settings.max_fetch_mb * 1024 * 1024), settings.fetch_timeout_s, settings.ca_file
            )
        except FetchFailed as exc:
            if exc.retry:
                self._retry_at[key] = time.monotonic() + settings.retry_s
                self._set(
                    "fetching", f"{desired.label}: retrying in {settings.retry_s:g} s", desired, str(exc)
                )
            else:
                self._refused.add(key)
                self._set("refused", f"{desired.label}: the bundle was refused", desired, str(exc))
            return
        try:
            bundle = verify_bundle(
                data, self._store.trusted_keys, self._store.max_bundle_bytes, self._store.revocations.revoked
            )
            manifest = bundle.manifest
            if (manifest.model_id, manifest.version) != (desired.model_id, desired.version):
                raise ModelRejected(
                    "verify",
                    f"the bundle is {manifest.model_id} {manifest.version}, "
                    f"the message names {desired.label}",
                )
            baseline = self._health().since(self._switched)
            result = self._changer.install(data)
        except ModelRejected as exc:
            self._refused.add(key)
            self._set("refused", f"{desired.label}: the model store refused it", desired, str(exc))
            return
        if not result["changed"]:
            self._set(
                "ok", f"runs {desired.label}, release {desired.release} of group {desired.group}", desired
            )
            return
        self._switched = self._health()
        trial = Trial(desired.model_id, desired.version, result["previous"], baseline, self._switched)
        self._trial = trial
        self._memory.trial = (trial.model_id, trial.version, trial.previous)
        self._save()
        self._set("trial", f"{desired.label} on trial for {settings.trial_frames} frames", desired)

    def _judge(self, trial: Trial) -> None:
        """Step 5: keep the model, roll it back, or let the trial run on."""
        if self._running() != (trial.model_id, trial.version):  # changed by other means (a push)
            self._end_trial()
            self._set("idle", f"the trial of {trial.label} ended: the model was changed by other means")
            return
        verdict = trial.judge(self._health(), self.settings)
        if verdict is None:
            return
        passed, why = verdict
        if passed:
            self._end_trial()
            self._set("ok", f"{trial.label} passed its trial ({why})")
            log.info("pulled model kept", extra={"model": trial.label, "trial": why})
        else:
            self._fail(trial, why)

    def _fail(self, trial: Trial, why: str) -> None:
        """Mark the version failed (for good), then go back to the previous one."""
        self._memory.failed[(trial.model_id, trial.version)] = why
        self._end_trial()
        with self._state_lock:
            self._state["failed"] = sorted(f"{m} {v}" for m, v in self._memory.failed)
        log.error("pulled model failed its trial", extra={"model": trial.label, "reason": why})
        if trial.previous is None:
            self._set(
                "refused",
                f"{trial.label} failed its trial and there is no previous version to go back to",
                error=why,
            )
            return
        try:
            self._changer.activate(trial.previous)
            self._switched = self._health()
        except ModelRejected as exc:
            self._set(
                "refused",
                f"{trial.label} failed its trial; rolling back to {trial.previous} failed: {exc}",
                error=why,
            )
            return
        self._set(
            "rolled_back",
            f"{trial.label} failed its trial: {why}; rolled back to {trial.previous}",
            error=why,
        )

    def _end_trial(self) -> None:
        self._trial = None
        self._memory.trial = None
        self._save()

    # ------------------------------------------------------------------ helpers

    def _running(self) -> tuple[str, str] | None:
        """(model id, version) the store has active."""
        active = next((row for row in self._store.list() if row["status"] == "active"), None)
        return None if active is None else (active["model_id"], active["version"])

    def _refuse(self, detail: str, error: str) -> None:
        log.warning("fleet refusal", extra={"detail": detail, "reason": error})
        self._set("refused", detail, error=error)

    def _set(self, state: str, detail: str, desired: Desired | None = None, error: str | None = None) -> None:
        with self._state_lock:
            self._state["state"] = state
            self._state["detail"] = detail
            if desired is not None:
                canary = in_canary(self.device_id, desired.group, desired.release, desired.canary_percent)
                self._state["desired"] = _summary(desired, canary)
            if error is not None or state in ("ok", "trial"):
                self._state["last_error"] = error
        self._publish_state()

    def _publish_state(self) -> None:
        self._on_change(self.state())

    def _save(self) -> None:
        try:
            write_atomic(
                self._path, (json.dumps(self._memory.document(), indent=2) + "\n").encode(), durable=True
            )
        except OSError as exc:
            log.error("fleet state not saved", extra={"path": str(self._path), "reason": exc.strerror})


_NO_HEALTH = Health(0, 0, 0, False)


def _summary(desired: Desired, canary: bool) -> dict[str, Any]:
    return {**desired.summary(), "in_canary": canary}
