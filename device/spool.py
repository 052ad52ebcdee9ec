"""Where results wait for the broker: the durable outbox while storage works, memory while it does not.

A kiosk's SD card fails in a few known ways: the kernel remounts it read-only after an I/O error,
it fills up, or a power cut leaves a damaged database. The daemon must keep classifying and keep
results flowing through all of them, and say loudly that storage is gone (as AWS Greengrass's
disk spooler falls back to memory). Decisions, and why:

- **Classifying never stops for storage.** When the outbox cannot take a result (a read-only file
  system, an I/O error, a disk so full that not even an empty outbox has room, a database damaged
  while running), the result goes to a bounded in-memory queue, :class:`MemoryQueue`, and is
  published from there exactly like an outbox row: QoS 1, removed on the PUBACK. The queue keeps
  the newest ``memory_rows`` (drop-oldest, counted in ``dropped``); a restart loses what it holds,
  which is why it is only the fallback.
- **Memory has its own epoch.** A random one made at start and never stored; its ``seq`` counts
  from 1. Subscribers de-duplicate by ``(epoch, seq)``, so the numberings never collide.
- **Failure is loud, and never a crash.** An outbox that cannot be opened at start is the same
  degraded state as one that fails later. :meth:`Spool.state` (``storage`` in ``/api/status``,
  MQTT ``stats`` and the page) says why, since when and what memory holds; ``/healthz`` fails
  naming it (see :meth:`device.status.StatusBoard.health_reasons`).
- **Recovery by reopening every ``retry_s`` (30 s).** A failed outbox is closed at once, which
  also lets an operator unmount and check the card, and reopened periodically from
  :meth:`Spool.maintain`; opening a read-only file fails at its first write, so a retry costs
  little. When it works (remounted read-write, space freed, a damaged file moved aside) results
  are stored durably again. What memory still holds is sent from memory; rows the database kept
  unacknowledged are sent again from it (repeats are dropped by ``(epoch, seq)``).
- **Order within an epoch.** Each numbering is sent in ``seq`` order; database rows go out
  before memory rows, so after a recovery the older backlog leads.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.outbox import (
    DROP_OLDEST,
    MovedAside,
    Outbox,
    OutboxError,
    OutboxMessage,
    check_message,
    encode_payload,
    new_epoch,
)
from device.status import StatusBoard

log = logging.getLogger("device.spool")

MEMORY_ROWS = 10_000
"""Results held in memory while storage fails, at most (about 1 KB each)."""
RETRY_S = 30.0
"""How often a failed outbox is reopened."""


@dataclass(frozen=True)
class Stamp:
    """The identity a stored result was given: subscribers de-duplicate by ``(epoch, seq)``."""

    epoch: str
    seq: int


class MemoryQueue:
    """A bounded FIFO of messages in RAM with the outbox's interface; ``drop_oldest``, counted."""

    policy = DROP_OLDEST

    def __init__(self, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1 (got {max_rows})")
        self.max_rows = max_rows
        self.epoch = new_epoch()
        self._lock = threading.Lock()
        self._seqs: list[int] = []  # waiting, ascending
        self._rows: dict[int, OutboxMessage] = {}
        self._last = 0
        self._dropped = 0
        self._full = False  # inside an overflow episode (logged once)

    def append(self, topic: str, payload: Mapping[str, Any], qos: int = 1, retain: bool = False) -> int:
        """Hold one message and return its ``seq``; ``ValueError`` as :meth:`Outbox.append`."""
        check_message(topic, qos)
        with self._lock:
            seq = self._last + 1
            data = encode_payload(seq, self.epoch, payload).encode()
            self._last = seq
            self._rows[seq] = OutboxMessage(seq, topic, data, qos, retain, self.epoch)
            self._seqs.append(seq)
            overflow = len(self._seqs) - self.max_rows
            for dropped in self._seqs[:overflow] if overflow > 0 else ():
                del self._rows[dropped]
            if overflow > 0:
                del self._seqs[:overflow]
                self._dropped += overflow
                if not self._full:
                    self._full = True
                    log.warning(
                        "memory queue full; dropping the oldest results", extra={"max_rows": self.max_rows}
                    )
        return seq

    def ack(self, *seqs: int) -> int:
        """Forget acknowledged messages; unknown ``seq`` values are ignored. Returns how many existed."""
        removed = 0
        with self._lock:
            for seq in seqs:
                if self._rows.pop(seq, None) is not None:
                    del self._seqs[bisect.bisect_left(self._seqs, seq)]
                    removed += 1
            if removed:
                self._full = False
        return removed

    def pending(self, after_seq: int | None = None, limit: int = 100) -> list[OutboxMessage]:
        """Held messages with ``seq`` greater than ``after_seq`` (all when None), oldest first."""
        with self._lock:
            start = 0 if after_seq is None else bisect.bisect_right(self._seqs, after_seq)
            return [self._rows[seq] for seq in self._seqs[start : start + limit]]

    @property
    def depth(self) -> int:
        with self._lock:
            return len(self._seqs)

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._dropped


class Spool:
    """The outbox, and memory when it fails (see the module docstring); thread-safe.

    The pipeline calls :meth:`append`; the publisher :meth:`pending` and :meth:`ack` with
    ``(epoch, seq)`` keys, and starts over from the oldest message whenever :attr:`generation`
    changes (the outbox was closed or reopened); the daemon calls :meth:`maintain` periodically.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_rows: int,
        synchronous: str = "normal",
        max_bytes: int | None = None,
        memory_rows: int = MEMORY_ROWS,
        retry_s: float = RETRY_S,
        status: StatusBoard | None = None,
        outbox: Outbox | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.retry_s = retry_s
        self._outbox_args = (max_rows, synchronous, max_bytes)
        self._status = status
        self._clock = clock
        self._lock = threading.Lock()
        self._memory = MemoryQueue(memory_rows)
        self._durable: Outbox | None = None
        self._failure = ""  # why storage is not usable; "" while it is
        self._since: float | None = None  # wall time the failure began
        self._retry_at = 0.0
        self._on_disk: int | None = None  # rows a closed outbox still holds (None: never opened)
        self._disk_dropped = 0
        self._moved_aside: MovedAside | None = None
        self._generation = 0
        if outbox is None:
            self._open()
        else:
            self._attach(outbox)

    @classmethod
    def around(cls, outbox: Outbox, status: StatusBoard | None = None) -> Spool:
        """A spool over an outbox someone else opened (reopened with the same settings after a failure)."""
        return cls(
            outbox.path,
            max_rows=outbox.max_rows,
            synchronous=outbox.synchronous,
            max_bytes=outbox.max_bytes,
            status=status,
            outbox=outbox,
        )

    # ------------------------------------------------------------------ the pipeline

    def append(self, topic: str, payload: Mapping[str, Any], qos: int = 1, retain: bool = False) -> Stamp:
        """Store one message durably, or hold it in memory when storage fails; never loses it here.

        Raises ``ValueError`` only for a message MQTT or JSON cannot carry (see :meth:`Outbox.append`).
        """
        durable = self._durable
        if durable is not None:
            try:
                return Stamp(durable.epoch, durable.append(topic, payload, qos, retain))
            except OutboxError as exc:
                self._fail(durable, exc)
        return Stamp(self._memory.epoch, self._memory.append(topic, payload, qos, retain))

    # ------------------------------------------------------------------ the publisher

    def pending(self, after: Mapping[str, int], limit: int = 100) -> list[OutboxMessage]:
        """Messages to send, oldest first: the outbox's, then memory's; ``after`` maps epoch to the
        last ``seq`` already handed over (an epoch not in it starts from its oldest message)."""
        messages: list[OutboxMessage] = []
        durable = self._durable
        if durable is not None:
            try:
                messages = durable.pending(after.get(durable.epoch), limit)
            except OutboxError as exc:
                self._fail(durable, exc)
        if len(messages) < limit:
            messages += self._memory.pending(after.get(self._memory.epoch), limit - len(messages))
        return messages

    def ack(self, *keys: tuple[str, int]) -> int:
        """Remove acknowledged ``(epoch, seq)`` messages; those of a closed outbox stay in its file."""
        removed = self._memory.ack(*(seq for epoch, seq in keys if epoch == self._memory.epoch))
        durable = self._durable
        if durable is not None:
            try:
                removed += durable.ack(*(seq for epoch, seq in keys if epoch == durable.epoch))
            except OutboxError as exc:
                self._fail(durable, exc)
        return removed

    @property
    def generation(self) -> int:
        """Changes whenever the outbox is closed or (re)opened: messages in flight are then resent."""
        with self._lock:
            return self._generation

    @property
    def sendable(self) -> int:
        """Messages the publisher can send now (a closed outbox's rows wait for it to reopen)."""
        durable = self._durable
        return self._memory.depth + (durable.depth if durable is not None else 0)

    @property
    def depth(self) -> int:
        """Messages waiting: in memory, in the outbox, and in a closed outbox's file (as last seen)."""
        durable = self._durable
        on_disk = durable.depth if durable is not None else self._on_disk or 0
        return self._memory.depth + on_disk

    @property
    def dropped(self) -> int:
        """Losses counted by the outbox (persistent) and by the memory queue (this run)."""
        durable = self._durable
        return self._memory.dropped + (durable.dropped if durable is not None else self._disk_dropped)

    @property
    def epoch(self) -> str:
        """The numbering a result stored now gets."""
        durable = self._durable
        return durable.epoch if durable is not None else self._memory.epoch

    # ------------------------------------------------------------------ health

    def maintain(self) -> None:
        """Reopen a failed outbox when its retry is due (the daemon calls this every second)."""
        with self._lock:
            due = self._durable is None and self._clock() >= self._retry_at
        if due:
            self._open()

    def state(self) -> dict[str, Any]:
        """``storage`` in the status: usable or why not, since when, what memory holds (JSON-ready)."""
        durable = self._durable
        with self._lock:
            failure, since, moved = self._failure, self._since, self._moved_aside
            on_disk = durable.depth if durable is not None else self._on_disk
        return {
            "ok": not failure,
            "mode": "disk" if durable is not None else "memory",
            "detail": failure,
            "since": since,
            "path": str(self.path),
            "epoch": self.epoch,
            "on_disk": on_disk,
            "disk_full": durable.disk_full if durable is not None else None,
            "retry_s": self.retry_s,
            "memory": {
                "depth": self._memory.depth,
                "dropped": self._memory.dropped,
                "max_rows": self._memory.max_rows,
            },
            "moved_aside": moved.as_dict() if moved is not None else None,
        }

    def close(self) -> None:
        """Close the outbox (idempotent); what memory holds is lost with the process."""
        with self._lock:
            durable, self._durable = self._durable, None
        if durable is not None:
            durable.close()

    # ------------------------------------------------------------------ internals

    def _open(self) -> None:
        try:
            outbox = Outbox.open_or_reset(self.path, *self._outbox_args)
        except OutboxError as exc:
            with self._lock:
                self._retry_at = self._clock() + self.retry_s
            self._failed(exc, "open")
            return
        self._attach(outbox)

    def _attach(self, outbox: Outbox) -> None:
        with self._lock:
            self._durable = outbox
            self._generation += 1
            self._moved_aside = outbox.moved_aside or self._moved_aside
            failure, self._failure, self._since = self._failure, "", None
        if failure:
            log.warning(
                "storage usable again; results are stored durably",
                extra={"path": str(self.path), "held_in_memory": self._memory.depth},
            )
        self._report()

    def _fail(self, durable: Outbox, exc: OutboxError) -> None:
        """The outbox failed: close it, hold results in memory from now on, retry later."""
        with self._lock:
            if durable is not self._durable:  # another thread got here first
                return
            self._durable = None
            self._generation += 1
            self._retry_at = self._clock() + self.retry_s
            self._on_disk, self._disk_dropped = durable.depth, durable.dropped
        durable.close()
        self._failed(exc, "use")

    def _failed(self, exc: OutboxError, operation: str) -> None:
        """Record why; log and count a failure when it begins, not at every retry."""
        detail = f"{exc}{_file_system_hint(self.path.parent)}"
        with self._lock:
            began = not self._failure
            self._failure = detail
            if began:
                self._since = time.time()
        if began:
            log.error(
                "storage failed; results are held in memory and published directly",
                extra={
                    "path": str(self.path),
                    "operation": operation,
                    "reason": detail,
                    "retry_s": self.retry_s,
                },
            )
            if self._status is not None:
                self._status.count("storage_failures")
        self._report()

    def _report(self) -> None:
        if self._status is not None:
            self._status.set_storage(self.state())


def _file_system_hint(folder: Path) -> str:
    """Name the usual causes in words (SQLite only says ``disk I/O error``).

    Read-only is found by creating a file: after an ext4 error the kernel may refuse writes while
    the mount (and ``statvfs``) still says ``rw``. Full is found by ``statvfs``: an empty file needs
    no data block, so creating one succeeds on a full disk.
    """
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
        usage = os.statvfs(folder)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return "; the file system is read-only"
        return f"; {exc.strerror}"
    return "; the disk is full" if usage.f_bavail == 0 else ""
