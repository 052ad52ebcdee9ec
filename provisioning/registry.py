"""Bundles from the MLflow model registry: ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``).

``push`` resolves the URI to one model version, downloads its bundle (the version's source is the
folder ``train --mlflow`` registered) and checks it against the version's tags — the SHA-256 of
the zip and the manifest's model id and version — so what reaches the kiosks is byte for byte
what was registered. After every kiosk runs it, ``--promote ALIAS`` moves that alias (e.g.
``production``) to the version. MLflow is imported only here, and only for such a URI.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from device.cli import UsageError
from trainer import tracking

SCHEME = "models:/"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


def is_model_uri(text: str) -> bool:
    return text.startswith(SCHEME)


@dataclass(frozen=True)
class Reference:
    """A parsed ``models:/`` URI: a name and either an alias or a version number."""

    uri: str
    name: str
    alias: str | None
    version: str | None


def parse(uri: str) -> Reference:
    match = _URI.match(uri)
    if not match:
        raise UsageError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return Reference(uri, match["name"], match["alias"], match["version"])


@dataclass(frozen=True)
class RegisteredBundle:
    """A registered version's bundle, downloaded and checked against the version's tags."""

    store: tracking.Store
    name: str
    version: str  # the registry's version number
    path: Path
    tags: dict[str, str]

    def check_identity(self, model_id: str, version: str) -> None:
        """The manifest's identity must be the one the version's tags recorded at registration."""
        expected = (self.tags.get(tracking.TAG_MODEL_ID), self.tags.get(tracking.TAG_VERSION))
        if expected != (model_id, version):
            raise UsageError(
                f"models:/{self.name}/{self.version}: the bundle is {model_id} {version}, the "
                f"version's tags say {expected[0]} {expected[1]}; nothing pushed"
            )


def fetch(uri: str, store_uri: str, into: Path) -> RegisteredBundle:
    """Resolve ``uri`` in the store at ``store_uri`` and download its bundle into ``into``."""
    reference = parse(uri)
    store = tracking.open_store(store_uri, create=False)
    with store.errors(uri):
        if reference.alias is not None:
            found = store.client.get_model_version_by_alias(reference.name, reference.alias)
        else:
            found = store.client.get_model_version(reference.name, reference.version)
    tags = found.tags or {}
    missing = [tag for tag in (tracking.TAG_FILE, tracking.TAG_SHA256) if not tags.get(tag)]
    if missing:
        raise UsageError(
            f"{uri}: version {found.version} has no {missing[0]} tag; it was not registered by "
            "`python -m trainer train --mlflow` or `export --mlflow`"
        )
    import mlflow.artifacts  # open_store has imported mlflow (or said how to install it)

    with store.errors(f"{uri}: downloading version {found.version}"):
        folder = mlflow.artifacts.download_artifacts(
            artifact_uri=found.source, dst_path=str(into), tracking_uri=store.uri
        )
    path = Path(folder) / Path(tags[tracking.TAG_FILE]).name
    if not path.is_file():
        raise UsageError(f"{uri}: version {found.version}'s source {found.source} holds no {path.name}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != tags[tracking.TAG_SHA256]:
        raise UsageError(
            f"{uri}: the downloaded {path.name} has sha256 {digest[:16]}…, the version registered "
            f"{tags[tracking.TAG_SHA256][:16]}…; nothing pushed"
        )
    return RegisteredBundle(store, reference.name, str(found.version), path, dict(tags))


def promote(registered: RegisteredBundle, alias: str) -> str:
    """Point ``alias`` at the pushed version; a line saying where it pointed before."""
    store, name = registered.store, registered.name
    client = store.client
    with store.errors(f"moving alias {alias!r} of {name}"):
        before = client.get_registered_model(name).aliases.get(alias)
        client.set_registered_model_alias(name, alias, registered.version)
    was = f" (was version {before})" if before is not None else ""
    return f"moved models:/{name}@{alias} to version {registered.version}{was}"
