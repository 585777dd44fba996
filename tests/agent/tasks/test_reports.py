"""What a site tells the aggregator when it refuses or fails: a reason, a detail only if public."""

from __future__ import annotations

from agent.tasks.runner import TaskOutcome
from confide.disclose import MAX_DETAIL, one_line, public_detail
from confide.errors import InternalError, PolicyRefusal
from tests.agent.conftest import job_spec, report_of, signed_task
from tests.agent.fakes import FakeTransport


def test_a_schema_refusal_tells_the_aggregator_which_feature(pki, runner, aggregator):
    """A schema mismatch quotes only names from the job and the config, so its detail is sent."""
    spec = job_spec()
    spec.dataset.features[:] = ["a", "zz"]
    assert runner.run(signed_task(pki.alice, spec=spec), FakeTransport(aggregator)) is (
        TaskOutcome.REFUSED
    )
    rep = report_of(pki, aggregator.reports[0])
    assert (rep.reason, rep.message) == (
        "schema_mismatch",
        "dataset 'tabular': unknown feature 'zz' (rule datasets.tabular)",
    )


def test_a_worker_failure_sends_only_a_fixed_sentence(pki, runner, aggregator, workers):
    """A worker's own words never leave the site: the detail is a fixed sentence."""
    workers.fail_next = True
    assert runner.run(signed_task(pki.alice), FakeTransport(aggregator)) is TaskOutcome.FAILED
    rep = report_of(pki, aggregator.reports[0])
    assert rep.message == "failed at the site (worker_failed); details are in the site's log"


def test_public_detail_needs_the_public_mark_and_is_one_bounded_line():
    """Only an error marked public gives its message, cleaned to one line of bounded length."""
    secret = InternalError("row 7: 'SECRET' is not a number")
    assert public_detail(secret, fallback="failed") == "failed"
    long = PolicyRefusal("a\nb\x1b[0m " + "c" * 1000, public=True)
    line = public_detail(long, fallback="x")
    assert line.startswith("a b [0m c") and len(line) == MAX_DETAIL and line.endswith("...")
    assert one_line("  two\twords  ") == "two words"
