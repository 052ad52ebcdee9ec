"""The durable outbox: every classification is committed to SQLite before anybody tries to send it.

The pipeline appends (one writer thread), the MQTT publisher reads pending rows in ``seq`` order
and deletes each one only after the broker acknowledged it (one reader/acker thread). A row
therefore survives a broker outage, a crash and a power cut, and is sent again afterwards.

Decisions, and why:

- **One connection, one lock.** Both threads share a single connection opened with
  ``check_same_thread=False``; every method holds the lock for its whole transaction. The work
  per call is tiny, so contention costs nothing, and there is no ``database is locked`` to handle.
- **WAL with ``synchronous=FULL`` by default.** In WAL mode ``NORMAL`` is crash-safe for the
  *process* but may roll back the most recent commits after a *power cut*; a kiosk is unplugged
  without warning, and :meth:`Outbox.append` then promises that a returned ``seq`` is on disk.
  ``FULL`` makes every commit fsync the WAL (about 0.4 ms here; acknowledgements are batched into
  one transaction by the publisher). ``synchronous="normal"`` (config ``outbox.synchronous``)
  trades the last moments before a power cut for fewer writes — kinder to an SD card at many
  results per second — and still survives a crashed or killed process.
- **``seq`` never goes backwards.** ``INTEGER PRIMARY KEY AUTOINCREMENT`` keeps its high-water
  mark in ``sqlite_sequence``, so numbers are not reused after the table was drained or the
  device restarted; subscribers drop duplicates by ``seq``.
- **Bounded, policy ``drop_oldest``.** When an append would exceed ``max_rows`` the oldest rows
  are deleted in the same transaction and counted; the counter lives in the database, so the
  loss is reported even after a restart. New results are worth more than old ones on a live
  display, and the count says exactly how much history was given up.
- **A size cap, and a full disk, under the same policy.** ``max_bytes`` (config
  ``outbox.max_mb``) becomes SQLite's ``max_page_count``, so the file cannot outgrow its share of
  an SD card. When an append meets ``SQLITE_FULL`` — that cap, or a disk that filled up — the
  oldest rows are deleted to make room for the new one *in the same transaction* (a failed try
  rolls back, deletions included), so the newest result is kept and every loss is counted. Only
  when even an empty table cannot take the row is the message itself lost: it has no ``seq``,
  :class:`OutboxFullError` says so, and it is still counted as dropped (written to the database
  with the next append that succeeds). Nothing needs resetting: once acknowledgements free pages
  (or the disk has room again) appends simply succeed.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database

log = logging.getLogger("device.outbox")

DROP_OLDEST = "drop_oldest"
SCHEMA_VERSION = 1
_CORRUPTION = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_ROOM_FIRST_DROP = 16  # rows deleted by the first try to make room (a page holds several rows)
_ROOM_GROWTH = 4  # each further try deletes this many times more, up to every row
_SIDECARS = ("-wal", "-shm")
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
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)


SYNCHRONOUS = ("full", "normal")
"""SQLite ``synchronous`` levels the outbox accepts (see the module docstring)."""


class OutboxError(RuntimeError):
    """The outbox database cannot be used; the message names the file."""


class OutboxCorruptError(OutboxError):
    """The file is not a readable SQLite database (it may be moved aside, see ``open_or_reset``)."""


class OutboxFullError(OutboxError):
    """SQLite said ``database or disk is full`` and no room could be made: the message was dropped."""


@dataclass(frozen=True)
class OutboxMessage:
    """One stored message, ready to hand to MQTT: the payload is the exact JSON bytes to send."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """A bounded, durable FIFO of MQTT messages in one SQLite file (see the module docstring)."""

    policy = DROP_OLDEST

    def __init__(
        self, path: str | Path, max_rows: int, synchronous: str = "full", max_bytes: int | None = None
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
            self._prepare(db)
            self._depth = db["outbox"].count
            self._dropped = self._read_dropped(db)
            self._unsaved_drops = 0  # messages lost without a row, not yet added to the stored counter
        except sqlite3.Error as exc:
            connection.close()
            raise self._error("open", exc) from exc
        except OutboxError:
            connection.close()
            raise
        self._db = db
        self._full = False  # inside an overflow episode (logged once when it begins)

    @classmethod
    def open_or_reset(
        cls, path: str | Path, max_rows: int, synchronous: str = "full", max_bytes: int | None = None
    ) -> Outbox:
        """Open the outbox; a corrupt file is renamed ``<name>.corrupt-<UTC time>`` and a new one started.

        The daemon must keep running on a kiosk nobody watches, so a damaged database costs its
        unsent rows (kept in the renamed file for inspection) rather than the service.
        """
        path = Path(path)
        try:
            return cls(path, max_rows, synchronous, max_bytes)
        except OutboxCorruptError as exc:
            moved = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
            for suffix in ("", *_SIDECARS):
                source = path.with_name(path.name + suffix)
                if source.exists():
                    source.rename(moved.with_name(moved.name + suffix))
            log.error(
                "outbox corrupt; moved aside",
                extra={"path": str(path), "moved_to": str(moved), "reason": str(exc)},
            )
            return cls(path, max_rows, synchronous, max_bytes)

    # ------------------------------------------------------------------ writing

    def append(self, topic: str, payload: Mapping[str, Any], qos: int = 1, retain: bool = False) -> int:
        """Store one message and return its ``seq``; the row is committed (fsynced) before this returns.

        The stored JSON is ``{"seq": seq, **payload}`` (a ``seq`` key in ``payload`` is replaced).
        Raises ``ValueError`` for a topic MQTT cannot publish to or a payload JSON cannot represent
        (NaN, infinity), so a bad message fails at its producer instead of blocking the queue.
        When the file is full, the oldest rows make room (counted in :attr:`dropped`); raises
        :class:`OutboxFullError` only when not even an empty outbox has room (also counted).
        """
        _check_topic(topic)
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2 (got {qos})")
        body = {key: value for key, value in payload.items() if key != "seq"}
        row = {"topic": topic, "payload": "", "qos": qos, "retain": int(retain), "created": time.time()}
        with self._lock:
            room = 0  # rows deleted to make room for this one (grows only after SQLITE_FULL)
            while True:
                try:
                    with self._transaction("append") as db:
                        dropped = self._drop_oldest(db, max(room, self._depth + 1 - self.max_rows))
                        seq = db["outbox"].insert(row).last_pk
                        text = json.dumps({"seq": seq, **body}, separators=(",", ":"), allow_nan=False)
                        db.execute("UPDATE outbox SET payload = ? WHERE seq = ?", [text, seq])
                        self._save_drops(db, dropped + self._unsaved_drops)
                    break
                except OutboxFullError:
                    if room >= self._depth:  # nothing left to delete: this message is lost
                        self._unsaved_drops += 1
                        self._dropped += 1
                        self._overflowing("no room even in an empty outbox; the message is lost")
                        raise
                    room = min(self._depth, max(_ROOM_FIRST_DROP, room * _ROOM_GROWTH))
            self._depth += 1 - dropped
            self._dropped += dropped
            self._unsaved_drops = 0
            if dropped:
                self._overflowing("dropping the oldest messages")
        return seq

    def ack(self, *seqs: int) -> int:
        """Delete acknowledged rows (one transaction for all of them); returns how many existed.

        Unknown ``seq`` values are ignored: a row may already have been dropped by the bound, or
        acknowledged twice when a duplicate was confirmed after a reconnect.
        """
        if not seqs:
            return 0
        with self._lock:
            with self._transaction("ack") as db:
                marks = ",".join("?" * len(seqs))
                removed = db.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", list(seqs)).rowcount
            self._depth -= removed
            if removed:  # the backlog shrinks: an overflow episode is over
                self._full = False
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
                    row["seq"], row["topic"], row["payload"].encode(), row["qos"], bool(row["retain"])
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
        """Messages dropped by the bounds (rows, size, a full disk) since the file was created.

        Survives restarts; a message lost while nothing could be written is added to the stored
        count by the next append that succeeds.
        """
        with self._lock:
            return self._dropped

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

    def _prepare(self, db: Database) -> None:
        """Check the file, switch to WAL + FULL, create the schema, apply the size cap (all idempotent)."""
        problems = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise OutboxCorruptError(f"{self.path}: damaged database ({'; '.join(problems[:3])})")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise OutboxError(
                f"{self.path}: outbox schema version {version}, this device knows {SCHEMA_VERSION}"
            )
        db.enable_wal()
        db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
        with db.atomic():
            for statement in _SCHEMA:
                db.execute(statement)
        if self.max_bytes is not None:  # per connection; SQLite never sets it below the file's size
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            db.execute(f"PRAGMA max_page_count = {max(1, self.max_bytes // page_size)}")

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


def _check_topic(topic: str) -> None:
    """MQTT forbids publishing to empty topics, wildcards and NUL; refuse them before storing."""
    if not topic or any(char in topic for char in "+#\0") or len(topic.encode()) > 65535:
        raise ValueError(f"not a topic MQTT can publish to: {topic!r}")
