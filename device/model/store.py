"""The model store on the device: verified bundles kept per version, and which one is active.

Every model change — ``POST /api/models``, ``POST /api/models/<version>/activate``, ``python -m
device models …`` and the daemon's start — goes through :meth:`ModelStore.install` or
:meth:`ModelStore.activate`, which run the same named steps; the first that fails raises
:class:`ModelRejected` and nothing changes (the previous model stays active and running):

1. ``verify`` — :func:`~device.model.bundle.open_bundle` with the trusted keys and the size limit
   (layout, zip slip, links, sizes, signature, manifest schema, hash), refusing a bundle signed by
   a key the revocation list in force revokes (:mod:`device.model.revocation`). A stored bundle is
   read back and verified again every time it is loaded, at start too, and must still be the exact
   file that was installed: the disk is never trusted.
2. ``compatibility`` — ``min_device_version``; on install, a version older than the active one needs
   ``force`` (an explicit ``activate`` is the way to roll back), a stored version number with a
   different bundle needs ``force`` to be replaced, and the active version again is a no-op
   unless forced.
   ``rollback`` — whatever ``force`` says, nothing below its model's version floor and nothing
   older than what ran here that never ran here (:mod:`device.model.rollback`).
3. ``load`` — the runtime and a :class:`~device.model.loaded.LoadedModel`: the device can compute
   every column the model reads.
4. ``smoke test`` — the manifest's sample rows must reproduce their expected probabilities.
5. ``activate`` — the bundle is written under ``<state_dir>/models/<version>.zip`` (temporary file,
   fsync, rename), the registry marks it active, old versions are pruned, and the floor of its
   model rises to the oldest version still kept.

The store only records the choice; switching the running pipeline is the caller's (the daemon
swaps its ``Active`` model with the :class:`Activation`'s ``model``).

The registry is SQLite (``<state_dir>/models/registry.sqlite``, WAL, ``synchronous=FULL`` because
a kiosk loses power without warning). The active version is the one activated last: each
activation stamps a row with the next number of a counter, not the wall clock, which a Raspberry
Pi without a real-time clock may have wrong at boot. Pruning keeps the ``keep_versions`` most
recently activated versions, and never fewer than two, so the rollback target survives.

Thread-safe: changes are serialized by a lock held for their whole run; reads (``list``,
``active``) each open their own short-lived connection and never wait for a model to load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from device.model import revocation, rollback
from device.model.bundle import (
    MAX_BUNDLE_SIZE,
    BundleError,
    VerifiedBundle,
    load_public_key,
    open_bundle,
    write_atomic,
)
from device.model.fields import compare_versions, parse_version
from device.model.loaded import LoadedModel
from device.model.revocation import Accepted, RevocationKeeper
from device.model.rollback import RollbackGuard
from device.model.runtimes import check_samples, load_runtime

if TYPE_CHECKING:
    from device.config import Config

log = logging.getLogger("device.model.store")

REGISTRY = "registry.sqlite"
_SIDECARS = ("-wal", "-shm")
_SCHEMA = """CREATE TABLE IF NOT EXISTS versions (
    version TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,          -- of the model file, as the manifest and model/state give it
    bundle_sha256 TEXT NOT NULL,   -- of the stored zip: what is read back must be what was verified
    runtime TEXT NOT NULL,
    labels TEXT NOT NULL,          -- JSON list
    installed_at TEXT NOT NULL,    -- ISO 8601 UTC, for people; ordering uses `activated`
    activated INTEGER NOT NULL UNIQUE
)"""


class ModelRejected(ValueError):
    """A model change refused at one step; ``str()`` is ``"<step>: <message>"``."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message


class StoreError(RuntimeError):
    """The registry cannot be opened (permissions, a full disk, a newer schema)."""


