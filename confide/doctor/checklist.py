"""The doctor's checklist: one finding per line (ok / warn / FAIL), each failure with its fix.

``confide-agent doctor`` and ``confide-aggregator doctor`` run their checks into a list of
``Finding`` and print it with ``render``::

    ok    config         /etc/confide/agent.toml: federation 'acme', site 'hospital-a'
    FAIL  keys           /etc/confide/pki/hospital-a.key: mode 644, readable by group or others
          fix: chmod 600 /etc/confide/pki/hospital-a.key
    warn  expiry         certificate of 'hospital-a' expires in 9 days (2026-03-01)
          fix: ask the operator for a new certificate: confide pki renew hospital-a
    doctor: 1 failure, 1 warning (11 checks)

A warning is something to act on soon that does not stop the daemon today; a failure stops it
(or stops its jobs). ``exit_code`` is 1 when any check failed, else 0 (warnings included).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from confide.errors import EXIT_FAILED

__all__ = ["Finding", "Status", "exit_code", "render"]

_STATUS_WIDTH = 6
_CHECK_WIDTH = 20


class Status(enum.Enum):
    """How one check came out; the value is what the checklist prints."""

    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Finding:
    """One line of the checklist.

    Args:
        check: what was checked, short (``keys``, ``dataset heart``, ``state ledger.db``).
        status: ok, warn or FAIL.
        detail: what was found, one line.
        fix: for a warning or failure, what a site IT person or operator does about it.
    """

    check: str
    status: Status
    detail: str
    fix: str = ""

    @classmethod
    def ok(cls, check: str, detail: str) -> Finding:
        """A check that passed."""
        return cls(check, Status.OK, detail)

    @classmethod
    def warn(cls, check: str, detail: str, fix: str) -> Finding:
        """A check that passed today but needs attention soon."""
        return cls(check, Status.WARN, detail, fix)

    @classmethod
    def fail(cls, check: str, detail: str, fix: str) -> Finding:
        """A check that failed, with the fix."""
        return cls(check, Status.FAIL, detail, fix)


def render(findings: Sequence[Finding]) -> list[str]:
    """The checklist's lines: one per finding, a ``fix:`` line under each warning or failure,
    and a last summary line."""
    lines: list[str] = []
    for f in findings:
        lines.append(
            f"{f.status.value:<{_STATUS_WIDTH}}{f.check:<{_CHECK_WIDTH - 1}} {_one_line(f.detail)}"
        )
        if f.status is not Status.OK and f.fix:
            lines.append(f"{' ' * _STATUS_WIDTH}fix: {_one_line(f.fix)}")
    failed = sum(f.status is Status.FAIL for f in findings)
    warned = sum(f.status is Status.WARN for f in findings)
    if failed or warned:
        summary = f"{_plural(failed, 'failure')}, {_plural(warned, 'warning')}"
    else:
        summary = "all ok"
    lines.append(f"doctor: {summary} ({_plural(len(findings), 'check')})")
    return lines


def exit_code(findings: Sequence[Finding]) -> int:
    """1 when any check failed, else 0 (warnings do not fail the doctor)."""
    return EXIT_FAILED if any(f.status is Status.FAIL for f in findings) else 0


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
