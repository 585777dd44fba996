"""``confide-agent audit show|verify``: the site's audit trail for a privacy officer.

Reads the log file directly (not over the daemon's API), so it works while the daemon is
stopped and does not take the daemon's word for what the file holds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from agent.local.audit import SiteAudit, SiteEntry
from confide.audit_chain import AuditTampered
from confide.errors import InternalError
from confide.exits import fail

__all__ = ["audit_command", "format_entry"]

_PROG = "confide-agent"


def audit_command(path: Path, action: str) -> int:
    """Run ``audit show`` or ``audit verify`` on the log at ``path``.

    Returns:
        0 when the chain verifies (``show`` prints every entry first); 1 when the log is
        missing, unreadable or tampered with (one line on stderr naming the first bad entry).
    """
    try:
        audit = SiteAudit.read_only(path)
    except InternalError as exc:
        return fail(exc, prog=_PROG)
    try:
        if action == "show":
            for entry in audit.entries():
                print(format_entry(entry))
        n = audit.verify()
        head = audit.head()
    except (AuditTampered, InternalError) as exc:
        return fail(InternalError(f"audit log {path}: {exc}", reason=exc.reason), prog=_PROG)
    finally:
        audit.close()
    # The head hash is the officer's anchor: a plain chain cannot show that its newest
    # entries were cut off or re-chained by someone with write access to the file, but a
    # head noted earlier (or copied off the host) that is no longer in the log shows it.
    print(f"audit log {path}: {n} entries, hash chain intact, head {head}")
    return 0


def format_entry(e: SiteEntry) -> str:
    """One line per entry: when, what, and the facts that are set."""
    when = datetime.fromtimestamp(e.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    parts = [f"{e.seq:>6} {when} {e.event}"]
    for name, value in (
        ("job", e.job),
        ("round", e.round),
        ("task", e.task),
        ("kind", e.kind.removeprefix("TASK_KIND_")),
        ("decision", e.decision),
        ("outcome", e.outcome),
        ("reason", e.reason),
        ("rule", e.rule),
        ("signer", e.signer),
        ("code", e.code_sha256),
        ("model", e.model_hash),
        ("dataset", e.dataset),
    ):
        if value:
            parts.append(f"{name}={value}")
    if e.event == "task_ended":
        parts.append(f"epsilon={e.epsilon:.4g} job_epsilon={e.job_epsilon:.4g}")
        parts.append(f"took={e.ended - e.started:.1f}s")
    if e.detail:
        parts.append(f"detail={e.detail!r}")
    return " ".join(parts)
