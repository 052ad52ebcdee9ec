"""Lightweight kiosks for fleet tests: many in one process, without camera, pose or web.

Each runs the kiosk's own model-delivery code: the daemon's :class:`~device.publisher.MqttPublisher`
(its subscription and its retained ``model/state``, over its own SQLite outbox), a
:class:`~device.model.store.ModelStore` in a state folder of its own, and the
:class:`~device.fleet_pull.FleetPuller`. Only the pipeline is missing, so its health — what a
trial judges — comes from the active model classifying the rows its bundle carries as samples,
with the bundle's decision threshold: a model whose threshold leaves every result ``unknown``
fails its trial here as it does on a real kiosk, without a single frame.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from device.config import FleetSection, MqttSection
from device.fleet_pull import FleetPuller, Health
from device.model.loaded import LoadedModel
from device.model.store import Activation, ModelStore
from device.outbox import Outbox
from device.publisher import MqttPublisher, model_state_payload
from device.status import StatusBoard


class LightKiosk:
    """One kiosk of a simulated fleet; implements the puller's ``ModelChanger`` as the daemon does."""

    def __init__(
        self, folder: Path, device_id: str, broker_port: int, trusted_key: Path, fleet: FleetSection
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.device_id = device_id
        self.status = StatusBoard(device_id)
        self.store = ModelStore(folder, [trusted_key])
        self.outbox = Outbox(folder / "outbox.sqlite", max_rows=100)
        self.publisher = MqttPublisher(
            MqttSection(port=broker_port, discovery=False, stats_interval_s=3600),
            device_id,
            self.outbox,
            self.status,
        )
        self.model: LoadedModel | None = None
        self._detail = ("ok", "")
        self._counts = [0, 0, 0]  # frames, classifications, unknown
        self._lock = threading.Lock()
        self._stopped = False
        self.puller = FleetPuller(
            device_id, "movement", fleet, self.store, self, self.health, self._fleet_changed, state_dir=folder
        )

    def start(self, bundle: bytes | None = None) -> LightKiosk:
        """Install ``bundle`` (the model it ships with), connect, subscribe and start pulling."""
        active = self.store.active()
        if active is not None:
            self.activate(active, force=True)
        elif bundle is not None:
            self.install(bundle)
        self.publisher.subscribe(self.puller.topics, self.puller.offer)
        self.publisher.start()
        self.puller.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.puller.stop()
        self.publisher.stop(timeout=2.0)
        self.outbox.close()

    # ------------------------------------------------------------------ ModelChanger

    def install(self, data: bytes, force: bool = False) -> dict[str, Any]:
        return self._use(self.store.install(data, force or self.model is None))

    def activate(self, version: str, force: bool = False) -> dict[str, Any]:
        return self._use(self.store.activate(version, force))

    def _use(self, activation: Activation) -> dict[str, Any]:
        if activation.model is not None:
            self.model = activation.model
            self._detail = ("rolled_back", activation.detail) if activation.rolled_back else ("ok", "")
            self._publish_model_state()
        return activation.as_dict()

    # ------------------------------------------------------------------ health and state

    def health(self) -> Health:
        """One "frame" per sample row, classified by the active model with its own threshold."""
        model = self.model
        if model is not None:
            manifest = model.manifest
            for row in manifest.samples.rows:
                confidence = float(np.max(model.probabilities(np.array([row], dtype=np.float64))))
                with self._lock:
                    self._counts[0] += 1
                    self._counts[1] += 1
                    self._counts[2] += confidence < manifest.decision.threshold
        with self._lock:
            frames, classifications, unknown = self._counts
        return Health(frames, classifications, unknown, flowing=True)

    def version(self) -> str | None:
        return self.model.info.version if self.model is not None else None

    def _fleet_changed(self, state: Mapping[str, Any]) -> None:
        self.status.set_fleet(state)
        self._publish_model_state()

    def _publish_model_state(self) -> None:
        info = self.model.info if self.model is not None else None
        self.publisher.set_model_state(model_state_payload(info, *self._detail, self.status.fleet))
