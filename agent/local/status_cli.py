"""``confide-agent status | budget``: ask the running daemon how it is and what it has spent.

Each command is one call to the daemon's local API (``agent.local.api``) over its unix socket;
a daemon that does not answer is one line on stderr and exit 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from agent.local.api import connect_api
from confide.v1 import agent_pb2, agent_pb2_grpc

__all__ = ["budget_command", "status_command"]

_PROG = "confide-agent"
_API_TIMEOUT_S = 5.0


def status_command(socket: Path) -> int:
    """Print the daemon's status (site, connection, datasets, device, resources); 1 if down."""
    st = _ask_daemon(socket, "Status", agent_pb2.StatusRequest())
    if st is None:
        return 1
    r = st.resources
    print(f"site:        {st.site_id or '(not registered yet)'}")
    print(f"aggregator:  {st.aggregator} ({'connected' if st.connected else 'disconnected'})")
    print(f"task:        {st.current_task or 'idle'}")
    print(f"datasets:    {', '.join(st.datasets) or '(none)'}")
    for p in st.unusable:
        print(f"unusable:    {p.dataset} ({p.reason}) {p.detail}")
    if st.runtime_problem:
        print(f"runtime:     {st.runtime_problem}")
    print(f"device:      {st.device}   gpus: {', '.join(r.gpus) or 'none'}")
    print(f"isolation:   {st.isolation}")
    print(f"tasks:       {st.tasks_done} done, {st.tasks_failed} failed or refused")
    print(
        f"resources:   cpu {r.cpu_percent:.1f}%  rss {r.rss_bytes / 2**20:.1f} MiB  "
        f"mem {r.memory_percent:.1f}%"
    )
    print(f"uptime:      {st.uptime_s:.0f} s")
    return 0


def budget_command(socket: Path) -> int:
    """Print one privacy-budget line per dataset; 1 if the daemon does not answer."""
    reply = _ask_daemon(socket, "Budget", agent_pb2.BudgetRequest())
    if reply is None:
        return 1
    if not reply.datasets:
        print("no privacy budget recorded yet")
    for d in reply.datasets:
        print(
            f"{d.dataset}: spent {d.spent_epsilon:.4g} of {d.max_epsilon:.4g} "
            f"(remaining {d.remaining_epsilon:.4g}, delta {d.delta:.2g}), "
            f"update epsilon {d.spent_update_epsilon:.4g}, {d.rounds} rounds"
        )
    return 0


def _ask_daemon(socket: Path, method: str, request: Message) -> Any:
    """Call one AgentControl method over the unix socket; None (and a message) if unreachable."""
    try:
        with connect_api(socket) as channel:
            stub = agent_pb2_grpc.AgentControlStub(channel)
            return getattr(stub, method)(request, timeout=_API_TIMEOUT_S)
    except grpc.RpcError as exc:
        print(
            f"{_PROG}: the agent is not reachable at {socket} "
            f"({exc.code().name}); is the daemon running?",
            file=sys.stderr,
        )
        return None
