"""Faults an unattended kiosk must survive, each made for real and measured.

A real daemon (in-process, or ``python -m device run`` as a child process where the fault is a
killed process) classifies real videos with real MediaPipe and a real bundle; a real mosquitto
is stopped and started; files are renamed, damaged and truncated on disk; SQLite really reports
``database or disk is full``. Each test asserts the invariants (nothing committed is lost,
order is kept, every loss is counted and reported) and prints one ``FAULTS: …`` line with its
numbers, which the README's table under "What it survives" quotes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
import pytest
from broker import Mosquitto, Subscriber, free_port
from conftest import REPO, PoseBundle, eventually
from test_daemon import (
    TOPIC,
    Notifications,
    _child,
    _write_toml,
    device_config,
    http_get,
    notifications,  # noqa: F401  (the NOTIFY_SOCKET fixture)
)

from device.config import Config, parse_config
from device.daemon import Daemon
from device.sources import VideoFileSource

CLASSIFICATION = f"{TOPIC}/classification"
EVENTS = f"{TOPIC}/events"
KNEE_BENDS = """\
[activity.knee_bend]
kind = "angle"
feature = "angle.left_knee"
low = 100.0
high = 160.0
"""
STATS = f"{TOPIC}/stats"
OUTAGE_S = 30.0  # how long the broker stays down, each time (the figure)
TOKEN = "faults-token"
SQUATS_FRAMES = 65  # squats.mp4: 5 fps, one person in every frame, so one classification per frame
FAST_RECONNECT = {"reconnect_initial_s": 0.2, "reconnect_max_s": 1.0}


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Callable[..., None]:
    """Print one ``FAULTS: <fault>: key=value …`` line past pytest's capture, for the README."""

    def emit(fault: str, **numbers: Any) -> None:
        with capsys.disabled():
            print(f"\nFAULTS: {fault}: " + " ".join(f"{k}={v}" for k, v in numbers.items()), flush=True)

    return emit


@dataclass(frozen=True)
class Delivery:
    """What a subscriber received on one topic (``classification`` by default), judged the way a
    dashboard would; the outbox numbers every topic it carries in one sequence."""

    arrived: list[int]  # seq of every message in arrival order, duplicates included

    @classmethod
    def of(cls, sub: Subscriber, topic: str = CLASSIFICATION) -> Delivery:
        return cls([message.json()["seq"] for message in sub.messages(topic)])

    @property
    def unique(self) -> list[int]:
        return sorted(set(self.arrived))

    @property
    def duplicates(self) -> int:
        return len(self.arrived) - len(set(self.arrived))

    @property
    def in_order(self) -> bool:
        """After dropping repeats by ``seq``, did every message come after the ones before it?"""
        first_seen = list(dict.fromkeys(self.arrived))
        return first_seen == sorted(first_seen)


def api(port: int, path: str, body: bytes | None = None) -> tuple[int, Any]:
    """One JSON request to the daemon's HTTP API (a POST with the bearer token when there is a body)."""
    if body is None:
        status, data = http_get(port, path)
        return status, json.loads(data)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def status_of(port: int) -> dict[str, Any]:
    code, body = api(port, "/api/status")
    assert code == 200, body
    return body


def metric(port: int, name: str) -> float:
    """One sample's value from ``/metrics`` (Prometheus text), e.g. ``movement_edge_outbox_dropped_total``."""
    code, text = http_get(port, "/metrics")
    assert code == 200
    for line in text.decode().splitlines():
        if line.split(" ")[0] == name:
            return float(line.split(" ")[1])
    raise AssertionError(f"/metrics has no {name}")


def playlist_config(
    tmp_path: Path, model: PoseBundle, paths: list[Path], mqtt_port: int | None, *, loop: bool
) -> dict[str, Any]:
    """A playlist played as fast as pose runs, lost files retried quickly; no MQTT without a port."""
    config = device_config(tmp_path, model, paths[0], mqtt_port or 1, pace="fast", loop=loop)
    config["source"]["paths"] = [str(path) for path in paths]
    config["capture"] = FAST_RECONNECT
    if mqtt_port is None:
        config["mqtt"] = {"enabled": False}
    return config


def counters(daemon: Daemon) -> dict[str, int]:
    return status_of(daemon.http_port)["counters"]


