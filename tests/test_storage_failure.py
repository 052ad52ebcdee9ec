"""Storage that fails under a running kiosk, made for real on small file systems the tests mount.

The SD card's usual failures, each on a real file system: an ext4 image loop-mounted with
``errors=remount-ro`` that the kernel turns read-only after an error (``trigger_fs_error``, what an
I/O error on a card does), a tmpfs or ext4 filled to the last block by a filler file, a tmpfs
remounted read-only before the daemon starts and read-write again while it runs, and a database
damaged on disk. Mounting needs root (we run as root here and in CI); where it is not permitted
the tests skip and say why. Every mount is unmounted at the end, whatever happens.

The daemon tests run the real daemon (MediaPipe on ``squats.mp4``, a real bundle, a real
mosquitto, HTTP on loopback) and print ``FAULTS: …`` lines for the README's table.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto, Subscriber, free_port
from conftest import PoseBundle, eventually
from test_daemon import (
    TOPIC,
    Notifications,
    device_config,
    http_get,
    notifications,  # noqa: F401  (the NOTIFY_SOCKET fixture)
)
from test_faults import report  # noqa: F401  (the fixture printing FAULTS lines for the README)
from test_outbox import damage_counters_index

from device.config import Config, parse_config
from device.daemon import Daemon, build
from device.outbox import RESERVE_PAGES, Outbox
from device.spool import Spool
from device.status import StatusBoard
from device.systemd import Notifier

CLASSIFICATION = f"{TOPIC}/classification"
STATS = f"{TOPIC}/stats"
ROW = {"probabilities": {f"label{i}": 0.05 for i in range(20)}}  # about a real result's size
Mount = Callable[[str, int], Path]


def _mount_command(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"mount {' '.join(args)}: {result.stderr.strip()}")


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    """``mount(kind, size_mb)``: a fresh ``tmpfs`` or loop-mounted ``ext4`` (``errors=remount-ro``).

    Skips the test, saying why, where mounting is not permitted; unmounts everything afterwards
    (request this fixture before ``run_daemon``, so the daemons stop first).
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a test file system needs root (run the suite as root, as CI does)")
    mounted: list[Path] = []

    def make(kind: str, size_mb: int) -> Path:
        target = tmp_path / f"{kind}-{len(mounted)}"
        target.mkdir()
        if kind == "tmpfs":
            command = ["-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(target)]
        else:
            image = target.with_suffix(".img")
            with image.open("wb") as handle:
                handle.truncate(size_mb * 2**20)
            subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True, capture_output=True)
            command = ["-o", "loop,errors=remount-ro", str(image), str(target)]
        result = subprocess.run(["mount", *command], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a {kind} here: {result.stderr.strip() or result.returncode}")
        mounted.append(target)
        return target

    yield make
    for target in reversed(mounted):
        for _ in range(50):  # a closed SQLite connection may wait for the garbage collector
            gc.collect()
            if subprocess.run(["umount", str(target)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(target)], check=True)
            pytest.fail(f"{target} was still busy after the test; unmounted lazily")


def fail_ext4(target: Path) -> None:
    """An ext4 error, as an I/O error on the card raises it: with ``errors=remount-ro`` the kernel
    makes the file system read-only under the open files (``mount -o remount,ro`` would refuse)."""
    source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(target)], capture_output=True, text=True)
    knob = Path("/sys/fs/ext4") / Path(source.stdout.strip()).name / "trigger_fs_error"
    if not knob.exists():
        pytest.skip(f"this kernel has no {knob} to make an ext4 error with")
    knob.write_text("1")


def fill(folder: Path) -> Path:
    """Write a filler file until the file system has not one block left; returns it."""
    filler = folder / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for block in (2**20, 4096, 512):
            try:
                while True:
                    os.write(descriptor, bytes(block))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(descriptor)
    assert os.statvfs(folder).f_bavail == 0
    return filler


def keys(sub: Subscriber, topic: str = CLASSIFICATION) -> list[tuple[str, int]]:
    """``(epoch, seq)`` of every message received, in arrival order: what a subscriber de-duplicates by."""
    return [(m.json()["epoch"], m.json()["seq"]) for m in sub.messages(topic)]


def status_of(daemon: Daemon) -> dict[str, Any]:
    code, body = http_get(daemon.http_port, "/api/status")
    assert code == 200
    return json.loads(body)