@dataclass(frozen=True)
class Activation:
    """The outcome of an install or activate that was not refused."""

    version: str
    model_id: str
    previous: str | None
    """The version that was active before the call (None on a fresh device)."""
    model: LoadedModel | None
    """The loaded, smoke-tested model to run now; None when nothing changed."""

    @property
    def changed(self) -> bool:
        return self.model is not None

    @property
    def rolled_back(self) -> bool:
        """An older version than the previous one is now active."""
        return self.previous is not None and compare_versions(self.version, self.previous) < 0

    @property
    def detail(self) -> str:
        """One line for people: the CLI prints it, the API returns it."""
        name = f"{self.model_id} {self.version}"
        if not self.changed:
            return f"{name} is already active; nothing changed (force reloads it)"
        if self.rolled_back:
            return f"{name} is active (rolled back from {self.previous})"
        return f"{name} is active" + (f" (previous: {self.previous})" if self.previous else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model_id": self.model_id,
            "status": "active",
            "previous": self.previous,
            "changed": self.changed,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class _Row:
    version: str
    model_id: str
    sha256: str
    bundle_sha256: str
    runtime: str
    labels: tuple[str, ...]
    installed_at: str
    activated: int


class ModelStore:
    """Verified bundles under ``<state_dir>/models`` and a SQLite registry of them (module docstring).

    ``trusted_keys`` are public key files (PEM), read at every verification, so a rotated key
    file takes effect without a restart and an unreadable one is reported as a ``verify`` failure.
    The key revocation list in force and the version floors are loaded when the store opens.
    """

    def __init__(
        self,
        state_dir: str | Path,
        trusted_keys: Sequence[str | Path],
        keep_versions: int = 3,
        max_bundle_bytes: int = MAX_BUNDLE_SIZE,
    ) -> None:
        if keep_versions < 1 or max_bundle_bytes < 1:
            raise ValueError("keep_versions and max_bundle_bytes must be at least 1")
        self.folder = Path(state_dir) / "models"
        self.trusted_keys = tuple(Path(key) for key in trusted_keys)
        self.keep_versions = keep_versions
        self.max_bundle_bytes = max_bundle_bytes
        self._change = threading.Lock()
        self.read_only: str | None = None
        """Why models cannot change now (the state folder's file system is read-only), or None."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.folder}: cannot create the model folder ({exc.strerror})") from exc
        self._open_or_reset()
        self.rollback = RollbackGuard(self.folder / rollback.FILE_NAME, self._pairs())
        self.revocations = RevocationKeeper(self.folder / revocation.FILE_NAME, self.trusted_keys)

    @classmethod
    def from_config(cls, config: Config) -> ModelStore:
        """The store the daemon and ``python -m device models`` share for one configuration."""
        return cls(
            config.device.state_dir,
            config.model.trusted_keys,
            keep_versions=config.model.keep_versions,
            max_bundle_bytes=int(config.model.max_bundle_mb * 1024 * 1024),
        )

    @property
    def registry(self) -> Path:
        return self.folder / REGISTRY

    # ------------------------------------------------------------------ reading

    def active(self) -> str | None:
        """The active version, or None when nothing was ever installed."""
        rows = self._rows()
        return rows[0].version if rows else None

    def list(self) -> list[dict[str, Any]]:
        """Every stored version, newest version first (``GET /api/models``)."""
        rows = self._rows()
        active = rows[0].version if rows else None
        return [
            {
                "version": row.version,
                "model_id": row.model_id,
                "sha256": row.sha256,
                "installed_at": row.installed_at,
                "status": "active" if row.version == active else "available",
                "runtime": row.runtime,
                "labels": list(row.labels),
            }
            for row in sorted(rows, key=lambda r: parse_version(r.version), reverse=True)
        ]

    # ------------------------------------------------------------------ changing

    def install(self, source: bytes | Path, force: bool = False) -> Activation:
        """Verify, check, load and smoke-test a bundle (bytes or a file), then store it as active.

        ``force`` allows a downgrade, replaces a stored version whose bundle differs, and reloads
        the active version instead of leaving it alone.
        """
        data = source if isinstance(source, bytes) else self._read(source)
        bundle = self._verify(data)
        manifest = bundle.manifest
        digest = hashlib.sha256(data).hexdigest()
        self._check_writable()
        with self._change:
            rows = self._rows()
            previous = rows[0].version if rows else None
            stored = next((r for r in rows if compare_versions(r.version, manifest.version) == 0), None)
            if stored is not None and stored.bundle_sha256 != digest and not force:
                raise ModelRejected(
                    "compatibility",
                    f"version {stored.version} is already stored with a different bundle; "
                    "export the model under a new version (or use force to replace it)",
                )
            if stored is not None and stored.version == previous and not force:
                return Activation(manifest.version, manifest.model_id, previous, None)
            self._check_rollback(manifest.model_id, manifest.version)
            if previous is not None and compare_versions(manifest.version, previous) < 0 and not force:
                raise ModelRejected(
                    "compatibility",
                    f"version {manifest.version} is older than the active {previous} (versions compare "
                    "number by number from the left); export it with a higher version, or force the "
                    "downgrade (--force on push or models install, or activate a stored version)",
                )
            model = load_model(bundle)
            self._store(data, bundle, digest, replaces=stored)
            self._prune()
            self.rollback.record(manifest.model_id, manifest.version, self._pairs())
        log.info("model installed", extra={"model_id": manifest.model_id, "version": manifest.version})
        return Activation(manifest.version, manifest.model_id, previous, model)

    def activate(self, version: str, force: bool = False) -> Activation:
        """Make a stored version active again (rollback or roll forward): re-verify, load, smoke-test.

        Naming the version is the explicit intent, so an older one needs no ``force``; ``force``
        reloads the version that is already active (the daemon does so at start).
        """
        with self._change:
            rows = self._rows()
            previous = rows[0].version if rows else None
            row = next((r for r in rows if _same_version(r.version, version)), None)
            if row is None:
                stored = ", ".join(r.version for r in rows) or "none"
                raise ModelRejected("activate", f"version {version!r} is not stored (stored: {stored})")
            reload = row.version == previous  # the active one again: nothing to record
            if reload and not force:
                return Activation(row.version, row.model_id, previous, None)
            if not reload:
                self._check_writable()
            self._check_rollback(row.model_id, row.version)
            data = self._read(self.folder / f"{row.version}.zip")
            if hashlib.sha256(data).hexdigest() != row.bundle_sha256:
                raise ModelRejected("verify", f"{row.version}.zip changed on disk since it was installed")
            model = load_model(self._verify(data))
            if not reload:
                with self._activation() as (connection, stamp):
                    connection.execute(
                        "UPDATE versions SET activated = ? WHERE version = ?", (stamp, row.version)
                    )
                self.rollback.record(row.model_id, row.version, self._pairs())
        log.info("model activated", extra={"model_id": row.model_id, "version": row.version})
        return Activation(row.version, row.model_id, previous, model)

    def accept_revocations(self, data: bytes) -> Accepted:
        """A signed key revocation list (``POST /api/keys/revocations``): checked, then in force.

        Raises :class:`~device.model.revocation.RevocationRejected` (a ``ValueError``) when refused.
        From now on bundles signed by a revoked key are refused at install and whenever loaded.
        """
        with self._change:
            return self.revocations.accept(data)

    # ------------------------------------------------------------------ the steps

    def _read(self, path: Path) -> bytes:
        return read_bundle_file(path, self.max_bundle_bytes)

    def _verify(self, data: bytes) -> VerifiedBundle:
        return verify_bundle(data, self.trusted_keys, self.max_bundle_bytes, self.revocations.revoked)

    def _check_rollback(self, model_id: str, version: str) -> None:
        refusal = self.rollback.refusal(model_id, version)
        if refusal is not None:
            raise ModelRejected("rollback", refusal)

    def _store(self, data: bytes, bundle: VerifiedBundle, digest: str, replaces: _Row | None) -> None:
        """The ``activate`` step of an install: the file first, then one registry transaction."""
        manifest = bundle.manifest
        try:
            write_atomic(self.folder / f"{manifest.version}.zip", data, durable=True)
        except OSError as exc:
            raise ModelRejected("activate", f"cannot store the bundle ({exc.strerror})") from exc
        with self._activation() as (connection, stamp):
            if replaces is not None:
                connection.execute("DELETE FROM versions WHERE version = ?", (replaces.version,))
            connection.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    manifest.version,
                    manifest.model_id,
                    manifest.sha256,
                    digest,
                    manifest.runtime,
                    json.dumps(list(manifest.labels)),
                    datetime.now(UTC).isoformat(timespec="seconds"),
                    stamp,
                ),
            )

    @contextmanager
    def _activation(self) -> Iterator[tuple[sqlite3.Connection, int]]:
        """One registry transaction and the next activation number; a failure is the ``activate`` step's."""
        try:
            with self._transaction() as connection:
                stamp = connection.execute("SELECT COALESCE(MAX(activated), 0) + 1 FROM versions").fetchone()
                yield connection, stamp[0]
        except sqlite3.Error as exc:
            raise ModelRejected("activate", f"registry {self.registry}: {exc}") from exc

    def _prune(self) -> None:
        """Forget all but the most recently activated versions and delete every other bundle file.

        Runs after the new version was committed; a failure here costs disk space, not the model.
        """
        keep = max(self.keep_versions, 2)  # the active one and the one before it, always
        try:
            with self._transaction() as connection:
                connection.execute(
                    "DELETE FROM versions WHERE version NOT IN "
                    "(SELECT version FROM versions ORDER BY activated DESC LIMIT ?)",
                    (keep,),
                )
                kept = {row[0] for row in connection.execute("SELECT version FROM versions")}
        except sqlite3.Error as exc:
            log.warning("model registry not pruned", extra={"reason": str(exc)})
            return
        # bundles of forgotten versions, and temporary files of writes a power cut interrupted
        for path in [*self.folder.glob("*.zip"), *self.folder.glob(".*.partial")]:
            if path.stem not in kept:
                try:
                    path.unlink()
                    log.info("model version removed", extra={"file": path.name})
                except OSError as exc:
                    log.warning("cannot remove an old model", extra={"file": path.name, "reason": str(exc)})

    # ------------------------------------------------------------------ the registry

    def _check_writable(self) -> None:
        if self.read_only is not None:
            raise ModelRejected(
                "store", f"{self.read_only}; the running model stays; models change once it is writable"
            )

    def _connect(self) -> sqlite3.Connection:
        if self.read_only is not None:
            # SQLite cannot open a WAL database on a read-only file system even for reading
            # (it wants its -shm file); immutable=1 reads the file as it stands, without locks.
            uri = f"file:{quote(str(self.registry))}?mode=ro&immutable=1"
            return sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None)
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE), reads see the last commit.
        connection = sqlite3.connect(self.registry, timeout=10.0, isolation_level=None)
        connection.execute("PRAGMA synchronous = FULL")
        return connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with closing(self._connect()) as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _rows(self) -> list[_Row]:
        """Every row, the active (most recently activated) first."""
        if self.read_only is not None and not self.registry.exists():
            return []  # a new kiosk whose card failed before its first model
        try:
            with closing(self._connect()) as connection:
                rows = connection.execute("SELECT * FROM versions ORDER BY activated DESC").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.registry}: cannot read ({exc})") from exc
        return [_Row(*row[:5], tuple(json.loads(row[5])), *row[6:]) for row in rows]

    def _pairs(self) -> list[tuple[str, str]]:
        """(model id, version) of every stored version, the most recently activated first."""
        return [(row.model_id, row.version) for row in self._rows()]

    def _open_or_reset(self) -> None:
        """Create the schema; a damaged registry is moved aside and a new one started.

        The kiosk must come up unattended: losing the registry costs the version history (the
        daemon then installs its configured bundle), not the service.
        """
        if _read_only_file_system(self.folder):
            # A failing SD card is remounted read-only: the kiosk still runs its active model
            # (the daemon says storage failed); changes are refused until the card is writable.
            self.read_only = f"{self.folder} is on a read-only file system"
            log.error("model store read-only", extra={"path": str(self.folder)})
            return
        try:
            self._prepare()
        except _Damaged as exc:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            for suffix in ("", *_SIDECARS):
                damaged = self.registry.with_name(REGISTRY + suffix)
                if damaged.exists():
                    damaged.rename(damaged.with_name(f"{damaged.name}.corrupt-{stamp}"))
            log.error(
                "model registry damaged; moved aside", extra={"path": str(self.registry), "reason": str(exc)}
            )
            try:
                self._prepare()
            except _Damaged as again:
                raise StoreError(f"{self.registry}: cannot start a new registry ({again})") from again

    def _prepare(self) -> None:
        """Check the file, switch to WAL, create the schema (all idempotent)."""
        try:
            with closing(self._connect()) as connection:
                problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
                if problems != ["ok"]:
                    raise _Damaged("; ".join(problems[:3]))
                connection.execute("PRAGMA journal_mode = WAL")
                connection.execute(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                raise _Damaged(str(exc)) from exc
            raise StoreError(f"{self.registry}: cannot open ({exc})") from exc


class _Damaged(Exception):
    """The registry file is not a sound SQLite database."""


def _read_only_file_system(folder: Path) -> bool:
    return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)


