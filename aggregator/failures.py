"""Why sites gave a round no update, recorded per site and round for the operator.

A site that refuses or fails a task reports a ``Reason`` code and one line of detail that
quotes no data (``confide.disclose``); a site that says nothing before the deadline is
recorded as such (outcome ``silent``) when the attempt fails. ``confide job status`` shows
the round's latest attempt, site by site, with the detail. A job that fails for want of
updates names in its error the sites that failed, by reason code, and the silent ones
(the round machine already names the refusing ones): the job's error carries no site's
free text, only known reasons and the aggregator's own words.

Everything here comes from peers, so it is bounded before it is stored: a reason that is no
known ``Reason`` is stored as ``denied`` (as the round machine reads it), a detail is one
cleaned line of at most ``confide.disclose.MAX_DETAIL`` characters, and there is one row
per (job, round, site).
"""

from __future__ import annotations

from collections.abc import Iterable

from aggregator import rounds as r
from aggregator.store import FailureRow, Store
from confide.disclose import one_line
from confide.errors import Reason
from confide.v1 import admin_pb2, common_pb2, federation_pb2

__all__ = [
    "MAX_PROBLEMS",
    "add_failures",
    "clean_problems",
    "failure_summary",
    "reason_code",
    "record_report",
    "record_silent",
    "unusable_summary",
    "waiting_line",
]

MAX_PROBLEMS = 32
"""Unusable datasets kept per site (a site declares a handful; a hostile one many)."""

_MAX_IN_SUMMARY = 5
"""Sites named in a failed job's error; the rest are counted."""


def reason_code(value: str) -> str:
    """A peer's reason as a known ``Reason`` value, or ``denied``."""
    try:
        return Reason(value).value
    except ValueError:
        return Reason.DENIED.value


def record_report(
    store: Store,
    job_id: str,
    rnd: int,
    *,
    attempt: int,
    site: str,
    report: federation_pb2.TaskReport,
    now: float,
) -> None:
    """Record a site's refused or failed task report (an OK report records nothing)."""
    if report.outcome == common_pb2.OUTCOME_OK:
        return
    outcome = "refused" if report.outcome == common_pb2.OUTCOME_REFUSED else "failed"
    store.record_failure(
        FailureRow(
            job=job_id,
            round=rnd,
            site=site,
            attempt=attempt,
            outcome=outcome,
            reason=reason_code(report.reason),
            detail=one_line(report.message),
            at=now,
        )
    )


def record_silent(store: Store, job_id: str, failed: r.RoundFailed, *, now: float) -> None:
    """Record every site of a failed attempt that sent neither an update nor a report."""
    reported = {
        f.site for f in store.failures(job_id, round=failed.round) if f.attempt == failed.attempt
    }
    stage = failed.phase.replace("_", " ")
    for site in failed.missing:
        if site in reported:
            continue
        if site in failed.gone:
            detail = f"its connection ended during the round (phase {stage})"
        elif failed.phase == r.RoundPhase.COLLECTING.value:
            detail = "no update before the round's deadline"
        else:
            detail = f"no {stage} message before the stage's deadline"
        store.record_failure(
            FailureRow(
                job=job_id,
                round=failed.round,
                site=site,
                attempt=failed.attempt,
                outcome="silent",
                reason=Reason.UNAVAILABLE.value,
                detail=detail,
                at=now,
            )
        )


def failure_summary(store: Store, job_id: str, rnd: int, *, attempt: int) -> str:
    """The failed (by reason code) and silent sites of a round's attempt, as one line ("" if
    none); refusals are left to the round machine's own error text."""
    rows = [f for f in store.failures(job_id, round=rnd) if f.attempt == attempt]
    parts = [
        f"{f.site} failed ({f.reason})" if f.outcome == "failed" else f"{f.site}: {f.detail}"
        for f in rows
        if f.outcome != "refused"
    ]
    if len(parts) > _MAX_IN_SUMMARY:
        parts = [*parts[:_MAX_IN_SUMMARY], f"and {len(parts) - _MAX_IN_SUMMARY} more sites"]
    return "; ".join(parts)


_OUTCOME = {"refused": common_pb2.OUTCOME_REFUSED, "failed": common_pb2.OUTCOME_FAILED}


def add_failures(
    sites: list[admin_pb2.SiteRound], failures: list[FailureRow], *, attempt: int
) -> None:
    """Merge one round's failure reasons of its latest ``attempt`` into its ``SiteRound``s.

    A site already listed (it reported) gets the detail; a silent one gets a row of its own.
    A reason from an earlier attempt of the round is left out: the site may have sent its
    update in the attempt that counted. Round 0, the final evaluation, has one attempt.
    """
    for f in failures:
        if f.round and f.attempt != attempt:
            continue
        row = next((s for s in sites if s.site_id == f.site), None)
        if row is None:
            row = admin_pb2.SiteRound(
                site_id=f.site, outcome=_OUTCOME.get(f.outcome, common_pb2.OUTCOME_FAILED)
            )
            sites.append(row)
        if row.outcome != common_pb2.OUTCOME_OK:
            row.reason, row.detail = f.reason, f.detail


def clean_problems(
    problems: Iterable[federation_pb2.DatasetProblem],
) -> tuple[federation_pb2.DatasetProblem, ...]:
    """A site's unusable-dataset reports, bounded: count, name, reason and detail."""
    out: list[federation_pb2.DatasetProblem] = []
    for p in problems:
        if len(out) == MAX_PROBLEMS:
            break
        out.append(
            federation_pb2.DatasetProblem(
                dataset=one_line(p.dataset, limit=100),
                reason=reason_code(p.reason),
                detail=one_line(p.detail),
            )
        )
    return tuple(out)


def unusable_summary(
    reports: list[tuple[str, federation_pb2.DatasetProblem]], *, details: bool = True
) -> str:
    """One line naming the sites that declared a job's dataset but found it unusable, with
    each one's detail, or (``details=False``, for a job's error) its reason code only."""
    parts = [
        f"{site} has it but reports it unusable ({p.reason}"
        + (f": {p.detail})" if details else ")")
        for site, p in reports
    ]
    if len(parts) > _MAX_IN_SUMMARY:
        parts = [*parts[:_MAX_IN_SUMMARY], f"and {len(parts) - _MAX_IN_SUMMARY} more sites"]
    return "; ".join(parts)


def waiting_line(
    state: r.RoundState, reports: list[tuple[str, federation_pb2.DatasetProblem]]
) -> str:
    """Why a running job's round has not started: eligible sites so far, and unusable reports."""
    p = state.params
    line = (
        f"round {state.round} waits for {p.min_sites} connected sites exposing dataset "
        f"{p.dataset!r}; {len(state.eligible)} so far"
    )
    if state.deadline is not None:
        line += f" (the job fails at {state.deadline:.0f} unless one connects)"
    summary = unusable_summary(reports)
    return f"{line}; {summary}" if summary else line
