"""The operator's command line against a real aggregator: submit, status, sites, refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from confide.v1 import admin_pb2

from .conftest import site_setup

pytestmark = pytest.mark.e2e


def _confide(fed, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "confide.cli.main", "--config", str(fed.operator_config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_submit_status_and_sites_from_the_cli(federation, bc3, tmp_path):
    """`confide job submit` signs and submits a job file; `job status` and `sites` report it."""
    federation.make_pki(["site-1", "site-2"])
    federation.start_aggregator()
    for i, n in enumerate(["site-1", "site-2"]):
        federation.start_agent(site_setup(n, bc3, i))
    federation.wait_for_sites(2)

    sites = _confide(federation, "sites", "--json")
    assert sites.returncode == 0, sites.stderr
    listed = {s["siteId"]: s for s in json.loads(sites.stdout)}
    assert set(listed) == {"site-1", "site-2"} and all(s["connected"] for s in listed.values())

    job = tmp_path / "job.toml"
    feats = ", ".join(f'"{f}"' for f in bc3.features)
    job.write_text(
        f'name = "cli-job"\nrounds = 2\nmin_sites = 2\n[model]\nkind = "logreg"\n'
        f'[dataset]\nname = "breast_cancer"\nfeatures = [{feats}]\nlabel = "target"\n'
        f"[training]\nlearning_rate = 0.2\nlocal_epochs = 2\n"
    )
    sub = _confide(federation, "job", "submit", str(job))
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip()
    final = federation.wait_job(job_id, timeout=300)
    assert final.state == admin_pb2.JOB_STATE_DONE

    st = _confide(federation, "job", "status", job_id)
    assert st.returncode == 0, st.stderr
    assert "done" in st.stdout and "final accuracy" in st.stdout
    st_json = json.loads(_confide(federation, "job", "status", job_id, "--json").stdout)
    assert st_json["state"] == "done" and len(st_json["rounds"]) == 2
    assert st_json["final_accuracy"] == pytest.approx(final.final_accuracy)


def test_cli_errors_name_the_key_and_exit_2(federation, bc3, tmp_path):
    """A job file with an invalid key is refused before submit: one line naming it, exit 2."""
    federation.make_pki([])
    federation.start_aggregator()
    job = tmp_path / "bad.toml"
    job.write_text('name = "x"\nrounds = 0\n[model]\nkind = "logreg"\n[dataset]\nname = "d"\n')
    out = _confide(federation, "job", "submit", str(job))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["confide: config key 'rounds': must be >= 1, got 0"]
    missing = _confide(federation, "job", "status", "nope")
    assert missing.returncode == 1
    assert "unknown_job" in missing.stderr
