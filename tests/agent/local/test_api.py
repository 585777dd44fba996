"""The local control API on a real unix socket: mode 0660, Status, Budget, health, CLI."""

from __future__ import annotations

import os
import stat
import time

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.local.api import FEDERATION_SERVICE, AgentApi, connect_api
from agent.main import main
from confide.errors import ConfigError
from confide.v1 import agent_pb2, agent_pb2_grpc, federation_pb2
from tests.agent.test_config import BASE


def _status() -> agent_pb2.AgentStatus:
    return agent_pb2.AgentStatus(
        site_id="site-1",
        connected=True,
        aggregator="127.0.0.1:7443",
        uptime_s=12.0,
        datasets=["tabular"],
        device="cpu",
        tasks_done=3,
        tasks_failed=1,
        resources=federation_pb2.Resources(cpu_percent=2.5, rss_bytes=50 << 20),
    )


@pytest.fixture
def api(tmp_path):
    server = AgentApi(tmp_path / "agent.sock", status=_status)
    server.start()
    yield server
    server.stop(grace=0)


def test_socket_mode_is_0660(api):
    """The API socket is created with mode 0660."""
    st = os.stat(api.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660


def test_status_and_budget_answer(api):
    """Status returns the source's AgentStatus; Budget is empty until the ledger lands."""
    with connect_api(api.socket_path) as ch:
        stub = agent_pb2_grpc.AgentControlStub(ch)
        st = stub.Status(agent_pb2.StatusRequest(), timeout=5)
        assert (st.site_id, st.tasks_done, list(st.datasets)) == ("site-1", 3, ["tabular"])
        assert list(stub.Budget(agent_pb2.BudgetRequest(), timeout=5).datasets) == []


def test_health_liveness_and_connection(api):
    """Overall health is SERVING; the Federation service follows the connection state."""
    with connect_api(api.socket_path) as ch:
        h = health_pb2_grpc.HealthStub(ch)

        def check(service: str) -> int:
            return h.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

        assert check("") == health_pb2.HealthCheckResponse.SERVING
        assert check(FEDERATION_SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
        api.set_connected(True)
        assert check(FEDERATION_SERVICE) == health_pb2.HealthCheckResponse.SERVING


def test_refuses_a_path_that_is_not_a_socket(tmp_path):
    """An existing regular file at the socket path is refused, never replaced."""
    p = tmp_path / "agent.sock"
    p.write_text("keep me")
    with pytest.raises(ConfigError) as info:
        AgentApi(p, status=_status)
    assert info.value.key == "api.socket"
    assert p.read_text() == "keep me"


def test_refuses_a_socket_another_agent_serves(api):
    """A second API on a live socket is refused (another agent runs)."""
    with pytest.raises(ConfigError):
        AgentApi(api.socket_path, status=_status)


def test_replaces_a_stale_socket(tmp_path):
    """A socket left by a killed agent (nobody listening) is replaced by one that answers."""
    import socket

    p = tmp_path / "agent.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(p))
    s.close()
    server = AgentApi(p, status=_status)
    server.start()
    try:
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o660
        with connect_api(p) as ch:
            st = agent_pb2_grpc.AgentControlStub(ch).Status(agent_pb2.StatusRequest(), timeout=5)
        assert st.site_id == "site-1"
    finally:
        server.stop(grace=0)


def _config(tmp_path, sock) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(BASE + f'[api]\nsocket = "{sock}"\n')
    return str(path)


def test_status_command_prints_status(api, tmp_path, capsys):
    """`confide-agent status` against a running API prints the site, tasks and connection."""
    assert main(["status", "--config", _config(tmp_path, api.socket_path)]) == 0
    out = capsys.readouterr().out
    assert "site-1" in out and "connected" in out and "3 done, 1 failed" in out


def test_budget_command_prints_lines(api, tmp_path, capsys):
    """`confide-agent budget` prints a line even when no budget is recorded yet."""
    assert main(["budget", "--config", _config(tmp_path, api.socket_path)]) == 0
    assert "no privacy budget recorded yet" in capsys.readouterr().out


def test_status_command_without_daemon_exits_1(tmp_path, capsys):
    """`confide-agent status` with no daemon exits 1 with a clear message."""
    t0 = time.monotonic()
    assert main(["status", "--config", _config(tmp_path, tmp_path / "none.sock")]) == 1
    assert "not reachable" in capsys.readouterr().err
    assert time.monotonic() - t0 < 10