def read_bundle_file(path: Path, max_bytes: int = MAX_BUNDLE_SIZE) -> bytes:
    """A bundle file, read at most one byte past the limit (``verify`` then names the size)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(max_bytes + 1)
    except OSError as exc:
        raise ModelRejected("verify", f"{path}: cannot read ({exc.strerror})") from exc


def verify_bundle(
    data: bytes,
    trusted_keys: Sequence[Path],
    max_bytes: int = MAX_BUNDLE_SIZE,
    revoked: frozenset[str] = frozenset(),
) -> VerifiedBundle:
    """The ``verify`` and ``compatibility`` steps: signature (by a key not ``revoked``), schema,
    hashes, device version."""
    try:
        keys = [load_public_key(path) for path in trusted_keys]
        return open_bundle(data, keys, max_bytes, max_bytes, revoked)
    except BundleError as exc:  # open_bundle checks min_device_version last, as "compatibility"
        raise _rejected("compatibility" if exc.step == "compatibility" else "verify", exc) from exc


def load_model(bundle: VerifiedBundle) -> LoadedModel:
    """The ``load`` and ``smoke test`` steps: a runtime bound to the feature code, checked on samples."""
    # Broad on purpose: a model runs third-party code (scikit-learn, LiteRT) whose failures
    # take many forms; whatever it raises, the answer is a refusal, not a crashed kiosk.
    try:
        runtime = load_runtime(bundle)
        model = LoadedModel(bundle, runtime)
    except Exception as exc:
        raise _rejected("load", exc) from exc
    try:
        check_samples(runtime, bundle.manifest)
    except Exception as exc:
        raise _rejected("smoke test", exc) from exc
    return model


def open_model(path: str | Path, trusted_keys: Sequence[str | Path]) -> LoadedModel:
    """A bundle file through every check a kiosk makes before running it, without storing it.

    For replay and the Python API: the same steps as :meth:`ModelStore.install` up to the
    smoke test, so nothing from an untrusted or damaged bundle is ever loaded — nor one signed by a
    key that a revocation list beside the trusted keys revokes. Raises :class:`ModelRejected`
    naming the step.
    """
    keys = [Path(key) for key in trusted_keys]
    if not keys:
        raise ModelRejected("verify", "no trusted key given: a bundle runs only if its signature checks out")
    revocations = revocation.newest_beside(keys)
    revoked = frozenset() if revocations is None else revocations.revoked
    return load_model(verify_bundle(read_bundle_file(Path(path)), keys, revoked=revoked))


def _same_version(a: str, b: str) -> bool:
    """Numerically equal ("1.0" is "1.0.0"); False for text that is no version at all (a URL's)."""
    try:
        return compare_versions(a, b) == 0
    except ValueError:
        return False


def _rejected(step: str, exc: Exception) -> ModelRejected:
    """A refusal at ``step``, keeping the reason's own check name unless it is the same step."""
    if isinstance(exc, BundleError) and exc.step == step:
        return ModelRejected(step, exc.message)
    return ModelRejected(step, str(exc) or type(exc).__name__)
