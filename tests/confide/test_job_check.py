"""`confide job check`: a job file checked offline by the aggregator's own validation."""

from __future__ import annotations

import pytest

from confide.cli.main import main
from confide.jobspec import DEFAULT_JOB_RETRIES, DEFAULT_ROUND_ATTEMPTS, attempt_limits
from confide.v1 import common_pb2
from tests.confide.test_jobspec import BASE


def test_a_valid_job_passes_offline_and_states_what_a_site_pays_for(tmp_path, capsys):
    """A valid file exits 0 without an operator config or a connection, and states the most
    attempts a site pays for."""
    path = tmp_path / "job.toml"
    path.write_text(BASE)
    assert main(["--config", str(tmp_path / "absent.toml"), "job", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and f"at most {DEFAULT_ROUND_ATTEMPTS} attempts of a round" in out
    assert f"{3 + DEFAULT_JOB_RETRIES} in the job" in out


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("rounds = 3", "rounds = 3\nmax_round_attempts = 0", "max_round_attempts"),
        ("rounds = 3", "rounds = 3\nmax_job_retries = -1", "max_job_retries"),
        ('kind = "mlp"', 'kind = "gpt"', "model.kind"),
    ],
)
def test_an_invalid_job_exits_2_naming_the_key(tmp_path, capsys, old, new, key):
    """Invalid attempt limits (and any other field) exit 2 with one line naming the key."""
    path = tmp_path / "job.toml"
    path.write_text(BASE.replace(old, new, 1))
    assert main(["job", "check", str(path)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"confide: config key '{key}'")


def test_attempt_limits_default_when_absent_and_zero_retries_is_kept():
    """Absent limits take the documented defaults; an explicit 0 retries means none."""
    spec = common_pb2.JobSpec()
    assert attempt_limits(spec) == (DEFAULT_ROUND_ATTEMPTS, DEFAULT_JOB_RETRIES)
    spec.attempts.max_job_retries = 0
    spec.attempts.max_round_attempts = 1
    wire = common_pb2.JobSpec.FromString(spec.SerializeToString())
    assert attempt_limits(wire) == (1, 0)
