"""Domain type aliases shared across Confide."""

from __future__ import annotations

from typing import NewType

__all__ = ["JobId", "RoundNo", "SiteId", "TaskId"]

SiteId = NewType("SiteId", str)
"""A site's identity: the common name of its federation certificate."""

JobId = NewType("JobId", str)
"""A job's identifier, assigned by the aggregator at submit."""

RoundNo = NewType("RoundNo", int)
"""A round number within a job, counted from 1."""

TaskId = NewType("TaskId", str)
"""One task sent to one site (train, evaluate, a secure-aggregation stage)."""
