"""The kiosk daemon: capture → pose → window → features → model → outbox → MQTT, plus the web page.

Data flows one way through named threads: the capture thread fills a one-frame slot; the
pipeline thread runs the :class:`~device.classifier.Classifier` (pose, window, features, model,
smoothing: the same object replay and the Python API use), writes every classification to
the SQLite outbox *before* handing it to the publisher, and updates the status board; the
publisher's own thread drains the outbox to the broker; the web face, in a process of its own
(:mod:`device.web_process`), serves the page from a copy of the board.

Lifecycle is explicit (:meth:`Daemon.start`, :meth:`Daemon.run`, :meth:`Daemon.stop`): a flat list
of start steps and an ordered stop that joins every thread, publishes ``stopped``, flushes and
closes the database. Loops wait with timeouts and check one stop event, so SIGTERM never has to
become SIGKILL. Nothing opens a camera or a connection at import time.

Storage that fails (a read-only or full SD card, a damaged database), at start or later, is a
reported degraded state, never a crash: results are then held in memory and published directly
(:mod:`device.spool`), ``/healthz`` fails naming storage, and the outbox is reopened every
``storage_retry_s``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from device import __version__
from device.activities import ActivityEvent
from device.capture import Capture, open_source
from device.classifier import Classifier, Step
from device.config import Config
from device.decisions import UNKNOWN, DecisionSettings, Output
from device.fleet_pull import FleetPuller, Health
from device.http_server import tls_context
from device.model.bundle import Smoothing
from device.model.loaded import LoadedModel
from device.model.store import Activation, ModelRejected, ModelStore
from device.pose import PoseModelError, PoseOptions, check_task_file, offline_task_path
from device.prediction import Prediction
from device.publisher import MqttPublisher, model_state_payload
from device.sources import Frame
from device.spool import MEMORY_ROWS, RETRY_S, Spool, Stamp
from device.stations import Station
from device.status import LiveView, PersonView, StatusBoard, counter_text
from device.systemd import Notifier
from device.web_process import WebProcess

log = logging.getLogger("device.daemon")

_FRAME_WAIT_S = 0.5  # how long the pipeline waits for a frame before checking the stop event
_HOUSEKEEPING_S = 1.0  # status, watchdog and outbox gauges


class Daemon:
    """One running kiosk; build it with :func:`build`."""

    def __init__(
        self,
        config: Config,
        *,
        opener: Callable = open_source,
        notifier: Notifier | None = None,
        storage_retry_s: float = RETRY_S,
    ) -> None:
        self.config = config
        self.storage_retry_s = storage_retry_s
        self.status = StatusBoard(config.device.id, privacy=config.device.privacy)
        self.capture = Capture(config.source, config.capture, self.status, opener)
        self.notifier = notifier or Notifier()
        self.outbox: Spool | None = None  # the durable outbox, and memory while storage fails
        self.publisher: MqttPublisher | None = None
        self.web: WebProcess | None = None  # the page, in a process of its own
        self.store: ModelStore | None = None
        self.fleet: FleetPuller | None = None  # models pulled over MQTT, with [fleet] groups
        # one pose graph restarted per clip: building one per clip would stall every thread
        self.classifier = Classifier(
            None,
            pose=_pose_options(config),
            timer=self.status.record_stage,
            fresh_pose=False,
            everyone=config.pose.classify == "everyone",
            stations=tuple(Station(s.name, tuple(s.polygon)) for s in config.stations),
        )
        self._labels: dict[int, str] = {}  # person -> latest label, for the retained state
        self._model_change = threading.Lock()
        self._stop = threading.Event()
        self._pipeline = threading.Thread(target=self._run_pipeline, name="pipeline", daemon=True)
        self._person_present: bool | None = None
        self._last_prediction_payload: dict | None = None
        self._storing_fails = False  # the last result was refused as unpublishable (logged once per run)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the outbox, connect MQTT (in the background), load the model, start the threads.

        The model is the store's active version, so a restart keeps what was last activated; a
        fresh device installs ``model.bundle`` through the same checks (see :meth:`_load_model`).
        An outbox that cannot be opened is reported (``storage`` in the status), not raised.
        Ends by telling systemd ``READY=1``: ready means serving, with or without a model — a
        freshly provisioned kiosk waits for one, and ``Type=notify`` must not restart it for that.
        """
        config = self.config
        tls_context(config.http)  # a bad certificate stops the start before anything runs
        if config.mqtt.enabled:
            cap_mb = config.outbox.max_mb
            self.outbox = Spool(
                config.outbox_path,
                max_rows=config.outbox.max_rows,
                synchronous=config.outbox.synchronous,
                max_bytes=None if cap_mb is None else int(cap_mb * 2**20),
                memory_rows=min(config.outbox.max_rows, MEMORY_ROWS),
                retry_s=self.storage_retry_s,
                status=self.status,
            )
            self.publisher = MqttPublisher(
                config.mqtt, config.device.id, self.outbox, self.status, device_name=config.device.name
            )
            self.publisher.start()
        self.store = ModelStore.from_config(config)
        self._load_model()
        self._start_fleet()
        if config.http.enabled:  # serving before the first result: whoever sees one can ask the API
            self.web = WebProcess(config, self.status, self)
            self.web.start()
        self.capture.start()
        self._pipeline.start()
        log.info(
            "daemon started",
            extra={"device_id": config.device.id, "version": __version__, "http_port": self.http_port},
        )
        self.notifier.notify("READY=1", self._status_line())

    @property
    def http_port(self) -> int | None:
        return self.web.port if self.web is not None else None

    def run(self) -> None:
        """Block until :meth:`request_stop`; meanwhile keep systemd and the status board current.

        The watchdog is fed while frames get through pose and the web process runs, so a hung camera
        or pipeline, or a page whose process ended, gets the service restarted. A storage failure
        does not stop the feeding: the process still classifies and publishes (from memory), and a
        restart cannot repair a read-only or full card; it would only lose what memory holds.
        ``/healthz`` fails instead, naming storage.
        """
        watchdog = self.notifier.watchdog_interval_s() or _HOUSEKEEPING_S
        while not self._stop.wait(min(watchdog, _HOUSEKEEPING_S)):
            self._housekeeping()

    def request_stop(self) -> None:
        """Ask :meth:`run` to return (safe from a signal handler)."""
        self._stop.set()

    def stop(self) -> None:
        """Ordered shutdown: capture, pipeline, web, then publish ``stopped``, flush, close the database."""
        self._stop.set()
        self.notifier.notify("STOPPING=1")
        self.capture.stop()
        if self._pipeline.is_alive():
            self._pipeline.join(10)
        if self.fleet is not None:
            self.fleet.stop()
        if self.web is not None:
            self.web.stop()
        if self.publisher is not None:
            self.publisher.stop()
        if self.outbox is not None:
            self.outbox.close()
        log.info("daemon stopped", extra={"device_id": self.config.device.id})

    def _housekeeping(self) -> None:
        flowing = self.status.frames_flowing()
        if self.outbox is not None:
            self.outbox.maintain()  # reopens a failed outbox when its retry is due
            self.status.set_outbox(self.outbox.depth, self.outbox.dropped)
            self.status.set_storage(self.outbox.state())
        # systemd restarts us if frames stop for longer than WatchdogSec, or the page's process ended
        if flowing and (self.web is None or self.web.running):
            self.notifier.notify("WATCHDOG=1")
        self.notifier.notify(self._status_line())

    def _status_line(self) -> str:
        """systemd's one-line ``STATUS=`` (``systemctl status`` shows it)."""
        snapshot = self.status.snapshot()
        stages, camera, storage = snapshot["stages"], snapshot["camera"]["state"], snapshot["storage"]
        model = self.classifier.model
        return (
            f"STATUS=camera {camera}; pose {stages['pose']['fps']} fps; "
            f"classify {stages['classify']['fps']} /s; model "
            + (model.info.version if model is not None else "none (waiting for one)")
            + ("" if storage["ok"] else f"; storage failed, {storage['memory']['depth']} results in memory")
        )

    # ------------------------------------------------------------------ models (web.ModelCatalog)

    def list(self) -> list[dict[str, Any]]:
        """The stored versions, newest first (``GET /api/models``)."""
        return self._model_store().list()

    def install(self, data: bytes | Path, force: bool = False) -> dict[str, Any]:
        """Install a bundle through every check of the store and switch the pipeline to it.

        Raises :class:`ModelRejected` (a ``ValueError``: HTTP 422) naming the failed step; the
        running model then stays active and the refusal is on the page and in ``model/state``.
        While no model runs there is nothing a downgrade could replace, so ``force`` is implied.
        """
        force = force or self.classifier.model is None
        return self._change_model(lambda: self._model_store().install(data, force))

    def activate(self, version: str, force: bool = False) -> dict[str, Any]:
        """Switch to a stored version (rollback or roll forward), checked again from disk."""
        return self._change_model(lambda: self._model_store().activate(version, force))

    def revoke_keys(self, data: bytes) -> dict[str, Any]:
        """Put a signed key revocation list in force (``POST /api/keys/revocations``).

        Raises :class:`~device.model.revocation.RevocationRejected` (a ``ValueError``: HTTP 422).
        A running model whose key is now revoked keeps running — stopping classification helps
        nobody before a replacement arrives — but the page and ``model/state`` say so, and it
        will not load at the next start.
        """
        with self._model_change:
            answer = self._model_store().accept_revocations(data).as_dict()
            model = self.classifier.model
            if model is not None and model.manifest.key_id in answer["revoked"]:
                detail = (
                    f"{model.info.model_id} {model.info.version} is signed by revoked key "
                    f"{model.manifest.key_id}; it will not load at the next start: install one signed by "
                    "another key"
                )
                self.status.mark_model("rejected", detail)
                self._publish_model_state("rejected", detail)
                answer["detail"] += f"; {detail}"
        return answer

    def _model_store(self) -> ModelStore:
        if self.store is None:
            raise RuntimeError("the model store opens in Daemon.start()")
        return self.store

    def _load_model(self) -> None:
        """At start: the store's active version; failing that, the configured bundle; else none.

        A refusal is reported and the daemon runs on without a model rather than failing to
        start, so its page and API stay up to receive a good one.
        """
        active = self._model_store().active()
        if active is not None:
            try:
                self.activate(active, force=True)  # force: load it although it is the active one
                return
            except ModelRejected:
                pass  # reported by _change_model; the configured bundle is the fallback
        if self.config.model.bundle is not None:
            with contextlib.suppress(ModelRejected):
                self.install(self.config.model.bundle)

    def _change_model(self, change: Callable[[], Activation]) -> dict[str, Any]:
        """Run one store change and switch the pipeline to its model, or report the refusal.

        Changes are serialized, so the store's active version and the pipeline's always agree.
        """
        with self._model_change:
            try:
                activation = change()
            except ModelRejected as exc:
                log.error("model rejected", extra={"step": exc.step, "reason": exc.message})
                self.status.mark_model("rejected", str(exc))
                self._publish_model_state("rejected", str(exc))
                raise
            if activation.model is not None:
                self._switch(activation.model, activation)
        return activation.as_dict()

    def _switch(self, model: LoadedModel, activation: Activation) -> None:
        """Hand the pipeline the new model in one assignment: it never stops, the next frame uses it."""
        self.classifier.use_model(model, self._decision_settings(model))
        state, detail = ("rolled_back", activation.detail) if activation.rolled_back else ("ok", "")
        self.status.set_model(replace(model.info, status=state, detail=detail))
        self._publish_model_state(state, detail)
        log.info(
            "model active",
            extra={
                "model_id": model.info.model_id,
                "version": model.info.version,
                "previous": activation.previous,
            },
        )

    def _publish_model_state(self, state: str, detail: str) -> None:
        if self.publisher is None:
            return
        info = model.info if (model := self.classifier.model) else None
        self.publisher.set_model_state(model_state_payload(info, state, detail, self.status.fleet))

    # ------------------------------------------------------------------ models pulled over MQTT

    def _start_fleet(self) -> None:
        """Follow the desired model of ``[fleet] groups`` (:mod:`device.fleet_pull`), after the
        active model is loaded: a trial a restart cut short is judged against it."""
        groups = self.config.fleet.groups
        if not groups or self.publisher is None or self.store is None:
            return
        self.fleet = FleetPuller(
            self.config.device.id,
            self.config.mqtt.prefix,
            self.config.fleet,
            self.store,
            self,
            self._health,
            self._fleet_changed,
            state_dir=self.config.device.state_dir,
        )
        self.publisher.subscribe(self.fleet.topics, self.fleet.offer)
        self.fleet.start()

    def _health(self) -> Health:
        """What a pulled model's trial watches: frames through pose, results, unknowns, the pipeline."""
        counters = self.status.counters()  # twice a second during a trial: no percentiles
        stopped = not self._pipeline.is_alive() and not self._stop.is_set()
        return Health(
            frames=counters["frames_processed"],
            classifications=counters["classifications"],
            unknown=self.status.label_counts().get(UNKNOWN, 0),
            flowing=self.status.frames_flowing(self.config.fleet.trial_stall_s),
            failure="the pipeline stopped" if stopped else None,
        )

    def _fleet_changed(self, state: Mapping[str, Any]) -> None:
        """The pull moved on: ``/api/status`` and the retained ``model/state`` say where it stands."""
        self.status.set_fleet(state)
        model = self.status.model
        self._publish_model_state(model.status if model else "ok", model.detail if model else "")

    # ------------------------------------------------------------------ the pipeline

    def _decision_settings(self, model: LoadedModel) -> DecisionSettings:
        """The bundle's threshold, smoothing and no-person policy, with the config's overrides."""
        bundle = DecisionSettings.of(model)
        smoothing, no_person = self.config.model.smoothing, self.config.model.no_person
        return DecisionSettings(
            bundle.threshold,
            Smoothing(smoothing.kind, smoothing.span_s, smoothing.enter, smoothing.exit)
            if smoothing
            else bundle.smoothing,
            no_person or bundle.no_person,
        )

    def _run_pipeline(self) -> None:
        try:  # fail here, once, rather than on the first frame of every clip
            if self.config.pose.model is None:
                offline_task_path()
            else:
                check_task_file(self.config.pose.model)
        except PoseModelError as exc:
            self._pose_unusable(exc)
            return
        try:
            clip_open = False  # frames of a clip arrived whose end was not yet told to activities
            while not self._stop.is_set():
                frame = self.capture.slot.get(_FRAME_WAIT_S)
                if frame is not None:
                    self._process(frame)
                    clip_open = True
                elif clip_open and self.capture.ended.is_set():  # the playlist ended: sets end too
                    self._publish(self.classifier.new_clip())
                    clip_open = False
        except PoseModelError as exc:
            self._pose_unusable(exc)
        finally:
            self.classifier.close()

    def _pose_unusable(self, exc: PoseModelError) -> None:
        log.error("pose model unusable", extra={"reason": str(exc)})
        self.status.set_camera("error", None, f"pose model: {exc}")

    def _process(self, frame: Frame) -> None:
        step = self.classifier.process(frame)  # a new clip restarts pose tracking, window, smoothing
        if step.person is None:
            self.status.count("frames_without_person")
        self._presence(step.person is not None)
        if step.people:  # with everyone: only the people in view keep a place in the state
            self._labels = {p: label for p, label in self._labels.items() if p in dict(step.people)}
        self._publish(step.outputs)
        self.status.count("frames_processed")  # counted once its results are out
        self._show(frame, step)

    def _show(self, frame: Frame, step: Step) -> None:
        """The live view's newest frame: everyone in view with their latest label, the stations;
        in privacy mode the keypoints without the image."""
        previous = self.status.view
        latest = step.predictions[-1] if step.predictions else (previous.prediction if previous else None)
        people = tuple(
            PersonView(person, points, self._display_name(self._labels.get(person)))
            for person, points in step.people
        )
        height, width = frame.image.shape[:2]
        self.status.set_view(
            LiveView(
                None if self.status.privacy else frame.image,
                step.person,
                latest,
                frame.frame_number,
                counter_text(self.classifier.activity_state()),
                people,
                self.classifier.stations,
                (width, height),
            )
        )

    def _publish(self, outputs: Sequence[Output]) -> None:
        """Every classification and activity event, in order: stored, then on the board and retained."""
        for output in outputs:
            stamp = self._store(output)
            if isinstance(output, Prediction):
                self._classified(output, stamp)
            else:
                self.status.add_event(output)
        if any(isinstance(o, ActivityEvent) for o in outputs):
            state = self.classifier.activity_state()
            self.status.set_activity(state)
            if self.publisher is not None and state is not None:
                self.publisher.set_activity(state)

    def _store(self, output: Output) -> Stamp | None:
        """Hand one output to the spool for the publisher; its ``(epoch, seq)``, or None without MQTT.

        The spool stores it durably, or holds it in memory while storage fails, so a failing SD
        card costs no result here. Only a payload MQTT or JSON cannot carry (NaN from a broken
        model) is refused; it is counted (``outbox_errors``) and logged when such a run begins,
        not 20 times a second; the pipeline keeps classifying and the page keeps showing results.
        """
        if self.outbox is None or self.publisher is None:
            return None
        try:
            stamp = self.outbox.append(self.publisher.topic(output.topic), output.payload())
        except ValueError as exc:
            if not self._storing_fails:
                log.error("result not publishable", extra={"topic": output.topic, "reason": str(exc)})
            self._storing_fails = True
            self.status.count("outbox_errors")
            return None
        if self._storing_fails:
            log.info("results publishable again", extra={"topic": output.topic})
            self._storing_fails = False
        self.publisher.notify()
        return stamp

    def _classified(self, prediction: Prediction, stamp: Stamp | None) -> None:
        """The board and the retained ``state`` follow the latest classification."""
        self.status.add_prediction(prediction)
        payload = prediction.payload()
        self._labels[prediction.person] = prediction.label
        self._last_prediction_payload = {
            **({"seq": stamp.seq, "epoch": stamp.epoch} if stamp is not None else {}),
            **payload,
            "label_name": self._display_name(prediction.label),
            "people": [{"person": p, "label": label} for p, label in sorted(self._labels.items())],
        }
        if stamp is not None and self.publisher is not None:
            self.publisher.set_state(
                {**self._last_prediction_payload, "person_present": bool(self._person_present)}
            )

    def _display_name(self, label: str | None) -> str | None:
        """What the bundle calls ``label`` where it gives a display name (the page and retained
        state show it; payloads keep the model's label)."""
        model = self.classifier.model
        return model.info.display_name(label) if model is not None and label is not None else label

    def _presence(self, present: bool) -> None:
        if present == self._person_present:
            return
        self._person_present = present
        self.status.set_person_present(present)
        if self.publisher is not None:
            self.publisher.set_state({**(self._last_prediction_payload or {}), "person_present": present})


def _pose_options(config: Config) -> PoseOptions:
    pose = config.pose
    return PoseOptions(
        model_path=pose.model,
        num_poses=pose.num_poses,
        min_detection_confidence=pose.min_detection_confidence,
        min_presence_confidence=pose.min_presence_confidence,
        min_tracking_confidence=pose.min_tracking_confidence,
    )


def build(config: Config, **kwargs: object) -> Daemon:
    """The daemon for a validated config (see :mod:`device.config`); nothing runs until start()."""
    return Daemon(config, **kwargs)
