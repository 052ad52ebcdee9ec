"""The durable outbox: every classification is on disk in SQLite before anybody tries to send it.

The pipeline appends (one writer thread), the MQTT publisher reads pending rows in ``seq`` order
and deletes each one only after the broker acknowledged it (one reader/acker thread). A row
therefore survives a broker outage and a crash, a sent one a power cut too, and is sent again
afterwards.

Decisions, and why:

- **One connection, one lock.** Both threads share a single connection opened with
  ``check_same_thread=False``; every method holds the lock for its whole transaction. The work
  per call is tiny, so contention costs nothing, and there is no ``database is locked`` to handle.
- **WAL with ``synchronous=NORMAL`` by default.** ``NORMAL`` survives a crashed or killed
  process; a *power cut* may roll back the commits the kernel had not yet written out (it does
  every few seconds): results not yet sent, which are lost, and results already sent and
  acknowledged, which were deleted anyway. ``FULL`` (config ``outbox.synchronous``) fsyncs
  every commit so that not even unsent results are lost, at a price measured on one core: ~1 ms
  of the pipeline's time per result (more in the tail) and 30+ synchronous writes a second on an
  SD card at 30 frames/s, appends and acknowledgements alike.
- **``seq`` never goes backwards, and ``epoch`` names the numbering.** ``INTEGER PRIMARY KEY
  AUTOINCREMENT`` keeps its high-water mark in ``sqlite_sequence``, so numbers are not reused
  after the table was drained or the device restarted. But a database that was corrupt and
  moved aside starts again at 1, and a power cut under ``NORMAL`` rolls the high-water mark back
  with the lost commits, so a later result could get the ``seq`` of one a subscriber already
  has. So every payload also carries ``epoch`` (DESIGN.md §5), a random id stored in the
  database, and subscribers drop duplicates by ``(epoch, seq)``; a new database gets a new
  epoch, and so does a database opened in another boot of the machine than the one that last
  opened it (the kernel's ``boot_id``; a power cut is always followed by a boot). Rows stored
  before keep the epoch they were stored with, so a repeat of one is still recognised. Within a
  boot a restarted daemon keeps its epoch: nothing committed is lost by a crash.
- **A database moved aside is a counted loss.** :meth:`Outbox.open_or_reset` reads how many rows
  the damaged file still held (and its own ``dropped`` count) where SQLite can read them, adds
  them to the new file's ``dropped``, and reports them in :attr:`Outbox.moved_aside` (``rows``
  None: the damaged file could not be counted, the loss is unknown).
- **Bounded, policy ``drop_oldest``.** When an append would exceed ``max_rows`` the oldest rows
  are deleted in the same transaction and counted; the counter lives in the database, so the
  loss is reported even after a restart. New results are worth more than old ones on a live
  display, and the count says exactly how much history was given up.
- **A size cap, and a full disk, under the same policy.** ``max_bytes`` (config
  ``outbox.max_mb``) becomes SQLite's ``max_page_count``, so the file cannot outgrow its share of
  an SD card. When an append meets ``SQLITE_FULL`` — that cap, or a disk that filled up — the
  oldest rows are deleted to make room for the new one *in the same transaction* (a failed try
  rolls back, deletions included), so the newest result is kept and every loss is counted.
- **A really full disk needs room to delete.** In WAL mode a deletion is a write: its pages go to
  the ``-wal`` file first and reach the database at a checkpoint, and both may need new blocks.
  On a disk that is 100 % full neither can happen, and the newest results would be lost instead
  of the oldest. So the outbox keeps a *reserve*: a preallocated file ``<name>-reserve`` of
  :data:`RESERVE_PAGES` pages (twice the largest the WAL gets between checkpoints). When the disk
  is full, the reserve is given up, a checkpoint restarts the WAL (its file is then reused from
  the start without growing), and the database is pinned at its present page count, so from
  then on every row reuses the pages the dropped rows freed: the outbox keeps working in the
  space it has. Once the file system has twice the reserve free again, the reserve is made
  again and the pin lifted. Only when even an empty table cannot take a row does an append
  raise :class:`OutboxFullError`; the message is then not stored and not counted here: the
  caller still has it (:class:`device.spool.Spool` keeps it in memory).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# sqlite_utils imports pandas whenever it is installed, to convert pandas values on insert, which
# the outbox never does: 57 MB of the daemon's memory and 1.9 s of its start where pandas sits
# beside it (a workstation with the trainer). Hidden from that one import: later imports get it.
_PANDAS_HIDDEN = "pandas" not in sys.modules
if _PANDAS_HIDDEN:
    sys.modules["pandas"] = None  # its import then raises ImportError
try:
    from sqlite_utils import Database
finally:
    if _PANDAS_HIDDEN:
        del sys.modules["pandas"]

log = logging.getLogger("device.outbox")

DROP_OLDEST = "drop_oldest"
SCHEMA_VERSION = 2  # 2 added the meta table with the epoch; version 1 files are upgraded on open
WAL_PAGES = 1000
"""Pages the WAL holds before a checkpoint (SQLite's default, set explicitly: the reserve depends on it)."""
RESERVE_PAGES = 2 * WAL_PAGES
"""Size of the reserve file in pages: one checkpoint's growth of the database plus a WAL's worth."""
_CORRUPTION = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_ROOM_FIRST_DROP = 16  # rows deleted by the first try to make room (a page holds several rows)
_ROOM_GROWTH = 4  # each further try deletes this many times more, up to every row
_SIDECARS = ("-wal", "-shm")
_RESERVE = "-reserve"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_INSERT = "INSERT INTO outbox (topic, payload, qos, retain, created) VALUES (?, '', ?, ?, ?)"
"""A row whose payload is written once its ``seq`` is known (the payload carries it)."""
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        payload TEXT NOT NULL,
        qos INTEGER NOT NULL,
        retain INTEGER NOT NULL,
        created REAL NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO counters (name, value) VALUES ('dropped', 0)",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)


def new_epoch() -> str:
    """A random id naming one numbering of ``seq`` (64 bits: two kiosks' epochs never meet)."""
    return secrets.token_hex(8)


def check_message(topic: str, qos: int) -> None:
    """Refuse what MQTT cannot publish before it is stored (``ValueError``), so it fails at its producer."""
    if not topic or any(char in topic for char in "+#\0") or len(topic.encode()) > 65535:
        raise ValueError(f"not a topic MQTT can publish to: {topic!r}")
    if qos not in (0, 1, 2):
        raise ValueError(f"qos must be 0, 1 or 2 (got {qos})")


def boot_id() -> str:
    """This boot of the machine, from the Linux kernel; where it does not say, a random id, so that
    every open counts as after a reboot (a new epoch: safe, only less tidy for subscribers)."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return new_epoch()


def encode_payload(seq: int, epoch: str, payload: Mapping[str, Any]) -> str:
    """``{"seq": seq, "epoch": epoch, **payload}`` as compact JSON (``ValueError`` for NaN, infinity).

    The caller's own ``seq`` and ``epoch`` keys are replaced: numbering is the store's business.
    """
    body = {key: value for key, value in payload.items() if key not in ("seq", "epoch")}
    return json.dumps({"seq": seq, "epoch": epoch, **body}, separators=(",", ":"), allow_nan=False)


SYNCHRONOUS = ("full", "normal")
"""SQLite ``synchronous`` levels the outbox accepts (see the module docstring)."""


class OutboxError(RuntimeError):
    """The outbox database cannot be used; the message names the file."""


class OutboxCorruptError(OutboxError):
    """The file is not a readable SQLite database (it may be moved aside, see ``open_or_reset``)."""


class OutboxFullError(OutboxError):
    """SQLite said ``database or disk is full`` and no room could be made: the message was not stored."""


@dataclass(frozen=True)
class OutboxMessage:
    """One stored message, ready to hand to MQTT: the payload is the exact JSON bytes to send."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    epoch: str = ""

    @property
    def key(self) -> tuple[str, int]:
        """``(epoch, seq)``: what identifies a message for its subscribers and for acknowledging it."""
        return self.epoch, self.seq


@dataclass(frozen=True)
class MovedAside:
    """A corrupt outbox renamed by :meth:`Outbox.open_or_reset`, and what was lost with it."""

    path: Path
    rows: int | None  # unsent rows it still held; None when the damaged file could not be counted

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "rows": self.rows}


