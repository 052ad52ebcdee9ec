"""The SQLite outbox: order, durability across restarts, the drop_oldest bound, threads, corruption, epoch.

A full file system and a read-only one are in ``test_storage_failure.py`` (they need a real mount).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from device.outbox import DROP_OLDEST, Outbox, OutboxCorruptError, OutboxError, OutboxFullError, new_epoch

TOPIC = "movement/kiosk/classification"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.sqlite"  # the folder does not exist yet


def seqs(outbox: Outbox, **kwargs: int) -> list[int]:
    return [message.seq for message in outbox.pending(**kwargs)]


def test_append_returns_seq_and_pending_lists_rows_in_order(path: Path) -> None:
    with Outbox(path, max_rows=100) as outbox:
        assert path.is_file()
        appended = [outbox.append(TOPIC, {"label": f"l{i}", "seq": -1}) for i in range(5)]
        assert appended == [1, 2, 3, 4, 5]
        first = outbox.pending()[0]
        assert (first.topic, first.qos, first.retain) == (TOPIC, 1, False)
        assert first.payload.startswith(b'{"seq":1,"epoch":')  # the caller's "seq" is replaced
        assert json.loads(first.payload) == {"seq": 1, "epoch": outbox.epoch, "label": "l0"}
        assert first.key == (outbox.epoch, 1)
        assert seqs(outbox, after_seq=2) == [3, 4, 5]
        assert seqs(outbox, limit=2) == [1, 2]
        assert outbox.ack(2, 4, 99) == 2  # unknown seqs are ignored
        assert seqs(outbox) == [1, 3, 5]
        assert outbox.depth == 3


def test_rows_and_seq_survive_a_restart_even_when_drained(path: Path) -> None:
    with Outbox(path, max_rows=100) as outbox:
        for i in range(3):
            outbox.append(TOPIC, {"i": i}, qos=0, retain=True)
        outbox.ack(1)
    with Outbox(path, max_rows=100) as outbox:
        assert outbox.depth == 2
        assert [(m.seq, m.qos, m.retain, json.loads(m.payload)["i"]) for m in outbox.pending()] == [
            (2, 0, True, 1),
            (3, 0, True, 2),
        ]
        outbox.ack(2, 3)
        assert outbox.depth == 0
    with Outbox(path, max_rows=100) as outbox:
        assert outbox.append(TOPIC, {}) == 4  # never reused, so subscribers can deduplicate by seq


def test_the_epoch_is_made_with_the_database_and_kept_in_it(path: Path, tmp_path: Path) -> None:
    with Outbox(path, max_rows=10) as outbox:
        epoch = outbox.epoch
        outbox.append(TOPIC, {"epoch": "forged"})  # the caller cannot choose it
        assert json.loads(outbox.pending()[0].payload)["epoch"] == epoch
    with Outbox(path, max_rows=10) as outbox:
        assert outbox.epoch == epoch  # a restart keeps the numbering and its name
    with Outbox(tmp_path / "other.sqlite", max_rows=10) as other:
        assert other.epoch != epoch and len(other.epoch) == len(new_epoch()) == 16


def test_a_schema_1_file_is_upgraded_and_its_rows_carry_the_new_epoch(path: Path) -> None:
    path.parent.mkdir(parents=True)
    with closing(sqlite3.connect(path)) as db, db:  # what a device before the epoch left behind
        db.executescript(
            """CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
                   payload TEXT NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,
                   created REAL NOT NULL);
               CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
               INSERT INTO counters VALUES ('dropped', 3);
               INSERT INTO outbox VALUES (7, 'movement/kiosk/classification', '{"seq":7,"label":"a"}',
                   1, 0, 0);
               PRAGMA user_version = 1;"""
        )
    with Outbox(path, max_rows=10) as outbox:
        assert (outbox.depth, outbox.dropped) == (1, 3)
        assert json.loads(outbox.pending()[0].payload) == {"seq": 7, "label": "a", "epoch": outbox.epoch}
        assert outbox.append(TOPIC, {}) == 8


WRITER = """
import signal, sys
from device.outbox import Outbox
outbox = Outbox(sys.argv[1], max_rows=1000)
print(*(outbox.append("movement/kiosk/classification", {"i": i}) for i in range(50)), flush=True)
signal.pause()
"""


def test_returned_rows_survive_a_killed_process(path: Path) -> None:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        returned = [int(seq) for seq in writer.stdout.readline().split()]  # every append has returned
    finally:
        writer.send_signal(signal.SIGKILL)  # no close(), no checkpoint: like a crash
        writer.wait(10)
    assert returned == list(range(1, 51))
    with Outbox(path, max_rows=1000) as outbox:
        assert seqs(outbox) == returned


def test_bound_drops_the_oldest_and_counts_them_persistently(path: Path) -> None:
    with Outbox(path, max_rows=10) as outbox:
        assert outbox.policy == DROP_OLDEST
        for i in range(15):
            outbox.append(TOPIC, {"i": i})
        assert (outbox.depth, outbox.dropped) == (10, 5)
        assert seqs(outbox, limit=100) == list(range(6, 16))
    with Outbox(path, max_rows=10) as outbox:
        assert (outbox.depth, outbox.dropped) == (10, 5)
        outbox.append(TOPIC, {})
        assert (outbox.depth, outbox.dropped) == (10, 6)


def test_concurrent_appends_and_acks_lose_nothing(path: Path) -> None:
    total = 400
    acked: list[int] = []
    done = threading.Event()
    with Outbox(path, max_rows=10_000) as outbox:

        def produce() -> None:
            for i in range(total):
                outbox.append(TOPIC, {"i": i})
            done.set()

        def consume() -> None:
            deadline = time.monotonic() + 30
            while len(acked) < total and time.monotonic() < deadline:
                batch = seqs(outbox, after_seq=acked[-1] if acked else None, limit=25)
                outbox.ack(*batch)
                acked.extend(batch)

        threads = [threading.Thread(target=fn, name=fn.__name__) for fn in (produce, consume)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert done.is_set()
        assert acked == list(range(1, total + 1))
        assert outbox.depth == 0


@pytest.mark.parametrize(
    ("topic", "payload"),
    [("", {}), ("movement/+/classification", {}), ("a/#", {}), (TOPIC, {"confidence": float("nan")})],
    ids=["empty-topic", "wildcard-plus", "wildcard-hash", "nan"],
)
def test_append_refuses_what_mqtt_or_json_cannot_carry(path: Path, topic: str, payload: dict) -> None:
    with Outbox(path, max_rows=10) as outbox:
        with pytest.raises(ValueError):
            outbox.append(topic, payload)
        assert outbox.depth == 0
        assert outbox.append(TOPIC, {}) == 1  # the refused append left no trace


def test_closed_outbox_raises(path: Path) -> None:
    outbox = Outbox(path, max_rows=10)
    outbox.close()
    outbox.close()  # idempotent
    with pytest.raises(OutboxError, match="closed"):
        outbox.append(TOPIC, {})


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not an SQLite database " * 200)


def _damaged_pages(path: Path) -> None:
    with Outbox(path, max_rows=1000) as outbox:
        for i in range(300):
            outbox.append(TOPIC, {"filler": "x" * 200, "i": i})
    data = bytearray(path.read_bytes())
    data[4096 * 2 : 4096 * 6] = b"\x5a" * (4096 * 4)  # the header survives, the b-tree pages do not
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_garbage, _damaged_pages], ids=["not-a-database", "damaged-pages"])
def test_corrupt_file_raises_an_error_naming_the_path(path: Path, damage) -> None:
    path.parent.mkdir(parents=True)
    damage(path)
    with pytest.raises(OutboxCorruptError, match=str(path)):
        Outbox(path, max_rows=10)


def test_open_or_reset_moves_a_corrupt_file_aside_and_starts_fresh(path: Path) -> None:
    path.parent.mkdir(parents=True)
    _garbage(path)
    original = path.read_bytes()
    with Outbox.open_or_reset(path, max_rows=10) as outbox:
        assert outbox.depth == 0
        assert outbox.append(TOPIC, {}) == 1
        assert outbox.moved_aside is not None and outbox.moved_aside.rows is None  # cannot be counted
        assert outbox.dropped == 0  # an unknown loss is reported as unknown, not as 0 rows
    moved = [p for p in path.parent.iterdir() if p.name.startswith("outbox.sqlite.corrupt-")]
    assert len(moved) == 1 and outbox.moved_aside.path == moved[0]
    assert moved[0].read_bytes() == original  # kept for inspection


def damage_counters_index(path: Path) -> None:
    """Overwrite the page of the counters' index in a closed outbox: ``quick_check`` fails, but the
    rows can still be counted (what a torn write leaves on a card more often than a lost header)."""
    with closing(sqlite3.connect(path)) as db:
        page = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_counters_1'")
        number = page.fetchone()[0]
    data = bytearray(path.read_bytes())
    data[(number - 1) * 4096 : number * 4096] = b"\x5a" * 4096
    path.write_bytes(bytes(data))


def _damaged_index(path: Path) -> str:
    """300 rows, 10 acknowledged, 5 dropped by the bound, then :func:`damage_counters_index`; the epoch."""
    with Outbox(path, max_rows=295) as outbox:
        for i in range(300):
            outbox.append(TOPIC, {"i": i})
        outbox.ack(*range(6, 16))
        epoch = outbox.epoch
    damage_counters_index(path)
    return epoch


def test_a_corrupt_file_moved_aside_counts_its_unsent_rows_and_the_new_file_has_a_new_epoch(
    path: Path,
) -> None:
    path.parent.mkdir(parents=True)
    old_epoch = _damaged_index(path)
    with pytest.raises(OutboxCorruptError):
        Outbox(path, max_rows=10)
    with Outbox.open_or_reset(path, max_rows=1000) as outbox:
        assert outbox.moved_aside is not None and outbox.moved_aside.rows == 285  # 300 - 5 dropped - 10 acked
        assert outbox.dropped == 285 + 5  # its unsent rows, and what it had dropped itself
        assert outbox.epoch != old_epoch
        assert outbox.append(TOPIC, {}) == 1  # seq starts again, under a new epoch
    with Outbox(path, max_rows=1000) as outbox:
        assert outbox.dropped == 290 and outbox.moved_aside is None  # the count is stored


def test_open_or_reset_keeps_a_healthy_file(path: Path) -> None:
    with Outbox(path, max_rows=10) as outbox:
        outbox.append(TOPIC, {})
    with Outbox.open_or_reset(path, max_rows=10) as outbox:
        assert outbox.depth == 1
    assert not list(path.parent.glob("*.corrupt-*"))


def _page_count(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return connection.execute("PRAGMA page_count").fetchone()[0]


def test_a_size_cap_drops_the_oldest_rows_on_sqlite_full_and_keeps_the_newest(path: Path) -> None:
    cap = 64 * 1024
    row = {"probabilities": {f"label{i}": 0.05 for i in range(20)}}  # about a real result's size
    with Outbox(path, max_rows=100_000, max_bytes=cap) as outbox:
        appended = [outbox.append(TOPIC, row) for _ in range(600)]  # about 4x what fits
        assert appended == list(range(1, 601))  # every append returned: none raised
        kept = seqs(outbox, limit=1000)
        assert outbox.dropped > 0 and outbox.depth == len(kept)
        assert outbox.dropped + outbox.depth == 600  # every loss counted
        assert kept == list(range(601 - len(kept), 601))  # the newest survive, oldest went first
        outbox.ack(*kept)  # the broker took them: pages are free again
        dropped = outbox.dropped
        more = len(kept) // 2
        assert [outbox.append(TOPIC, row) for _ in range(more)] == list(range(601, 601 + more))
        assert (outbox.dropped, outbox.depth) == (dropped, more)  # recovered: nothing more is dropped
    assert _page_count(path) * 4096 <= cap
    with Outbox(path, max_rows=100_000, max_bytes=cap) as outbox:
        assert outbox.dropped == dropped  # the count survives a restart


def test_a_message_that_cannot_fit_even_an_empty_outbox_is_refused_not_counted(path: Path) -> None:
    with Outbox(path, max_rows=100, max_bytes=1) as outbox:  # capped at the fresh file's own size
        with pytest.raises(OutboxFullError, match="full"):
            outbox.append(TOPIC, {"blob": "x" * 10_000})  # needs overflow pages that cannot be had
        # not stored, so not dropped here: the caller still has it (the spool keeps it in memory)
        assert (outbox.depth, outbox.dropped) == (0, 0)
        assert outbox.append(TOPIC, {}) == 1  # a small one fits; the refused one never got a seq
        assert (outbox.depth, outbox.dropped) == (1, 0)



def test_a_file_last_opened_in_another_boot_numbers_new_results_under_a_new_epoch(path: Path) -> None:
    """A power cut under ``synchronous=normal`` may roll back the newest commits, the ``seq``
    high-water mark with them: a later result would get the number of one a subscriber already
    has. A power cut is followed by a boot, so results stored after one get a new epoch; a restart
    within a boot keeps the numbering, and rows stored before keep the epoch they went out with."""
    with Outbox(path, max_rows=100) as outbox:
        outbox.append(TOPIC, {"i": 0})
        outbox.append(TOPIC, {"i": 1})
        before = outbox.epoch
    with Outbox(path, max_rows=100) as outbox:
        assert outbox.epoch == before  # restarted in the same boot
    with closing(sqlite3.connect(path)) as db, db:  # as the file is after a boot: another boot id
        db.execute("UPDATE meta SET value = 'an-earlier-boot' WHERE name = 'boot'")
    with Outbox(path, max_rows=100) as outbox:
        after = outbox.epoch
        assert after != before and len(after) == len(new_epoch())
        assert outbox.append(TOPIC, {"i": 2}) == 3
        sent = [json.loads(m.payload) for m in outbox.pending()]
    assert [(p["epoch"], p["seq"]) for p in sent] == [(before, 1), (before, 2), (after, 3)]
    with Outbox(path, max_rows=100) as outbox:
        assert outbox.epoch == after  # the new boot is recorded: its next restart keeps it
