"""`confide job status` shows each round's failing sites with their reason and detail."""

from __future__ import annotations

from confide.cli.jobs import format_job, job_summary
from confide.v1 import admin_pb2, common_pb2


def _status() -> admin_pb2.JobStatus:
    st = admin_pb2.JobStatus(job_id="j1", state=admin_pb2.JOB_STATE_FAILED, error="round 1 ...")
    st.spec.name = "heart"
    rnd = st.rounds.add(round=1, state="failed")
    rnd.sites.add(site_id="a", outcome=common_pb2.OUTCOME_OK)
    rnd.sites.add(
        site_id="b",
        outcome=common_pb2.OUTCOME_REFUSED,
        reason="schema_mismatch",
        detail="dataset 'heart': column 'age' is missing from the file",
    )
    return st


def test_failures_are_listed_under_their_round():
    """The text form names the refusing site, its outcome, reason and detail."""
    text = format_job(_status())
    assert (
        "      b: schema_mismatch (refused) dataset 'heart': column 'age' is missing from the file"
        in text.splitlines()
    )
    assert "a: " not in text


def test_failures_are_in_the_json_summary():
    """The JSON form lists only the sites that gave no update, with reason and detail."""
    [rnd] = job_summary(_status())["rounds"]
    assert rnd["failures"] == [
        {
            "site": "b",
            "outcome": "refused",
            "reason": "schema_mismatch",
            "detail": "dataset 'heart': column 'age' is missing from the file",
        }
    ]