def healthz(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    code, body = http_get(daemon.http_port, "/healthz")
    return code, json.loads(body)


# ---------------------------------------------------------------------- a full disk (outbox)


@pytest.mark.parametrize(("kind", "synchronous"), [("tmpfs", "full"), ("ext4", "normal")])
def test_a_really_full_disk_drops_the_oldest_and_every_new_result_gets_a_seq(
    mount: Mount,
    kind: str,
    synchronous: str,
    report: Callable[..., None],  # noqa: F811
) -> None:
    folder = mount(kind, 24)
    before, during = 300, 1500
    with Outbox(folder / "outbox.sqlite", max_rows=100_000, synchronous=synchronous) as outbox:
        assert [outbox.append(TOPIC, ROW) for _ in range(before)] == list(range(1, before + 1))
        assert (folder / "outbox.sqlite-reserve").stat().st_size == RESERVE_PAGES * 4096
        filler = fill(folder)
        # before the fix, each of these raised OutboxFullError: the newest lost, without a seq
        appended = [outbox.append(TOPIC, ROW) for _ in range(during)]
        total = before + during
        assert appended == list(range(before + 1, total + 1))
        kept = [message.seq for message in outbox.pending(limit=total)]
        assert kept == list(range(total - len(kept) + 1, total + 1))  # the newest, in order
        assert outbox.dropped == total - len(kept) > during // 2  # the oldest, every one counted
        assert os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize < RESERVE_PAGES * 4096
        full = {"kept": len(kept), "dropped": outbox.dropped}

        filler.unlink()  # room again: the reserve comes back and the file may grow again
        outbox.ack(*kept)
        assert (folder / "outbox.sqlite-reserve").stat().st_size == RESERVE_PAGES * 4096
        more = [outbox.append(TOPIC, ROW) for _ in range(2 * len(kept))]
        assert more == list(range(total + 1, total + 1 + 2 * len(kept)))
        assert outbox.dropped == full["dropped"]  # nothing more dropped
    with closing(sqlite3.connect(folder / "outbox.sqlite")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    report(
        f"disk really full ({kind}, synchronous={synchronous})",
        appended_while_full=during,
        refused=0,
        kept_newest=full["kept"],
        dropped_oldest_counted=full["dropped"],
        after_room_again_dropped=outbox.dropped - full["dropped"],
    )


def test_a_full_disk_at_start_leaves_no_room_and_the_spool_holds_results_in_memory(mount: Mount) -> None:
    folder = mount("tmpfs", 4)  # smaller than the reserve: the outbox runs without one
    with Outbox(folder / "outbox.sqlite", max_rows=100) as outbox:
        outbox.append(TOPIC, ROW)
    fill(folder)
    status = StatusBoard("kiosk")
    spool = Spool(folder / "outbox.sqlite", max_rows=100, memory_rows=50, status=status)
    try:
        stamps = [spool.append(TOPIC, ROW) for _ in range(60)]  # the outbox cannot take even one
        memory = spool.state()["memory"]
        memory_epoch = stamps[-1].epoch
        assert {stamp.epoch for stamp in stamps} == {memory_epoch}
        assert [stamp.seq for stamp in stamps] == list(range(1, 61))
        assert memory == {"depth": 50, "dropped": 10, "max_rows": 50}  # bounded, drop-oldest, counted
        assert [m.seq for m in spool.pending({}, limit=100)][-50:] == list(range(11, 61))
        reasons = status.health_reasons(5.0)
        assert any("storage failed" in reason and "disk is full" in reason for reason in reasons)
        assert status.snapshot()["storage"]["epoch"] == memory_epoch
    finally:
        spool.close()


# ---------------------------------------------------------------------- the daemon


class Running:
    """A daemon built in-process and run (``Daemon.run``) on a thread of its own, as ``__main__`` does."""

    def __init__(self, config: Config, **kwargs: Any) -> None:
        self.daemon = build(config, **kwargs)
        self._thread = threading.Thread(target=self.daemon.run, name="daemon-run", daemon=True)

    def __enter__(self) -> Daemon:
        self.daemon.start()
        self._thread.start()
        return self.daemon

    def __exit__(self, *exc: object) -> None:
        self.daemon.request_stop()
        self._thread.join(10)
        self.daemon.stop()


def test_a_card_turned_read_only_under_the_daemon_keeps_results_flowing_and_fails_health(
    mount: Mount,
    tmp_path: Path,
    pose_model: PoseBundle,
    squats: Path,
    report: Callable[..., None],  # noqa: F811
) -> None:
    card = mount("ext4", 32)
    with Mosquitto() as broker, Subscriber(broker.port, [CLASSIFICATION, STATS]) as sub:
        config = device_config(tmp_path, pose_model, squats, broker.port, pace="realtime", loop=True)
        config["device"]["state_dir"] = str(card / "state")  # outbox and models on the card
        with Running(parse_config(config)) as daemon:
            eventually(lambda: len(keys(sub)) >= 10, 90, "10 classifications delivered")
            assert healthz(daemon)[0] == 200
            disk_epoch = keys(sub)[0][0]
            fail_ext4(card)
            began = len(keys(sub))
            storage = eventually(
                lambda: (s := status_of(daemon)["storage"])["ok"] is False and s, 30, "storage failed"
            )
            assert storage["mode"] == "memory" and "read-only" in storage["detail"]
            code, health = healthz(daemon)
            assert code == 503 and any("storage failed" in reason for reason in health["reasons"])
            eventually(lambda: len(keys(sub)) >= began + 25, 60, "25 more classifications delivered")
            stats = sub.wait_until(STATS, lambda m: m.json()["storage"]["ok"] is False, timeout=15).json()
            assert stats["storage"]["detail"] == storage["detail"]
        final = daemon.status.snapshot()
    delivered = set(keys(sub))
    memory_epoch = storage["epoch"]
    from_memory = sorted(seq for epoch, seq in delivered if epoch == memory_epoch)
    assert memory_epoch != disk_epoch and from_memory == list(range(1, len(from_memory) + 1))
    assert {epoch for epoch, _ in delivered} == {disk_epoch, memory_epoch}
    counters = final["counters"]
    assert counters["outbox_errors"] == 0 and counters["storage_failures"] == 1
    # every result was delivered, or is still in the card's database for after its repair
    on_card = final["storage"]["on_disk"]
    assert counters["classifications"] <= len(delivered) + on_card
    report(
        "SD card turned read-only under the daemon (ext4 errors=remount-ro)",
        classified=counters["classifications"],
        delivered_from_disk=len(delivered) - len(from_memory),
        delivered_from_memory=len(from_memory),
        kept_on_card_unsent=on_card,
        lost=counters["classifications"] - len(delivered) - on_card,
        healthz=code,
        detail=f"'{storage['detail'].split(': ', 1)[-1]}'",
    )


def test_an_outbox_unusable_at_start_is_a_reported_state_and_is_reopened_when_writable_again(
    mount: Mount,
    tmp_path: Path,
    pose_model: PoseBundle,
    squats: Path,
    notifications: Notifications,  # noqa: F811
    report: Callable[..., None],  # noqa: F811
) -> None:
    card = mount("tmpfs", 16)
    path = card / "outbox.sqlite"
    with Outbox(path, max_rows=1000) as earlier:  # what a previous run left waiting
        waiting = [earlier.append(CLASSIFICATION, {"earlier": True}) for _ in range(3)]
        disk_epoch = earlier.epoch
    _mount_command("-o", "remount,ro", str(card))
    with Mosquitto() as broker, Subscriber(broker.port, CLASSIFICATION) as sub:
        config = device_config(tmp_path, pose_model, squats, broker.port, pace="realtime", loop=True)
        config["outbox"] = {"path": str(path)}
        notifier = Notifier(str(notifications.path))
        with Running(parse_config(config), notifier=notifier, storage_retry_s=1.0) as daemon:
            # before the fix: "attempt to write a readonly database" and a traceback at start
            eventually(lambda: len(keys(sub)) >= 10, 90, "10 classifications delivered from memory")
            at_start = status_of(daemon)["storage"]
            assert (at_start["ok"], at_start["mode"], at_start["on_disk"]) == (False, "memory", None)
            assert "read-only" in at_start["detail"]
            code, health = healthz(daemon)
            assert code == 503 and len(health["reasons"]) == 1  # frames flow and the model runs
            assert health["reasons"][0].startswith(f"storage failed: {at_start['detail']} (results held in")
            # serving, so ready; the watchdog keeps being fed: a restart would not mend the card
            eventually(lambda: notifications.count("WATCHDOG=1") >= 3, 30, "the watchdog fed")
            assert notifications.count("READY=1") == 1
            statuses = [line for line in notifications.lines if line.startswith("STATUS=")]
            assert any("storage failed" in line for line in statuses)
            fed = notifications.count("WATCHDOG=1")

            _mount_command("-o", "remount,rw", str(card))
            eventually(lambda: status_of(daemon)["storage"]["ok"], 30, "storage usable again")
            stored_again = len(waiting) + 10
            eventually(lambda: (disk_epoch, stored_again) in keys(sub), 60, "10 results stored and delivered")
            assert healthz(daemon)[0] == 200
            after = status_of(daemon)["storage"]
            eventually(
                lambda: set(waiting) <= {s for e, s in keys(sub) if e == disk_epoch}, 30, "the old rows"
            )
            assert notifications.count("WATCHDOG=1") > fed
        final = daemon.status.snapshot()
    delivered = keys(sub)
    memory = sorted({seq for epoch, seq in delivered if epoch == at_start["epoch"]})
    disk = sorted({seq for epoch, seq in delivered if epoch == disk_epoch})
    assert after["mode"] == "disk" and after["epoch"] == disk_epoch
    assert memory == list(range(1, len(memory) + 1)) and disk[:3] == waiting
    assert disk == list(range(1, disk[-1] + 1))  # the file's numbering continued where it was
    assert final["counters"]["storage_failures"] == 1 and final["counters"]["outbox_errors"] == 0
    report(
        "outbox on a read-only file system at start, then remounted read-write",
        started="degraded, no traceback",
        healthz_while_failed=code,
        ready_sent=notifications.count("READY=1"),
        watchdog_while_failed=fed,
        delivered_from_memory=len(memory),
        delivered_from_disk_after_remount=len(disk) - len(waiting),
        earlier_rows_delivered=len(waiting),
        storage_failures=final["counters"]["storage_failures"],
    )


def metric(daemon: Daemon, name: str) -> float:
    code, text = http_get(daemon.http_port, "/metrics")
    assert code == 200
    values = [line.split(" ")[1] for line in text.decode().splitlines() if line.split(" ")[0] == name]
    assert values, f"/metrics has no {name}"
    return float(values[0])


def test_a_corrupt_outbox_is_counted_when_moved_aside_and_new_results_are_not_mistaken_for_repeats(
    tmp_path: Path,
    pose_model: PoseBundle,
    squats: Path,
    report: Callable[..., None],  # noqa: F811
) -> None:
    port, database = free_port(), tmp_path / "state" / "outbox.sqlite"
    with (
        Mosquitto(port, persistence=True) as broker,
        Subscriber(port, CLASSIFICATION, persistent=True, client_id="storage-corrupt") as sub,
    ):
        config = parse_config(device_config(tmp_path, pose_model, squats, port, pace="realtime"))
        with Running(config) as first:  # one pass of squats.mp4: 65 results
            eventually(lambda: len(keys(sub)) >= 20, 90, "20 results delivered")
            broker.stop()  # the rest wait in the outbox
            eventually(first.capture.ended.is_set, 60, "the video to end")
            eventually(lambda: first.outbox.depth >= 30, 30, "a backlog")
        with closing(sqlite3.connect(database)) as db:
            backlog = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        damage_counters_index(database)
        delivered_before = keys(sub)
        broker.start()
        with Running(config) as second:  # the same video again, on a new database
            moved = eventually(lambda: status_of(second)["storage"]["moved_aside"], 30, "moved aside")
            eventually(lambda: second.capture.ended.is_set(), 60, "the video to end")
            eventually(lambda: second.outbox.depth == 0, 30, "everything delivered")
            dropped = status_of(second)["outbox"]["dropped"]
            assert metric(second, "movement_edge_outbox_dropped_total") == dropped
            new_epoch = status_of(second)["storage"]["epoch"]
    old_epoch = delivered_before[0][0]
    after = [key for key in keys(sub) if key not in delivered_before]
    assert moved["rows"] == backlog and dropped == backlog  # the lost backlog is counted, not silent
    assert new_epoch != old_epoch
    assert sorted({seq for epoch, seq in after if epoch == new_epoch}) == list(range(1, 66))
    # what the README told subscribers before: drop a seq already seen; it would throw away the new ones
    seen_before = {seq for _, seq in delivered_before}
    lost_to_seq_only = len({seq for epoch, seq in after if epoch == new_epoch and seq in seen_before})
    assert lost_to_seq_only == len(seen_before)
    report(
        "outbox corrupt at start (index page overwritten)",
        delivered_before=len(set(delivered_before)),
        backlog_moved_aside=moved["rows"],
        counted_dropped=dropped,
        new_results=65,
        dropped_by_seq_only_dedupe=lost_to_seq_only,
        dropped_by_epoch_seq_dedupe=0,
    )


def test_a_really_full_disk_under_the_daemon_keeps_the_newest_results_and_counts_the_oldest(
    mount: Mount,
    tmp_path: Path,
    pose_model: PoseBundle,
    squats: Path,
    report: Callable[..., None],  # noqa: F811
) -> None:
    card = mount("tmpfs", 24)
    port = free_port()
    with (
        Mosquitto(port, persistence=True) as broker,
        Subscriber(port, CLASSIFICATION, persistent=True, client_id="storage-full-disk") as sub,
    ):
        broker.stop()  # down from the start: the outbox fills the disk's last blocks
        config = device_config(tmp_path, pose_model, squats, port, pace="fast", loop=True)
        config["device"]["state_dir"] = str(card / "state")  # outbox and models on the card
        with Running(parse_config(config)) as daemon:
            eventually(lambda: daemon.outbox.depth >= 100, 60, "a backlog of 100")
            fill(card)  # the outbox keeps the size it had when the disk filled up
            eventually(lambda: daemon.outbox.dropped >= 200, 120, "200 results dropped by the full disk")
            full = status_of(daemon)
            assert full["storage"]["ok"] is True and full["storage"]["disk_full"] is True
            assert healthz(daemon)[0] == 200  # results are still kept; the loss is counted
            broker.start()
            eventually(lambda: daemon.outbox.depth < 10, 90, "the backlog to drain")
        final = daemon.status.snapshot()
    counters, dropped = final["counters"], final["outbox"]["dropped"]
    published = counters["classifications"]
    assert counters["outbox_errors"] == 0 and counters["storage_failures"] == 0
    epochs = {epoch for epoch, _ in keys(sub)}
    assert len(epochs) == 1  # never in memory: the outbox kept working on the full disk
    eventually(lambda: len(set(keys(sub))) >= published - dropped, 30, "everything not dropped")
    delivered = {seq for _, seq in keys(sub)}
    missing = sorted(set(range(1, published + 1)) - delivered)
    # the oldest went first; a row dropped while already in flight is counted and delivered too
    assert 0 < len(missing) <= dropped and missing == list(range(1, len(missing) + 1))
    report(
        "disk really full under the daemon (tmpfs filled by a filler file), broker down",
        published=published,
        delivered=len(delivered),
        dropped_counted=dropped,
        missing_oldest=len(missing),
        backlog_on_full_disk=full["outbox"]["depth"],
        failed_appends=counters["outbox_errors"],
    )


def test_a_kiosk_restarted_on_a_read_only_card_runs_its_model_and_refuses_changes(
    mount: Mount,
    tmp_path: Path,
    pose_model: PoseBundle,
    squats: Path,
    report: Callable[..., None],  # noqa: F811
) -> None:
    card = mount("tmpfs", 64)
    token = "read-only-card-token"
    with Mosquitto() as broker, Subscriber(broker.port, CLASSIFICATION) as sub:
        config = device_config(tmp_path, pose_model, squats, broker.port, pace="realtime", loop=True)
        config["device"]["state_dir"] = str(card / "state")  # outbox and model store on the card
        config["http"]["token"] = token
        with Running(parse_config(config)) as first:  # the first run installs model.bundle on the card
            eventually(lambda: len(keys(sub)) >= 3, 90, "3 classifications")
            installed = status_of(first)["model"]["version"]
        first_run = len(keys(sub))
        _mount_command("-o", "remount,ro", str(card))
        # before the fix: "unable to open database file" from the model store, and the daemon exited
        with Running(parse_config(config)) as daemon:
            eventually(lambda: len(keys(sub)) >= first_run + 5, 90, "5 classifications after the restart")
            status = status_of(daemon)
            request = urllib.request.Request(
                f"http://127.0.0.1:{daemon.http_port}/api/models",
                data=pose_model.bundle.read_bytes(),
                method="POST",
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/zip"},
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            with refused.value:
                answer = json.loads(refused.value.read())
            code = healthz(daemon)[0]
    assert status["model"]["version"] == installed and status["model"]["status"] == "ok"
    assert not status["storage"]["ok"] and "read-only" in status["storage"]["detail"]
    assert refused.value.code == 422 and answer["error"].startswith("store: ")
    assert "read-only" in answer["error"]
    assert code == 503
    report(
        "restart with the state folder on a read-only card",
        started="with its active model, from the read-only registry",
        classified_after_restart=len(keys(sub)) - first_run,
        push_answer=f"{refused.value.code} {answer['error'][:40]}…",
        healthz=code,
    )
