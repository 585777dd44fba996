"""Both daemons speak systemd's notify protocol to a real socket playing systemd's part."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from confide.v1 import admin_pb2
from tests.e2e.conftest import site_setup

pytestmark = pytest.mark.e2e

_WATCHDOG = {"WATCHDOG_USEC": "1000000"}


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(60.0)
    return sock


def _next(sock: socket.socket, key: str) -> dict[str, str]:
    """The next datagram that sets ``key`` (watchdog pings in between are skipped)."""
    while True:
        fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())
        if key in fields:
            return fields


def test_ready_only_once_serving_then_watchdog_and_stopping(federation, bc3, tmp_path):
    """READY=1 comes when each daemon serves; WATCHDOG=1 follows; SIGTERM sends STOPPING=1."""
    agg_sock = _listen(tmp_path / "agg.notify")
    site_sock = _listen(tmp_path / "site.notify")
    try:
        federation.make_pki(["site-1"])
        federation.start_aggregator(env={"NOTIFY_SOCKET": str(agg_sock.getsockname()), **_WATCHDOG})
        ready = _next(agg_sock, "READY")
        assert ready["READY"] == "1" and "serving federation e2e" in ready["STATUS"]
        assert ready["MAINPID"] == str(federation.aggregator.pid)
        # Ready means serving: an operator call over mutual TLS succeeds right away.
        federation.admin().ListJobs(admin_pb2.ListJobsRequest(), timeout=10)
        assert _next(agg_sock, "WATCHDOG")["WATCHDOG"] == "1"

        agent = federation.start_agent(
            site_setup("site-1", bc3, 0),
            env={"NOTIFY_SOCKET": str(site_sock.getsockname()), **_WATCHDOG},
        )
        ready = _next(site_sock, "READY")
        assert ready["MAINPID"] == str(agent.pid)
        assert (federation.site_dirs["site-1"] / "agent.sock").is_socket()
        assert _next(site_sock, "WATCHDOG")["WATCHDOG"] == "1"

        agent.send_signal(signal.SIGTERM)
        assert _next(site_sock, "STOPPING")["STOPPING"] == "1"
        assert agent.wait(timeout=60) == 0
        federation.aggregator.send_signal(signal.SIGTERM)
        assert _next(agg_sock, "STOPPING")["STOPPING"] == "1"
        assert federation.aggregator.wait(timeout=60) == 0
    finally:
        agg_sock.close()
        site_sock.close()
