"""The fleet tool against real kiosks: two daemons classifying a looping video on loopback ports.

The daemons are built in-process from validated configs (as in test_daemon.py), each with its own
state folder and token, trusting the fixture's key and starting on its 1.0.0 bundle, publishing to
a real mosquitto. The commands run through ``python -m provisioning``'s real entry point; while a
push runs, a subscriber keeps every classification the kiosks publish (each with its outbox
``seq``), which is the complete record of the model switch whatever the machine's load.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import socket
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from broker import Mosquitto, Subscriber, free_port
from conftest import PoseBundle, eventually

from device.config import parse_config
from device.daemon import Daemon, build
from provisioning.__main__ import main as provisioning
from trainer.__main__ import main as trainer

KIOSKS = ("kiosk-a", "kiosk-b")
TOKEN_ENV = "KIOSK_A_TOKEN"
UPLOAD_LIMIT_MB = 4


@dataclass(frozen=True)
class Bundles:
    v2: Path  # the fixture's model as 2.0.0, signed with the trusted key
    untrusted: Path  # 3.0.0 signed with a key no kiosk trusts
    window_frames: int  # frames per window of these models


@pytest.fixture(scope="module")
def bundles(pose_model: PoseBundle, tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    work = tmp_path_factory.mktemp("bundles")
    assert trainer(["keygen", "--out", str(work / "other")]) == 0
    exports = {
        "v2": ("2.0.0", pose_model.signing_key),
        "untrusted": ("3.0.0", work / "other" / "signing.key"),
    }
    for name, (version, key) in exports.items():
        out = work / f"{name}.zip"
        args = ["export", str(pose_model.run_dir), "--out", str(out), "--key", str(key)]
        assert trainer([*args, "--model-id", "poses", "--version", version]) == 0
    with zipfile.ZipFile(work / "v2.zip") as archive:
        window = json.loads(archive.read("manifest.json"))["window"]
    return Bundles(work / "v2.zip", work / "untrusted.zip", window["size"] if window else 1)


@dataclass
class Fleet:
    daemons: dict[str, Daemon]
    tokens: dict[str, str]
    folder: Path
    broker_port: int | None = None  # where the kiosks publish, when they do
    dead_port: int = field(default_factory=free_port)  # nothing listens: connection refused

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.daemons[name].http_port}"

    def status(self, name: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.url(name) + "/api/status", timeout=5) as response:
            return json.loads(response.read())

    def version(self, name: str) -> str | None:
        model = self.status(name)["model"]
        return model and model["version"]

    def write(self, file_name: str, *, dead: bool = False, silent_port: int | None = None) -> Path:
        """A fleet file: kiosk-a's token from the environment, kiosk-b's from a file; optionally a
        kiosk-dead (nothing listens) and a kiosk-silent (accepts connections, never answers)."""
        token_file = self.folder / "tokens" / "kiosk-b.token"
        token_file.parent.mkdir(exist_ok=True)
        token_file.write_text(self.tokens["kiosk-b"] + "\n")
        entries = [
            {"name": "kiosk-a", "url": self.url("kiosk-a"), "token_env": TOKEN_ENV},
            {"name": "kiosk-b", "url": self.url("kiosk-b"), "token_file": "tokens/kiosk-b.token"},
        ]
        others = {"kiosk-dead": self.dead_port if dead else None, "kiosk-silent": silent_port}
        entries += [
            {"name": name, "url": f"http://127.0.0.1:{port}", "token_env": TOKEN_ENV}
            for name, port in others.items()
            if port is not None
        ]
        text = "".join(
            "[[device]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in e.items()) for e in entries
        )
        path = self.folder / file_name
        path.write_text(text)
        return path


@contextmanager
def running_fleet(
    pose_model: PoseBundle,
    data_dir: Path,
    folder: Path,
    *,
    broker_port: int | None = None,
    pace: Literal["realtime", "fast"] = "realtime",
) -> Iterator[Fleet]:
    """Both kiosks classifying on loopback ports, each on the fixture's 1.0.0; stopped at the end.

    With ``broker_port`` they publish there; ``pace="fast"`` plays the video as fast as pose
    takes frames, so none is ever dropped (a realtime source drops frames when the machine is
    busy). Also used by test_mlflow.py, which pushes registered versions to its own fleet.
    """
    daemons: dict[str, Daemon] = {}
    tokens = {name: hashlib.sha256(name.encode()).hexdigest()[:32] for name in KIOSKS}
    try:
        for name in KIOSKS:
            config = {
                "device": {"id": name, "state_dir": str(folder / name)},
                "source": {
                    "kind": "file",
                    "paths": [str(data_dir / "videos" / "dance.mp4")],
                    "loop": True,
                    "pace": pace,
                },
                "model": {"bundle": str(pose_model.bundle), "trusted_keys": [str(pose_model.public_key)]},
                "mqtt": {"enabled": broker_port is not None, "port": broker_port or 1883},
                "http": {
                    "port": 0,
                    "token_sha256": hashlib.sha256(tokens[name].encode()).hexdigest(),
                    "max_upload_mb": UPLOAD_LIMIT_MB,
                },
            }
            daemons[name] = build(parse_config(config, env={}))
            daemons[name].start()
        for name, daemon in daemons.items():
            eventually(
                lambda d=daemon: d.status.snapshot()["counters"]["classifications"] > 10,
                60,
                f"{name} classifying",
            )
        yield Fleet(daemons, tokens, folder, broker_port)
    finally:
        for daemon in daemons.values():
            daemon.stop()


@pytest.fixture(scope="module")
def fleet(
    pose_model: PoseBundle, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("fleet")
    with (
        Mosquitto() as broker,
        running_fleet(pose_model, data_dir, folder, broker_port=broker.port, pace="fast") as running,
    ):
        yield running


@pytest.fixture
def token_env(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, fleet.tokens["kiosk-a"])


def table(out: str) -> dict[str, tuple[str, str]]:
    """The printed table as device -> (second column, the rest)."""
    rows = {}
    for line in out.splitlines()[1:]:
        device, result, *detail = line.split(maxsplit=2)
        rows[device] = (result, " ".join(detail))
    return rows


def classifications(results: Subscriber, name: str) -> list[dict[str, Any]]:
    """Every classification ``name`` published so far, once each (QoS 1 may repeat), by ``seq``."""
    by_seq = {payload["seq"]: payload for payload in results.payloads(f"movement/{name}/classification")}
    return [by_seq[seq] for seq in sorted(by_seq)]


def count_of(version: str, results: Subscriber, name: str) -> int:
    return sum(payload["model"]["version"] == version for payload in classifications(results, name))


def test_push_switches_both_kiosks_while_classifying_and_reports_a_dead_one(
    fleet: Fleet, bundles: Bundles, token_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert {fleet.version(name) for name in KIOSKS} == {"1.0.0"}
    assert fleet.broker_port is not None
    path = fleet.write("fleet.toml", dead=True)
    with Subscriber(fleet.broker_port, "movement/+/classification") as results:
        for name in KIOSKS:  # a baseline of the old model's results
            eventually(lambda n=name: count_of("1.0.0", results, n) >= 10, 60, f"{name}: 1.0.0 results")
        status = provisioning(["push", str(bundles.v2), "--fleet", str(path), "--timeout", "60"])
        for name in KIOSKS:  # and some of the new one's
            eventually(lambda n=name: count_of("2.0.0", results, n) >= 10, 60, f"{name}: 2.0.0 results")
        timelines = {name: classifications(results, name) for name in KIOSKS}
    out = capsys.readouterr().out
    rows = table(out)
    assert status == 1, out  # one device failed
    assert rows["kiosk-a"][0] == "ok" and rows["kiosk-b"][0] == "ok", out
    assert rows["kiosk-dead"] == ("unreachable", "connection refused (4 attempts)"), out

    summary = []
    for name, timeline in timelines.items():
        assert fleet.version(name) == "2.0.0"
        seqs = [payload["seq"] for payload in timeline]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{name}: a result is missing"
        versions = [payload["model"]["version"] for payload in timeline]
        switch = versions.index("2.0.0")
        assert set(versions[:switch]) == {"1.0.0"} and set(versions[switch:]) == {"2.0.0"}, name
        # The source never drops a frame (pace "fast"), so the frames between two results are
        # the pipeline's doing alone, whatever the machine's load: one window at most, across
        # the switch too — the pipeline did not stop to load 2.0.0, and no result was lost (a
        # model reading single frames: every frame has its result, 1.0.0's or 2.0.0's).
        # Steps across the end of the looping video are left out: a new pass is a new clip, whose
        # pose tracking starts afresh by design (as in `trainer extract`).
        frames = [payload["window"]["last_frame"] for payload in timeline]
        steps = [b - a if b > a else 0 for a, b in itertools.pairwise(frames)]
        worst = max(range(len(steps)), key=steps.__getitem__)
        assert steps[worst] <= bundles.window_frames, (
            f"{name}: {steps[worst]} frames between results {worst} and {worst + 1} "
            f"(the switch to 2.0.0 at {switch}); one window is {bundles.window_frames}"
        )
        with urllib.request.urlopen(fleet.url(name) + "/api/models", timeout=5) as response:
            models = {m["version"]: m["status"] for m in json.loads(response.read())}
        assert models == {"2.0.0": "active", "1.0.0": "available"}
        summary.append(
            f"{name}: {len(timeline)} results, seq {seqs[0]}-{seqs[-1]} without a gap, 1.0.0 until result "
            f"{switch}, largest step {steps[worst]} frame(s) (one window: {bundles.window_frames})"
        )

    # pushing it again is a no-op that succeeds
    again = provisioning(["push", str(bundles.v2), "--fleet", str(path), "--device", "kiosk-a"])
    assert again == 0 and "already active" in table(capsys.readouterr().out)["kiosk-a"][1]
    with capsys.disabled():
        print("FLEET: " + "; ".join(summary))


def test_a_silent_kiosk_times_out_without_holding_up_the_others(
    fleet: Fleet, bundles: Bundles, token_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kiosk that accepts the connection and never answers costs only its own deadline."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:  # never accept()ed
        path = fleet.write("silent.toml", silent_port=silent.getsockname()[1])
        # --force uploads even to kiosks already running the bundle (they answer at once)
        status = provisioning(["push", str(bundles.v2), "--fleet", str(path), "--timeout", "3", "--force"])
    captured = capsys.readouterr()
    rows = table(captured.out)
    assert status == 1, captured.out
    assert rows["kiosk-a"][0] == rows["kiosk-b"][0] == "ok", captured.out
    assert rows["kiosk-silent"] == ("unreachable", "timed out (1 attempt)"), captured.out
    finished = [line.split(":")[0] for line in captured.err.splitlines() if line.startswith("kiosk-")]
    assert finished[-1] == "kiosk-silent", captured.err  # the others were done before it


def test_a_wrong_token_is_unauthorized(
    fleet: Fleet, bundles: Bundles, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "not-the-token")
    before = fleet.version("kiosk-a")
    path = fleet.write("wrong-token.toml")
    status = provisioning(["push", str(bundles.untrusted), "--fleet", str(path), "--device", "kiosk-a"])
    rows = table(capsys.readouterr().out)
    assert status == 1 and rows["kiosk-a"][0] == "unauthorized", rows
    assert fleet.version("kiosk-a") == before


def test_a_bundle_signed_by_an_untrusted_key_is_rejected_with_the_reason(
    fleet: Fleet, bundles: Bundles, token_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {name: fleet.version(name) for name in KIOSKS}
    counts = {name: fleet.status(name)["counters"]["classifications"] for name in KIOSKS}
    status = provisioning(["push", str(bundles.untrusted), "--fleet", str(fleet.write("fleet.toml"))])
    rows = table(capsys.readouterr().out)
    assert status == 1
    for name in KIOSKS:
        result, detail = rows[name]
        assert result == "rejected" and "signature" in detail and "trusted key" in detail, rows
        assert fleet.version(name) == before[name]  # the previous model keeps running
        eventually(
            lambda n=name: fleet.status(n)["counters"]["classifications"] > counts[n] + 5,
            10,
            f"{name} still classifying",
        )


def test_a_bundle_over_the_upload_limit_is_rejected_at_once(
    fleet: Fleet, token_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The kiosk refuses from the headers and closes mid-upload: a refusal, not a network failure."""
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w") as archive:
        archive.writestr(
            "manifest.json", json.dumps({"model_id": "poses", "version": "9.0.0", "sha256": "0" * 64})
        )
        archive.writestr("model.skops", random.randbytes((UPLOAD_LIMIT_MB + 2) * 1024 * 1024))
    status = provisioning(
        ["push", str(big), "--fleet", str(fleet.write("fleet.toml")), "--device", "kiosk-a"]
    )
    result, detail = table(capsys.readouterr().out)["kiosk-a"]
    # a refusal, which is the kiosk's answer and never retried (an unreachable kiosk's row says
    # "(4 attempts)"); no time is asserted: a busy machine must not fail this test
    assert status == 1 and result == "rejected" and "Too Large" in detail and "attempts" not in detail, detail


