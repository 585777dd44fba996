"""The real daemon process: starts, serves its API while the aggregator is unreachable,
stays small, and stops cleanly with exit 0 on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from structlog.testing import capture_logs

from agent.assembly import _stop_session
from agent.local.api import connect_api
from agent.main import main
from tests.agent.conftest import FEDERATION
from tests.support.wait import wait_for


def _wait(cond, timeout: float, proc: subprocess.Popen, log: Path, *, what: str) -> None:
    def observe() -> bool:
        assert proc.poll() is None, log.read_text()  # the daemon died: fail now, with its log
        return cond()

    wait_for(observe, timeout=timeout, what=what)


def _config(tmp_path: Path, pki_dir: Path) -> Path:
    # The daemon checks its datasets at start and refuses to run with none usable.
    (tmp_path / "data.csv").write_text(
        "a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20))
    )
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
federation = "{FEDERATION}"
[aggregator]
address = "127.0.0.1:9"
[tls]
ca = "{pki_dir}/ca.crt"
cert = "{pki_dir}/site-1.crt"
key = "{pki_dir}/site-1.key"
signing_key = "{pki_dir}/site-1.sign.key"
[state]
dir = "{tmp_path}/state"
[worker]
device = "cpu"
[datasets.tabular]
path = "{tmp_path}/data.csv"
features = ["a", "b"]
label = "y"
[log]
json = true
""")
    return cfg


def test_daemon_serves_api_and_exits_0_on_sigterm(tmp_path, pki, capsys):
    """With no aggregator the daemon keeps retrying, answers status, and SIGTERM exits 0."""
    cfg = _config(tmp_path, pki.dir)
    sock = tmp_path / "state" / "agent.sock"
    log = tmp_path / "agent.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "--config", str(cfg)],
            stderr=err,
            cwd=Path(__file__).parents[2],
        )
    try:
        _wait(sock.exists, 60, proc, log, what="the API socket")
        with connect_api(sock) as ch:  # the socket exists from bind; wait until it serves
            health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True
            )
        assert main(["status", "--config", str(cfg)]) == 0
        out = capsys.readouterr().out
        assert "disconnected" in out and "tabular" in out
        assert oct(os.stat(sock).st_mode & 0o777) == oct(0o660)
        rss = psutil.Process(proc.pid).memory_info().rss
        assert rss < 100 * 2**20, f"idle RSS {rss / 2**20:.1f} MiB"
        # The first failed dial is logged after the API is up; under load it may lag.
        _wait(
            lambda: '"event": "disconnected"' in log.read_text(),
            30,
            proc,
            log,
            what="the daemon logging its failed dial",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logs = log.read_text()
    assert '"event": "disconnected"' in logs and '"event": "agent_stopped"' in logs
    assert not sock.exists()


def test_enroll_writes_keys_and_csr(tmp_path, capsys):
    """`confide-agent enroll` makes the keys and a CSR and names the next step."""
    assert main(["enroll", "--dir", str(tmp_path / "pki"), "--name", "site-9"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "pki" / "site-9.csr").exists()
    assert "confide pki sign" in out and "--role site" in out


def test_bad_identity_file_exits_2(tmp_path, pki, capsys):
    """A missing certificate file is a one-line config error, exit 2, before logging is set up."""
    cfg = _config(tmp_path, pki.dir)
    cfg.write_text(cfg.read_text().replace("site-1.crt", "nobody.crt"))
    assert main(["--config", str(cfg)]) == 2
    assert capsys.readouterr().err.startswith("confide-agent: config key")


def test_shutdown_leaves_the_ledger_open_while_the_session_runs():
    """A session thread that outlives the join keeps the ledger open and logs the event."""
    release = threading.Event()
    thread = threading.Thread(target=release.wait, daemon=True)
    thread.start()
    stops: list[str] = []
    try:
        with capture_logs() as logs:
            _stop_session(
                lambda: stops.append("stop"),
                thread,
                lambda: stops.append("ledger closed"),
                join_s=0.05,
            )
    finally:
        release.set()
        thread.join()
    assert stops == ["stop"]
    assert [e["event"] for e in logs] == ["session_did_not_stop"]


def test_shutdown_closes_the_ledger_once_the_session_ended():
    """When stop() ends the session thread, the ledger is closed after the join."""
    release = threading.Event()
    thread = threading.Thread(target=release.wait, daemon=True)
    thread.start()
    stops: list[str] = []
    with capture_logs() as logs:
        _stop_session(
            lambda: (stops.append("stop"), release.set()),
            thread,
            lambda: stops.append("ledger closed"),
            join_s=10,
        )
    assert stops == ["stop", "ledger closed"]
    assert not thread.is_alive() and logs == []


def test_state_is_private_under_umask_0(tmp_path, pki):
    """Run with umask 0, the daemon makes its state dir 0700 and its ledger files 0600."""
    cfg = _config(tmp_path, pki.dir)
    state = tmp_path / "state"
    log = tmp_path / "agent.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "--config", str(cfg)],
            stderr=err,
            cwd=Path(__file__).parents[2],
            umask=0,
        )
    try:
        _wait((state / "agent.sock").exists, 60, proc, log, what="the API socket")
        assert oct(os.stat(state).st_mode & 0o777) == oct(0o700)
        files = [p for p in state.iterdir() if p.name.startswith("ledger.db")]
        assert state / "ledger.db" in files
        for p in files:
            assert oct(os.stat(p).st_mode & 0o777) == oct(0o600), p.name
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
