"""``confide-agent jobs | approve JOB | deny JOB --reason``: manual approval from a shell.

Each command is one call to the running daemon's local API (``agent.local.api``); the daemon owns
the requests, so an answer takes effect at the job's next task.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from agent.local.api import connect_api
from confide.v1 import agent_pb2, agent_pb2_grpc

__all__ = ["approve_command", "deny_command", "jobs_command"]

_PROG = "confide-agent"
_TIMEOUT_S = 5.0


def jobs_command(socket: Path, *, include_decided: bool) -> int:
    """Print the jobs waiting for approval (and answered ones with ``include_decided``)."""
    reply = _call(socket, "Jobs", agent_pb2.JobsRequest(include_decided=include_decided))
    if reply is None:
        return 1
    if reply.mode != "manual":
        print("approval mode is auto: jobs that pass the policy run without approval")
        return 0
    if not reply.jobs:
        print("no jobs waiting for approval")
    for j in reply.jobs:
        print(
            f"{j.job_id}  [{j.state}]  signer {j.signer}  code {j.code_sha256}  "
            f"dataset {j.dataset}  rounds {j.rounds}  privacy: {j.privacy}  "
            f"requested {_when(j.requested_at)}  expires {_when(j.expires_at)}"
            + (f"  reason: {j.reason}" if j.reason else "")
        )
    return 0


def approve_command(socket: Path, job_id: str) -> int:
    """Approve ``job_id``; exit 1 (one line on stderr) when the daemon refuses."""
    reply = _call(socket, "Approve", agent_pb2.ApproveRequest(job_id=job_id))
    if reply is None:
        return 1
    print(f"approved job {reply.job.job_id} (signed job {reply.job.digest[:16]}...)")
    return 0


def deny_command(socket: Path, job_id: str, *, reason: str) -> int:
    """Deny ``job_id`` with ``reason``; exit 1 (one line on stderr) when the daemon refuses."""
    reply = _call(socket, "Deny", agent_pb2.DenyRequest(job_id=job_id, reason=reason))
    if reply is None:
        return 1
    print(f"denied job {reply.job.job_id}: {reply.job.reason}")
    return 0


def _call(socket: Path, method: str, request: Message) -> Any:
    try:
        with connect_api(socket) as channel:
            stub = agent_pb2_grpc.AgentControlStub(channel)
            return getattr(stub, method)(request, timeout=_TIMEOUT_S)
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            print(
                f"{_PROG}: the agent is not reachable at {socket} ({exc.code().name}); "
                "is the daemon running?",
                file=sys.stderr,
            )
        else:
            print(f"{_PROG}: {exc.details()}", file=sys.stderr)
        return None


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
