"""The agent's local control API: ``AgentControl`` and gRPC health on a unix socket.

Only local operators reach it: the socket lives on the filesystem with mode 0660 (owner and
group, e.g. ``confide-agent`` and the site's admins), never on the network. gRPC's local
credentials (``LocalConnectionType.UDS``) refuse anything that is not a unix socket.

Health (``grpc.health.v1.Health``):

- service ``""`` (the whole daemon) is SERVING while the daemon runs: a liveness probe;
- service ``"confide.v1.Federation"`` is SERVING while the session holds an open task stream
  to the aggregator, NOT_SERVING otherwise: a readiness probe.

Manual approval (``agent.admission.approvals``): ``Jobs`` lists the requests, ``Approve``
and ``Deny`` answer one; the caller is a local operator by construction (the socket's mode).

The servicer only decodes, calls the status source and encodes (STYLE rule 1).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from agent.admission.approvals import ApprovalError, ApprovalRequest, Approvals
from confide.errors import ConfigError, Reason
from confide.v1 import agent_pb2, agent_pb2_grpc

__all__ = [
    "FEDERATION_SERVICE",
    "SOCKET_MODE",
    "AgentApi",
    "connect_api",
]

SOCKET_MODE = 0o660
FEDERATION_SERVICE = "confide.v1.Federation"
"""Health service name that reports whether the agent is connected to its aggregator."""

StatusSource = Callable[[], agent_pb2.AgentStatus]
BudgetSource = Callable[[], agent_pb2.BudgetReply]


def _no_budget() -> agent_pb2.BudgetReply:
    return agent_pb2.BudgetReply()


class _Control(agent_pb2_grpc.AgentControlServicer):  # type: ignore[misc]
    def __init__(
        self, status: StatusSource, budget: BudgetSource, approvals: Approvals | None
    ) -> None:
        self._status = status
        self._budget = budget
        self._approvals = approvals

    def Status(
        self, request: agent_pb2.StatusRequest, context: grpc.ServicerContext
    ) -> agent_pb2.AgentStatus:
        return self._status()

    def Budget(
        self, request: agent_pb2.BudgetRequest, context: grpc.ServicerContext
    ) -> agent_pb2.BudgetReply:
        return self._budget()

    def Jobs(
        self, request: agent_pb2.JobsRequest, context: grpc.ServicerContext
    ) -> agent_pb2.JobsReply:
        if self._approvals is None:
            return agent_pb2.JobsReply(mode="auto")
        reqs = self._approvals.requests(include_decided=request.include_decided)
        return agent_pb2.JobsReply(mode="manual", jobs=[_info(r) for r in reqs])

    def Approve(
        self, request: agent_pb2.ApproveRequest, context: grpc.ServicerContext
    ) -> agent_pb2.DecisionReply:
        approvals = self._manual(context)
        try:
            req = approvals.approve(request.job_id, now=time.time())
        except ApprovalError as exc:
            _abort(context, exc)
        return agent_pb2.DecisionReply(job=_info(req))

    def Deny(
        self, request: agent_pb2.DenyRequest, context: grpc.ServicerContext
    ) -> agent_pb2.DecisionReply:
        approvals = self._manual(context)
        if not request.reason.strip():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a denial needs a reason")
        try:
            req = approvals.deny(request.job_id, reason=request.reason, now=time.time())
        except ApprovalError as exc:
            _abort(context, exc)
        return agent_pb2.DecisionReply(job=_info(req))

    def _manual(self, context: grpc.ServicerContext) -> Approvals:
        if self._approvals is None:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                'this agent approves jobs automatically (policy approval = "auto")',
            )
        assert self._approvals is not None
        return self._approvals


def _abort(context: grpc.ServicerContext, exc: ApprovalError) -> NoReturn:
    code = (
        grpc.StatusCode.NOT_FOUND
        if exc.reason is Reason.UNKNOWN_JOB
        else grpc.StatusCode.FAILED_PRECONDITION
    )
    context.abort(code, exc.message)
    raise AssertionError("context.abort raises")


def _info(r: ApprovalRequest) -> agent_pb2.ApprovalRequestInfo:
    return agent_pb2.ApprovalRequestInfo(
        job_id=r.job_id,
        digest=r.digest,
        signer=r.signer,
        code_sha256=r.code_sha256,
        dataset=r.dataset,
        privacy=r.privacy,
        rounds=r.rounds,
        requested_at=r.requested_at,
        expires_at=r.expires_at,
        state=r.state.value,
        decided_at=r.decided_at,
        reason=r.reason,
    )


class AgentApi:
    """The local API server on a unix socket.

    Args:
        socket_path: where to create the socket (mode 0660).
        status: builds the current ``AgentStatus``.
        budget: builds the ``BudgetReply`` (empty until the privacy ledger provides it).
        approvals: the approval requests under manual approval; None when automatic.

    Raises:
        ConfigError: (``api.socket``) the path exists and is not a socket, another agent
            answers on it, or it cannot be bound.
    """

    def __init__(
        self,
        socket_path: Path,
        *,
        status: StatusSource,
        budget: BudgetSource = _no_budget,
        approvals: Approvals | None = None,
    ) -> None:
        self.socket_path = socket_path
        _clear_stale_socket(socket_path)
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        agent_pb2_grpc.add_AgentControlServicer_to_server(
            _Control(status, budget, approvals), self._server
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(FEDERATION_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        creds = grpc.local_server_credentials(grpc.LocalConnectionType.UDS)
        with _umask(0o117):  # the socket is born 0660: no window where others may connect
            port = self._server.add_secure_port(f"unix:{socket_path}", creds)
        if port == 0:
            raise ConfigError("api.socket", f"cannot listen on {socket_path}")

    def start(self) -> None:
        """Start serving; the socket's mode is 0660 from here on."""
        self._server.start()
        os.chmod(self.socket_path, SOCKET_MODE)

    def set_connected(self, connected: bool) -> None:
        """Report the aggregator connection through the health service."""
        self.health.set(
            FEDERATION_SERVICE,
            health_pb2.HealthCheckResponse.SERVING
            if connected
            else health_pb2.HealthCheckResponse.NOT_SERVING,
        )

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving and remove the socket."""
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait(grace + 1.0)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


def connect_api(socket_path: Path) -> grpc.Channel:
    """A channel to a local agent's API (for ``confide-agent status`` and tests)."""
    return grpc.secure_channel(
        f"unix:{socket_path}", grpc.local_channel_credentials(grpc.LocalConnectionType.UDS)
    )


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket a dead agent left behind; refuse anything else at ``path``.

    Raises:
        ConfigError: the path is not a socket, or a live agent answers on it.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(
            "api.socket", f"{path} exists and is not a socket; refusing to replace it"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: a stale socket from a killed agent
        return
    finally:
        probe.close()
    raise ConfigError("api.socket", f"another agent is already listening on {path}")