def outbox_file(path: Path) -> tuple[str, list[int], int]:
    """``PRAGMA integrity_check``, the waiting seqs and the highest seq ever given, read from the file."""
    with closing(sqlite3.connect(path)) as db:
        integrity = "; ".join(row[0] for row in db.execute("PRAGMA integrity_check"))
        waiting = [row[0] for row in db.execute("SELECT seq FROM outbox ORDER BY seq")]
        highest = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    return integrity, waiting, highest[0] if highest else 0


def video_frames(video: Path, scale: float) -> list[np.ndarray]:
    with VideoFileSource(video) as source:
        return [
            cv2.resize(frame.image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            for frame in source
        ]


def write_video(path: Path, frames: list[np.ndarray], fps: float, fourcc: str) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} here"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def decodable(video: Path) -> tuple[int, int]:
    """(frames the header announces, frames OpenCV actually decodes): the ground truth for a damaged file."""
    capture = cv2.VideoCapture(str(video))
    announced, decoded = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0
    while capture.read()[0]:
        decoded += 1
    capture.release()
    return announced, decoded


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Callable[[Path], subprocess.Popen]]:
    """``python -m device run --config FILE`` as child processes, logging to files; all killed at the end."""
    started: list[tuple[subprocess.Popen, IO[bytes]]] = []

    def start(config: Path) -> subprocess.Popen:
        log = (tmp_path / f"daemon-{len(started) + 1}.log").open("wb")  # a pipe nobody reads would fill
        child = subprocess.Popen(
            [sys.executable, "-m", "device", "run", "--config", str(config)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MOVEMENT_EDGE_HTTP_TOKEN": TOKEN},
        )
        started.append((child, log))
        return child

    yield start
    for child, log in started:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        log.close()


# ---------------------------------------------------------------------- the broker goes away


def test_two_30_s_broker_outages_deliver_every_classification_once_in_order(
    tmp_path: Path,
    pose_model: PoseBundle,
    squats: Path,
    run_daemon: Callable[[Config], Daemon],
    report: Callable[..., None],
) -> None:
    port = free_port()
    with (
        Mosquitto(port, persistence=True) as broker,
        Subscriber(port, CLASSIFICATION, persistent=True, client_id="faults-dashboard") as sub,
    ):
        config = device_config(tmp_path, pose_model, squats, port, pace="realtime", loop=True)
        daemon = run_daemon(parse_config(config))
        backlogs, reconnect_s, drain_s = [], [], []
        for _ in range(2):
            sub.wait_for(CLASSIFICATION, len(sub.messages(CLASSIFICATION)) + 10, timeout=60)  # flowing
            broker.stop()
            classified = daemon.status.snapshot()["counters"]["classifications"]
            time.sleep(OUTAGE_S)
            during = daemon.status.snapshot()
            assert during["mqtt"]["connected"] is False
            assert during["counters"]["classifications"] > classified  # it kept classifying
            backlogs.append(daemon.outbox.depth)
            broker.start()
            began = time.monotonic()
            eventually(lambda: daemon.status.snapshot()["mqtt"]["connected"], 60, "the daemon to reconnect")
            reconnect_s.append(round(time.monotonic() - began, 1))
            eventually(lambda: daemon.outbox.depth < 5, 60, "the backlog to drain")
            drain_s.append(round(time.monotonic() - began, 1))
        sub.wait_for(CLASSIFICATION, len(sub.messages(CLASSIFICATION)) + 10, timeout=60)  # flowing again
        daemon.stop()  # flushes: every stored classification is acknowledged before `stopped`

        final = daemon.status.snapshot()
        published = final["counters"]["classifications"]
        assert final["counters"]["outbox_errors"] == 0  # so every classification got a seq: 1..published
        eventually(lambda: len(Delivery.of(sub).unique) >= published, 30, f"all {published} delivered")
        delivery = Delivery.of(sub)
        assert delivery.unique == list(range(1, published + 1))  # exactly once after de-duplication
        assert delivery.in_order
        assert final["outbox"] == {"depth": 0, "dropped": 0}
    assert all(backlog > 0 for backlog in backlogs)
    report(
        "broker down 2 x 30 s",
        published=published,
        delivered=len(delivery.unique),
        duplicates=delivery.duplicates,
        outbox_dropped=final["outbox"]["dropped"],
        backlog_at_restart=backlogs,
        reconnected_after_s=reconnect_s,
        drained_after_s=drain_s,
    )


# ---------------------------------------------------------------------- the daemon is killed


def test_sigkill_with_a_backlog_loses_nothing_committed_and_keeps_the_active_model(
    tmp_path: Path,
    pose_model: PoseBundle,
    squats: Path,
    children: Callable[[Path], subprocess.Popen],
    report: Callable[..., None],
) -> None:
    # 2.0.0 also counts knee bends, so the backlog holds activity events between classifications
    from trainer.__main__ import main as trainer

    (tmp_path / "bends.toml").write_text(KNEE_BENDS)
    export = ["export", str(pose_model.run_dir), "--key", str(pose_model.signing_key), "--version", "2.0.0"]
    newer_path = tmp_path / "2.0.0.zip"
    assert trainer([*export, "--out", str(newer_path), "--activities", str(tmp_path / "bends.toml")]) == 0
    newer = newer_path.read_bytes()
    port, http_port = free_port(), free_port()
    database = tmp_path / "state" / "outbox.sqlite"
    with (
        Mosquitto(port, persistence=True) as broker,
        Subscriber(port, [CLASSIFICATION, EVENTS], persistent=True, client_id="faults-sigkill") as sub,
    ):
        config = device_config(tmp_path, pose_model, squats, port, pace="realtime", loop=True, keepalive=5)
        config["http"] = {"port": http_port}
        path = _write_toml(tmp_path / "device.toml", config)

        child = children(path)
        sub.wait_for(CLASSIFICATION, 5, timeout=120)
        # activated over HTTP, so it differs from model.bundle (1.0.0) that a fresh start installs
        code, body = api(http_port, "/api/models", newer)
        assert code == 201, body
        eventually(lambda: status_of(http_port)["model"]["version"] == "2.0.0", 10, "2.0.0 running")
        models_before = api(http_port, "/api/models")[1]
        broker.stop()
        eventually(
            lambda: status_of(http_port)["counters"]["activity_events"] >= 3, 90, "events in the backlog"
        )
        eventually(lambda: status_of(http_port)["outbox"]["depth"] >= 20, 60, "a backlog of 20")
        child.send_signal(signal.SIGKILL)  # mid-stream: no flush, no close, no checkpoint
        child.wait(10)

        integrity, backlog, killed_at = outbox_file(database)
        assert integrity == "ok"
        assert len(backlog) >= 20 and backlog == list(range(backlog[0], killed_at + 1))
        delivered_before = Delivery.of(sub)

        def received() -> list[int]:
            return Delivery.of(sub).arrived + Delivery.of(sub, EVENTS).arrived

        broker.start()
        child = children(path)
        eventually(lambda: set(backlog) <= set(received()), 90, "the backlog to be delivered")
        eventually(lambda: max(received()) > killed_at + 5, 30, "new results after the restart")
        after = status_of(http_port)
        models_after = api(http_port, "/api/models")[1]
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 0

        integrity_after, waiting, highest = outbox_file(database)
        assert integrity_after == "ok" and waiting == []
        eventually(lambda: len(set(received())) >= highest, 15, f"all {highest} delivered")
        delivery, events = Delivery.of(sub), Delivery.of(sub, EVENTS)
    # seqs continue over both topics; nothing committed is lost, each topic arrives in order
    assert sorted(set(delivery.arrived) | set(events.arrived)) == list(range(1, highest + 1))
    assert delivery.in_order and events.in_order and len(events.unique) >= 3
    assert models_after == models_before and models_after[0]["version"] == "2.0.0"
    assert (after["model"]["version"], after["model"]["status"]) == ("2.0.0", "ok")
    report(
        "SIGKILL with the broker down",
        backlog_at_kill=len(backlog),
        highest_seq_at_kill=killed_at,
        delivered_before_kill=len(delivered_before.unique),
        delivered_in_all=len(delivery.unique) + len(events.unique),
        events_delivered=len(events.unique),
        lost=highest - len(delivery.unique) - len(events.unique),
        duplicates=delivery.duplicates + events.duplicates,
        integrity=integrity,
        active_model_after_restart=after["model"]["version"],
    )


# ---------------------------------------------------------------------- readiness


def test_a_kiosk_without_a_model_is_ready_feeds_the_watchdog_and_says_it_waits(
    tmp_path: Path,
    pose_model: PoseBundle,
    data_dir: Path,
    notifications: Notifications,  # noqa: F811
    report: Callable[..., None],
) -> None:
    config = device_config(
        tmp_path, pose_model, data_dir / "videos" / "dance.mp4", 1, pace="realtime", loop=True
    )
    config["model"] = {"trusted_keys": [str(pose_model.public_key)]}  # as init-device leaves it: no model
    config["mqtt"] = {"enabled": False}
    config["http"] = {"port": free_port()}
    child = _child(
        _write_toml(tmp_path / "device.toml", config),
        NOTIFY_SOCKET=str(notifications.path),
        WATCHDOG_USEC="2000000",
    )
    try:
        # before the fix READY=1 waited for a model, and Type=notify restarted the kiosk every ~2 min
        eventually(lambda: "READY=1" in notifications.read(), 60, "READY=1")
        eventually(lambda: notifications.count("WATCHDOG=1") >= 3, 60, "the watchdog fed three times")
        status, body = http_get(config["http"]["port"], "/healthz")
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 0
    finally:
        child.kill()
    assert status == 503 and json.loads(body)["reasons"] == ["no model loaded"]
    assert notifications.count("READY=1") == 1
    assert any("model none (waiting for one)" in m for m in notifications.lines if m.startswith("STATUS="))
    report(
        "freshly provisioned kiosk without a model, under Type=notify",
        ready=notifications.count("READY=1"),
        watchdog_fed=notifications.count("WATCHDOG=1"),
        healthz=status,
        reasons=json.loads(body)["reasons"],
    )


# ---------------------------------------------------------------------- the video source


def test_playlist_files_renamed_away_and_back_are_skipped_then_reopened(
    tmp_path: Path,
    pose_model: PoseBundle,
    squats: Path,
    run_daemon: Callable[[Config], Daemon],
    report: Callable[..., None],
) -> None:
    clips = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    away = [tmp_path / "a.moved", tmp_path / "b.moved"]
    for clip in clips:
        shutil.copy(squats, clip)
    daemon = run_daemon(parse_config(playlist_config(tmp_path, pose_model, clips, None, loop=True)))
    eventually(lambda: counters(daemon)["classifications"] > 0, 60, "classifications")

    clips[1].rename(away[1])  # one file of two gone: the other keeps playing
    eventually(lambda: counters(daemon)["files_skipped"] >= 1, 60, "b.mp4 skipped")
    classified = counters(daemon)["classifications"]
    eventually(
        lambda: counters(daemon)["classifications"] >= classified + SQUATS_FRAMES, 60, "a full pass of a"
    )
    one_gone = status_of(daemon.http_port)
    assert one_gone["camera"]["state"] == "running"

    clips[0].rename(away[0])  # both gone: the playlist is a lost camera now
    eventually(lambda: status_of(daemon.http_port)["camera"]["state"] == "reconnecting", 60, "reconnecting")
    gone_at = time.monotonic()
    eventually(lambda: counters(daemon)["source_reopens"] >= 3, 30, "reopen attempts")
    both_gone = status_of(daemon.http_port)
    assert "no such" in both_gone["camera"]["detail"]

    for moved, clip in zip(away, clips, strict=True):
        moved.rename(clip)
    classified = counters(daemon)["classifications"]
    eventually(lambda: counters(daemon)["classifications"] > classified + 10, 60, "classifying again")
    back = status_of(daemon.http_port)
    assert back["camera"]["state"] == "running"
    assert metric(daemon.http_port, "movement_edge_files_skipped_total") >= back["counters"]["files_skipped"]
    report(
        "playlist files renamed away and back",
        skipped_passes_while_one_gone=one_gone["counters"]["files_skipped"],
        reopen_attempts_while_both_gone=both_gone["counters"]["source_reopens"],
        gone_for_s=round(time.monotonic() - gone_at, 1),
        classifications_before=one_gone["counters"]["classifications"],
        classifications_after=back["counters"]["classifications"],
    )


def test_damaged_and_truncated_videos_keep_the_playlist_classifying(
    tmp_path: Path,
    pose_model: PoseBundle,
    squats: Path,
    run_daemon: Callable[[Config], Daemon],
    report: Callable[..., None],
) -> None:
    frames = video_frames(squats, 0.5)  # 360x640: the same people, a quarter of the decoding
    damaged = write_video(tmp_path / "damaged.avi", frames, 5, "MJPG")
    data = bytearray(damaged.read_bytes())
    middle = slice(len(data) // 3, len(data) // 3 + len(data) // 20)  # 5 % of the file, mid-stream
    data[middle] = np.random.default_rng(6).integers(0, 256, middle.stop - middle.start, np.uint8).tobytes()
    damaged.write_bytes(bytes(data))
    cut = write_video(tmp_path / "cut.avi", frames, 5, "MJPG")
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 2 // 3])
    no_index = write_video(tmp_path / "no_index.mp4", frames, 5, "mp4v")  # the moov atom is at the end
    no_index.write_bytes(no_index.read_bytes()[: no_index.stat().st_size * 2 // 3])
    playlist = [damaged, cut, no_index]
    frames_of = {video.name: decodable(video) for video in playlist}  # (announced, decoded) per file
    lost_per_pass = sum(announced - decoded for announced, decoded in frames_of.values())
    assert frames_of["no_index.mp4"] == (0, 0)  # cannot even be opened: skipped, not undecodable
    assert lost_per_pass > 0

    with Mosquitto() as broker, Subscriber(broker.port, STATS) as sub:
        config = playlist_config(tmp_path, pose_model, playlist, broker.port, loop=True)
        daemon = run_daemon(parse_config(config))
        eventually(lambda: counters(daemon)["files_skipped"] >= 2, 120, "two passes of the playlist")
        snapshot = status_of(daemon.http_port)
        seen = snapshot["counters"]
        assert seen["frames_undecodable"] >= 2 * lost_per_pass
        assert seen["classifications"] > 0 and snapshot["camera"]["state"] == "running"
        classified = seen["classifications"]
        eventually(lambda: counters(daemon)["classifications"] > classified, 60, "still classifying")
        assert http_get(daemon.http_port, "/healthz")[0] == 200
        reported = seen["frames_undecodable"]
        assert metric(daemon.http_port, "movement_edge_frames_undecodable_total") >= reported
        sub.wait_until(STATS, lambda m: m.json()["frames"]["undecodable"] >= reported, timeout=15)
    report(
        "damaged and truncated videos",
        passes=seen["files_skipped"],
        decoded_of_written={name: f"{decoded}/{len(frames)}" for name, (_, decoded) in frames_of.items()},
        frames_undecodable=seen["frames_undecodable"],
        files_skipped=seen["files_skipped"],
        classifications=seen["classifications"],
        frames_without_person=seen["frames_without_person"],
    )


def test_minutes_without_a_person_then_someone_arrives(
    tmp_path: Path,
    pose_model: PoseBundle,
    data_dir: Path,
    squats: Path,
    run_daemon: Callable[[Config], Daemon],
    report: Callable[..., None],
) -> None:
    fps, minutes = 5, 3
    # the empty right-hand side of the hallway in example_video.webm, every frame of it, small
    hallway = [frame[:, 720:] for frame in video_frames(data_dir / "videos" / "example_video.webm", 1.0)]
    background = [cv2.resize(image, (160, 208), interpolation=cv2.INTER_AREA) for image in hallway]
    empty_frames = [background[i % len(background)] for i in range(fps * 60 * minutes)]
    empty = write_video(tmp_path / "empty_hallway.avi", empty_frames, fps, "MJPG")
    # then somebody comes in and squats
    config = playlist_config(tmp_path, pose_model, [empty, squats], None, loop=False)
    began = time.monotonic()
    daemon = run_daemon(parse_config(config))
    eventually(lambda: counters(daemon)["frames_processed"] >= len(empty_frames) // 2, 120, "half of it")
    midway = status_of(daemon.http_port)
    assert midway["counters"]["classifications"] == 0 and midway["person_present"] is False
    assert http_get(daemon.http_port, "/healthz")[0] == 200  # nobody there is a healthy kiosk
    eventually(daemon.capture.ended.is_set, 180, "the playlist to end")
    eventually(lambda: counters(daemon)["frames_processed"] == len(empty_frames) + SQUATS_FRAMES, 30, "all")
    took = time.monotonic() - began
    final = status_of(daemon.http_port)
    seen = final["counters"]
    assert seen["frames_without_person"] == len(empty_frames)
    assert seen["classifications"] == SQUATS_FRAMES  # every frame with the person, none without
    assert final["person_present"] is True and final["current"]["window"]["last_frame"] == SQUATS_FRAMES
    report(
        f"{minutes} min of video without a person, then one",
        empty_frames=len(empty_frames),
        frames_without_person=seen["frames_without_person"],
        classifications=seen["classifications"],
        wall_s=round(took, 1),
    )


# ---------------------------------------------------------------------- the disk fills up


def test_a_full_outbox_drops_the_oldest_counts_them_and_recovers(
    tmp_path: Path,
    pose_model: PoseBundle,
    squats: Path,
    run_daemon: Callable[[Config], Daemon],
    report: Callable[..., None],
) -> None:
    cap_mb = 0.1  # SQLite's max_page_count: real SQLITE_FULL errors, as on a full SD card
    port = free_port()
    with (
        Mosquitto(port, persistence=True) as broker,
        Subscriber(port, [CLASSIFICATION, STATS], persistent=True, client_id="faults-disk") as sub,
    ):
        broker.stop()  # down from the start: the outbox fills up
        config = device_config(tmp_path, pose_model, squats, port, pace="fast", loop=True)
        config["outbox"] = {"max_mb": cap_mb}
        daemon = run_daemon(parse_config(config))
        eventually(lambda: daemon.outbox.dropped >= 100, 120, "100 results dropped by the full outbox")
        full = status_of(daemon.http_port)
        assert full["counters"]["outbox_errors"] == 0  # the oldest made room: no append failed
        assert full["outbox"]["dropped"] > 0 and full["outbox"]["depth"] < full["counters"]["classifications"]

        broker.start()
        eventually(lambda: daemon.outbox.depth < 10, 90, "the backlog to drain")
        dropped = daemon.outbox.dropped
        classified = daemon.status.snapshot()["counters"]["classifications"]
        backlog_cap = full["outbox"]["depth"]
        # more results than the capped file can hold: without space coming back these would drop
        eventually(
            lambda: daemon.status.snapshot()["counters"]["classifications"] > classified + 2 * backlog_cap,
            120,
            "results after recovery",
        )
        assert daemon.outbox.dropped == dropped  # recovered: nothing more dropped
        assert status_of(daemon.http_port)["outbox"]["dropped"] == dropped
        assert metric(daemon.http_port, "movement_edge_outbox_dropped_total") == dropped
        stats = sub.wait_until(STATS, lambda m: m.json()["outbox"]["dropped"] == dropped, timeout=15).json()
        daemon.stop()

        final = daemon.status.snapshot()
        published = final["counters"]["classifications"]
        assert final["counters"]["outbox_errors"] == 0 and final["outbox"]["dropped"] == dropped
        eventually(lambda: len(Delivery.of(sub).unique) >= published - dropped, 30, "everything not dropped")
        delivery = Delivery.of(sub)
    integrity, waiting, highest = outbox_file(tmp_path / "state" / "outbox.sqlite")
    assert integrity == "ok" and waiting == [] and highest == published
    missing = sorted(set(range(1, published + 1)) - set(delivery.unique))
    # every loss is counted (a row dropped while already in flight is counted and delivered too)
    assert 0 < len(missing) <= dropped
    assert missing == list(range(1, len(missing) + 1))  # and the oldest went first
    assert delivery.in_order
    with closing(sqlite3.connect(tmp_path / "state" / "outbox.sqlite")) as db:
        size = db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
    assert size <= cap_mb * 2**20
    report(
        f"outbox capped at {cap_mb} MB, broker down",
        published=published,
        delivered=len(delivery.unique),
        dropped_counted=dropped,
        missing=len(missing),
        stats_dropped=stats["outbox"]["dropped"],
        peak_backlog=backlog_cap,
        file_bytes=size,
    )