class Outbox:
    """A bounded, durable FIFO of MQTT messages in one SQLite file (see the module docstring)."""

    policy = DROP_OLDEST

    def __init__(
        self, path: str | Path, max_rows: int, synchronous: str = "normal", max_bytes: int | None = None
    ) -> None:
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)} (got {synchronous!r})")
        self.synchronous = synchronous
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1 (got {max_rows})")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1 (got {max_bytes})")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.moved_aside: MovedAside | None = None  # set by open_or_reset when it replaced a corrupt file
        self._lock = threading.Lock()
        self._db: Database | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"{self.path}: cannot create its folder ({exc.strerror})") from exc
        try:
            connection = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
        except sqlite3.Error as exc:
            raise self._error("open", exc) from exc
        try:
            db = Database(connection, execute_plugins=False)
            self._page_size, self._page_limit = self._prepare(db)
            self.epoch: str = db.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()[0]
            self._depth = db["outbox"].count
            self._dropped = self._read_dropped(db)
        except sqlite3.Error as exc:
            connection.close()
            raise self._error("open", exc) from exc
        except OutboxError:
            connection.close()
            raise
        self._db = db
        self._full = False  # inside an overflow episode (logged once when it begins)
        self._pinned = False  # the disk is full: the file may not grow (see _make_room_on_disk)
        self._reserve = self.path.with_name(self.path.name + _RESERVE)
        self._reserve_warned = False
        self._keep_reserve()

    @classmethod
    def open_or_reset(
        cls, path: str | Path, max_rows: int, synchronous: str = "normal", max_bytes: int | None = None
    ) -> Outbox:
        """Open the outbox; a corrupt file is renamed ``<name>.corrupt-<UTC time>`` and a new one started.

        The daemon must keep running on a kiosk nobody watches, so a damaged database costs its
        unsent rows (kept in the renamed file for inspection) rather than the service. Those rows
        are counted as dropped in the new file and described by :attr:`moved_aside`; the new file
        has a new ``epoch``, so its ``seq`` 1 is not mistaken for the old file's.
        """
        path = Path(path)
        try:
            return cls(path, max_rows, synchronous, max_bytes)
        except OutboxCorruptError as exc:
            moved = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
            try:
                for suffix in ("", *_SIDECARS):
                    source = path.with_name(path.name + suffix)
                    if source.exists():
                        source.rename(moved.with_name(moved.name + suffix))
            except OSError as error:
                raise OutboxError(f"{path}: corrupt and cannot be moved aside ({error.strerror})") from exc
            rows, dropped = _count_unsent(moved)
            log.error(
                "outbox corrupt; moved aside",
                extra={"path": str(path), "moved_to": str(moved), "reason": str(exc), "unsent_rows": rows},
            )
            outbox = cls(path, max_rows, synchronous, max_bytes)
            outbox.moved_aside = MovedAside(moved, rows)
            outbox._count_drops((rows or 0) + (dropped or 0))
            return outbox

    # ------------------------------------------------------------------ writing

    def append(self, topic: str, payload: Mapping[str, Any], qos: int = 1, retain: bool = False) -> int:
        """Store one message and return its ``seq``; the row is committed before this returns (and
        fsynced with ``synchronous="full"``).

        The stored JSON is ``{"seq": seq, "epoch": epoch, **payload}`` (see :func:`encode_payload`).
        Raises ``ValueError`` for a topic MQTT cannot publish to or a payload JSON cannot represent
        (NaN, infinity), so a bad message fails at its producer instead of blocking the queue.
        When the file or the disk is full, the oldest rows make room (counted in :attr:`dropped`);
        raises :class:`OutboxFullError` only when not even an empty outbox has room (the message is
        then not stored: the caller still holds it).
        """
        check_message(topic, qos)
        row = (topic, qos, int(retain), time.time())
        with self._lock:
            self._unpin_when_room()
            room = 0  # rows deleted to make room for this one (grows only after SQLITE_FULL)
            while True:
                try:
                    with self._transaction("append") as db:
                        dropped = self._drop_oldest(db, max(room, self._depth + 1 - self.max_rows))
                        seq = db.execute(_INSERT, row).lastrowid
                        text = encode_payload(seq, self.epoch, payload)
                        db.execute("UPDATE outbox SET payload = ? WHERE seq = ?", [text, seq])
                        self._save_drops(db, dropped)
                    break
                except OutboxFullError:
                    if room >= self._depth:  # nothing left to delete: this message cannot be stored
                        self._overflowing("no room even in an empty outbox; the message is not stored")
                        raise
                    if room == 0:
                        self._make_room_on_disk()
                    room = min(self._depth, max(_ROOM_FIRST_DROP, room * _ROOM_GROWTH))
            self._depth += 1 - dropped
            self._dropped += dropped
            if dropped:
                self._overflowing("dropping the oldest messages")
        return seq

    def ack(self, *seqs: int) -> int:
        """Delete acknowledged rows (one transaction for all of them); returns how many existed.

        Unknown ``seq`` values are ignored: a row may already have been dropped by the bound, or
        acknowledged twice when a duplicate was confirmed after a reconnect. On a full disk the
        deletion is tried again after the WAL was restarted (a deletion needs room too).
        """
        if not seqs:
            return 0
        marks = ",".join("?" * len(seqs))
        with self._lock:
            for attempt in range(2):
                try:
                    with self._transaction("ack") as db:
                        deleted = db.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", list(seqs))
                        removed = deleted.rowcount
                    break
                except OutboxFullError:
                    if attempt:
                        raise
                    self._make_room_on_disk()
            self._depth -= removed
            if removed:  # the backlog shrinks: an overflow episode is over
                self._full = False
                self._unpin_when_room()
        return removed

    def _drop_oldest(self, db: Database, count: int) -> int:
        """Delete the ``count`` oldest rows (the ``drop_oldest`` policy); the caller counts them."""
        if count <= 0:
            return 0
        return db.execute(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", [count]
        ).rowcount

    @staticmethod
    def _save_drops(db: Database, count: int) -> None:
        if count > 0:
            db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped'", [count])

    def _count_drops(self, count: int) -> None:
        """Add losses that happened outside an append (a database moved aside) to the stored count."""
        if count <= 0:
            return
        with self._lock:
            with self._transaction("count") as db:
                self._save_drops(db, count)
            self._dropped += count

    def _overflowing(self, what: str) -> None:
        """Log once per overflow episode (it ends when the broker acknowledges), not once per append."""
        if not self._full:
            self._full = True
            log.warning(
                f"outbox full; {what}",
                extra={
                    "path": str(self.path),
                    "max_rows": self.max_rows,
                    "max_bytes": self.max_bytes,
                    "policy": self.policy,
                },
            )

    # ------------------------------------------------------------------ a full disk

    def _make_room_on_disk(self) -> None:
        """After ``SQLITE_FULL``: when the disk (not the size cap) is full, work within the space held.

        Gives up the reserve, checkpoints so the WAL restarts (its file is reused from the start)
        and pins the database at its page count, so rows freed by drop-oldest are reused instead
        of the file growing. Holds the lock; never raises (the retry reports what still fails).
        """
        assert self._db is not None
        free = _free_bytes(self.path.parent)
        disk_full = free is not None and free < WAL_PAGES * self._page_size  # not just the size cap
        try:
            if disk_full and self._reserve.exists():
                self._reserve.unlink()
                self._reserve_warned = False
                log.warning("disk full; the outbox's reserve is released", extra={"path": str(self.path)})
            self._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
            if disk_full:
                pages = self._db.execute("PRAGMA page_count").fetchone()[0]
                self._db.execute(f"PRAGMA max_page_count = {pages}")
                self._pinned = True
        except (OSError, sqlite3.Error) as exc:
            log.warning("disk full; no room made", extra={"path": str(self.path), "reason": str(exc)})

    def _unpin_when_room(self) -> None:
        """Once the disk has room again (twice the reserve free), make the reserve and lift the pin."""
        if self._db is None or not (self._pinned or not self._reserve.exists()):
            return
        free = _free_bytes(self.path.parent)
        if free is None or free < 2 * RESERVE_PAGES * self._page_size:
            return
        if self._pinned:
            self._db.execute(f"PRAGMA max_page_count = {self._page_limit}")
            self._pinned = False
            log.info("disk has room again; the outbox may grow", extra={"path": str(self.path)})
        self._keep_reserve()

    def _keep_reserve(self) -> None:
        """Preallocate the reserve file (real blocks: ``posix_fallocate``); without room, go on without it."""
        size = RESERVE_PAGES * self._page_size
        try:
            if self._reserve.exists() and self._reserve.stat().st_size >= size:
                return
            descriptor = os.open(self._reserve, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(descriptor, 0, size)
            finally:
                os.close(descriptor)
        except OSError as exc:
            with suppress(OSError):
                self._reserve.unlink(missing_ok=True)  # a partial reserve would only take space
            if not self._reserve_warned:
                self._reserve_warned = True
                log.warning(
                    "no room for the outbox's reserve; a full disk may then cost the newest results",
                    extra={"path": str(self._reserve), "reason": exc.strerror},
                )

    # ------------------------------------------------------------------ reading

    def pending(self, after_seq: int | None = None, limit: int = 100) -> list[OutboxMessage]:
        """Stored messages with ``seq`` greater than ``after_seq`` (all when None), oldest first."""
        with self._lock, self._transaction("read") as db:
            rows = db.query(
                "SELECT seq, topic, payload, qos, retain FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                [-1 if after_seq is None else after_seq, limit],
            )
            return [
                OutboxMessage(
                    row["seq"],
                    row["topic"],
                    row["payload"].encode(),
                    row["qos"],
                    bool(row["retain"]),
                    self.epoch,
                )
                for row in rows
            ]

    @property
    def depth(self) -> int:
        """Rows waiting for an acknowledgement."""
        with self._lock:
            return self._depth

    @property
    def dropped(self) -> int:
        """Messages dropped since the file was created: by the bounds (rows, size, a full disk) and
        with a corrupt predecessor moved aside. Survives restarts."""
        with self._lock:
            return self._dropped

    @property
    def disk_full(self) -> bool:
        """The file system filled up: the file keeps its size and drops its oldest rows until there is
        room again (see the module docstring)."""
        with self._lock:
            return self._pinned

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the database (idempotent); later calls raise :class:`OutboxError`."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _prepare(self, db: Database) -> tuple[int, int]:
        """Check the file, switch to WAL, make the schema and epoch (new after a reboot), apply the cap.

        All idempotent; returns the page size and the page limit (the cap's, or SQLite's own).
        """
        problems = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise OutboxCorruptError(f"{self.path}: damaged database ({'; '.join(problems[:3])})")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if not 0 <= version <= SCHEMA_VERSION:
            raise OutboxError(
                f"{self.path}: outbox schema version {version}, this device knows {SCHEMA_VERSION}"
            )
        db.enable_wal()
        db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        db.execute(f"PRAGMA wal_autocheckpoint = {WAL_PAGES}")
        db.execute(f"PRAGMA journal_size_limit = {WAL_PAGES * page_size}")
        with db.atomic():
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('epoch', ?)", [new_epoch()])
            if version < 2:  # rows stored by schema 1 go out with the epoch the file now has
                db.execute(
                    "UPDATE outbox SET payload = json_set(payload, '$.epoch', "
                    "(SELECT value FROM meta WHERE name = 'epoch'))"
                )
            # a file last opened in another boot may have lost its newest commits (a power cut):
            # new results are numbered under a new epoch. A file that never recorded its boot was
            # written by a version that synced every commit by default and keeps its epoch.
            boot, last_boot = boot_id(), db.execute("SELECT value FROM meta WHERE name = 'boot'").fetchone()
            if last_boot is not None and last_boot[0] != boot:
                db.execute("UPDATE meta SET value = ? WHERE name = 'epoch'", [new_epoch()])
            if last_boot is None or last_boot[0] != boot:  # no write at all on an ordinary restart
                db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('boot', ?)", [boot])
        if self.max_bytes is not None:  # per connection; SQLite never sets it below the file's size
            db.execute(f"PRAGMA max_page_count = {max(1, self.max_bytes // page_size)}")
        return page_size, db.execute("PRAGMA max_page_count").fetchone()[0]

    @staticmethod
    def _read_dropped(db: Database) -> int:
        return db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()[0]

    @contextmanager
    def _transaction(self, operation: str) -> Iterator[Database]:
        """One transaction on the open database; SQLite errors become :class:`OutboxError`."""
        if self._db is None:
            raise OutboxError(f"{self.path}: outbox is closed")
        try:
            with self._db.atomic():
                yield self._db
        except sqlite3.Error as exc:
            raise self._error(operation, exc) from exc

    def _error(self, operation: str, exc: sqlite3.Error) -> OutboxError:
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _CORRUPTION:
            return OutboxCorruptError(f"{self.path}: not a usable SQLite database ({exc})")
        if code is not None and code & 0xFF == sqlite3.SQLITE_FULL:
            return OutboxFullError(f"{self.path}: {operation} failed ({exc})")
        return OutboxError(f"{self.path}: {operation} failed ({exc})")


def _free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged writer may still use on ``folder``'s file system (None: cannot tell)."""
    try:
        usage = os.statvfs(folder)
    except OSError:
        return None
    return usage.f_bavail * usage.f_frsize


def _count_unsent(path: Path) -> tuple[int | None, int | None]:
    """(rows, dropped) of a database moved aside, each None where the damaged file cannot say."""

    def read(sql: str) -> int | None:
        try:
            with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
                return int(db.execute(sql).fetchone()[0])
        except (sqlite3.Error, TypeError, ValueError):
            return None

    return (
        read("SELECT count(*) FROM outbox NOT INDEXED"),
        read("SELECT value FROM counters NOT INDEXED WHERE name = 'dropped'"),
    )
