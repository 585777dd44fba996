"""python -m bench.privacy_audit at its quick size: both job kinds, within their accounting."""

from __future__ import annotations

import json

import bench.privacy_audit as pa
from confide.dp.budget import cumulative_epsilon

KINDS = ("dpsgd", "update_noise", "dpsgd_low_noise", "update_noise_low_noise")


def test_quick_audit_reports_both_job_kinds_within_their_accounted_epsilon(capsys):
    """The JSON line has both ε for each job kind, none empirical above accounted, and the
    low-noise jobs show leakage (the audit is not vacuous)."""
    assert pa.main(["--quick", "--json"]) == 0
    out = capsys.readouterr()
    row = json.loads(out.out.strip().splitlines()[-1])
    assert set(KINDS) <= set(row)
    for kind in KINDS:
        assert {"accounted_epsilon", "empirical_epsilon"} <= set(row[kind])
        assert 0.0 <= row[kind]["empirical_epsilon"] <= row[kind]["accounted_epsilon"]
    assert row["dpsgd_low_noise"]["empirical_epsilon"] > 1.0
    assert row["update_noise_low_noise"]["empirical_epsilon"] > 1.0
    assert "BUG" not in out.err


def test_an_accountant_that_undercharges_is_reported_as_a_bug(capsys, monkeypatch):
    """If the ledger charged a thousandth of the true ε, the audit catches it and exits 1."""

    def undercharging(costs, *, delta):
        return tuple(e / 1000 for e in cumulative_epsilon(costs, delta=delta))

    monkeypatch.setattr("bench.privacy_audit.cumulative_epsilon", undercharging)
    assert pa.main(["--quick"]) == 1
    err = capsys.readouterr().err
    assert "BUG: dpsgd_low_noise" in err
    assert "BUG: update_noise_low_noise" in err
