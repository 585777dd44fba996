"""The doctor's shared pieces: the checklist's format and exit code, the 14-day expiry rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from confide.doctor import EXPIRY_WARN_DAYS, Finding, Validity, exit_code, expiry, render

START = datetime(2026, 1, 1, tzinfo=UTC)
END = START + timedelta(days=365)


def test_render_prints_one_line_per_check_a_fix_under_each_problem_and_a_summary():
    """ok lines stand alone; warn and FAIL lines carry their fix on the next line."""
    lines = render(
        [
            Finding.ok("config", "agent.toml"),
            Finding.warn("expiry", "9 days left", "renew it"),
            Finding.fail("tls key", "mode 644", "chmod 600 k"),
        ]
    )
    assert lines == [
        "ok    config              agent.toml",
        "warn  expiry              9 days left",
        "      fix: renew it",
        "FAIL  tls key             mode 644",
        "      fix: chmod 600 k",
        "doctor: 1 failure, 1 warning (3 checks)",
    ]


def test_a_detail_spanning_lines_is_printed_on_one():
    """A multi-line detail (a library's message) cannot break the one-line-per-check format."""
    (line, _) = render([Finding.ok("x", "a\n  b")])
    assert line.endswith(" a b")


def test_exit_code_is_1_on_a_failure_and_0_with_only_warnings():
    """Warnings do not fail the doctor; one failure does."""
    warn = Finding.warn("disk", "4 GiB", "free some")
    assert exit_code([Finding.ok("a", "b"), warn]) == 0
    assert exit_code([warn, Finding.fail("c", "d", "e")]) == 1
    assert render([Finding.ok("a", "b")])[-1] == "doctor: all ok (1 check)"


def test_expiry_boundaries():
    """Valid until 14 days before the end, expiring within them, expired after, early before."""
    cut = END - timedelta(days=EXPIRY_WARN_DAYS)
    at = {
        START - timedelta(seconds=1): Validity.NOT_YET_VALID,
        START: Validity.VALID,
        cut: Validity.VALID,
        cut + timedelta(seconds=1): Validity.EXPIRING,
        END: Validity.EXPIRING,
        END + timedelta(seconds=1): Validity.EXPIRED,
    }
    for now, validity in at.items():
        assert expiry(not_before=START, not_after=END, now=now).validity is validity, now


@given(st.integers(min_value=-400 * 86400, max_value=800 * 86400))
def test_expiry_counts_down_to_the_end(offset_s):
    """seconds_left is exactly the time to not_after, and days_left its whole days."""
    now = START + timedelta(seconds=offset_s)
    e = expiry(not_before=START, not_after=END, now=now)
    assert e.seconds_left == (END - now).total_seconds()
    assert e.days_left == (END - now).days
