"""Domain type aliases shared across Confide.

Ids arrive as protobuf strings and numbers; the code that decodes a message names them once
(``JobId(task.job_id)``) where they enter an API that takes several of them side by side, so
mypy refuses a task id passed as a job id. They are used where ids used to be joined into one
string or told apart by position: the site's privacy charge and ledger (``agent.privacy``),
the signed job's limits (``agent.admission.limits``) and the aggregator's task ids
(``aggregator.round_checks.task_id``). An alias is kept here only while code uses it.
"""

from __future__ import annotations

from typing import NewType

__all__ = ["JobId", "RoundNo", "TaskId"]

JobId = NewType("JobId", str)
"""A job's identifier, assigned by the aggregator at submit."""

RoundNo = NewType("RoundNo", int)
"""A round number within a job, counted from 1."""

TaskId = NewType("TaskId", str)
"""One task sent to sites (train, evaluate, a secure-aggregation stage): unique per job, round,
attempt and kind, compared and stored by sites, never parsed."""
