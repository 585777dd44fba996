"""systemd's notify protocol against a real datagram socket playing systemd's part."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from confide.sdnotify import Notifier, from_environ


@pytest.fixture()
def systemd(tmp_path: Path):
    """A bound unix datagram socket, as systemd's notify socket is."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5.0)
    yield str(path), sock
    sock.close()


def _fields(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    assert data.endswith("\n")
    return dict(line.split("=", 1) for line in data.splitlines())


def test_ready_status_stopping_reach_the_socket(systemd):
    """READY=1 carries the status and main pid; STATUS and STOPPING arrive as sent."""
    path, sock = systemd
    n = from_environ({"NOTIFY_SOCKET": path})
    assert n.ready("serving on 127.0.0.1:7443")
    assert _fields(sock) == {
        "READY": "1",
        "STATUS": "serving on 127.0.0.1:7443",
        "MAINPID": str(os.getpid()),
    }
    assert n.status("round 3 of job j1")
    assert _fields(sock) == {"STATUS": "round 3 of job j1"}
    assert n.stopping()
    assert _fields(sock) == {"STOPPING": "1", "STATUS": "stopping"}


def test_abstract_namespace_address():
    """An address starting with @ names an abstract socket, as systemd may pass."""
    name = f"confide-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5.0)
    try:
        assert Notifier(address="@" + name).status("up")
        assert _fields(sock) == {"STATUS": "up"}
    finally:
        sock.close()


def test_outside_systemd_nothing_is_sent_and_nothing_fails(tmp_path):
    """Without NOTIFY_SOCKET, or with a socket nobody listens on, calls return False."""
    assert from_environ({}).ready("x") is False
    assert Notifier(address=str(tmp_path / "absent")).ready("x") is False


def test_watchdog_pings_only_when_systemd_asked(systemd):
    """WATCHDOG=1 goes out only with WATCHDOG_USEC set, and then on every call."""
    path, sock = systemd
    assert from_environ({"NOTIFY_SOCKET": path}).watchdog() is False
    n = from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    assert n.watchdog_s == pytest.approx(2.0)
    assert n.watchdog() and n.watchdog()
    assert _fields(sock) == {"WATCHDOG": "1"}
    assert _fields(sock) == {"WATCHDOG": "1"}


def test_watchdog_for_another_pid_is_ignored(systemd):
    """A WATCHDOG_PID naming another process means this one must not ping."""
    path, _ = systemd
    n = from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"})
    assert n.watchdog_s is None
    assert n.watchdog() is False