def test_status_shows_each_kiosks_model_and_an_unreachable_one(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    status = provisioning(["status", "--fleet", str(fleet.write("fleet.toml", dead=True)), "--timeout", "2"])
    out = capsys.readouterr().out
    rows = table(out)
    assert status == 1, out
    for name in KIOSKS:
        version, fps, mqtt, camera, *_uptime = rows[name][1].split()
        assert rows[name][0] == "poses" and version == fleet.version(name), out
        assert float(fps) > 0 and mqtt == "connected" and camera == "running", out
    assert rows["kiosk-dead"][0] == "unreachable:" and "connection refused" in rows["kiosk-dead"][1]


@pytest.mark.parametrize(
    ("bundle", "extra", "message"),
    [
        ("missing.zip", [], "missing.zip: cannot read"),
        ("text.zip", [], "text.zip: not a zip file"),
        ("no-manifest.zip", [], "no-manifest.zip: no manifest.json in the zip"),
        ("good", [], "device kiosk-1: environment variable UNSET_TOKEN is not set"),
        ("good", ["--device", "kiosk-9"], "--device kiosk-9: not in the fleet file (known: kiosk-1)"),
    ],
)
def test_push_usage_errors_exit_2_before_any_upload(
    tmp_path: Path,
    pose_model: PoseBundle,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    bundle: str,
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.delenv("UNSET_TOKEN", raising=False)
    fleet_file = tmp_path / "fleet.toml"
    # port 9 (discard) on loopback: nothing listens, and nothing may be sent there anyway
    fleet_file.write_text(
        '[[device]]\nname = "kiosk-1"\nurl = "http://127.0.0.1:9"\ntoken_env = "UNSET_TOKEN"\n'
    )
    (tmp_path / "text.zip").write_text("not a zip")
    with zipfile.ZipFile(tmp_path / "no-manifest.zip", "w") as archive:
        archive.writestr("model.skops", b"x")
    path = pose_model.bundle if bundle == "good" else tmp_path / bundle
    status = provisioning(["push", str(path), "--fleet", str(fleet_file), *extra])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and message in err, err
