"""A site's broken dataset and a refused job reach the operator, with reasons, across processes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from confide.v1 import admin_pb2
from confide_dev.localfed import SiteSetup

from .conftest import site_setup

pytestmark = pytest.mark.e2e


def _confide(fed, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "confide.cli.main", "--config", str(fed.operator_config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _drop_column(src, dst, column: str) -> None:
    with src.open() as fh:
        rows = list(csv.DictReader(fh))
    keep = [k for k in rows[0] if k != column]
    with dst.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keep, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def test_a_broken_dataset_is_reported_by_the_site_and_names_itself_in_the_failed_job(
    federation, bc3, tmp_path
):
    """The agent starts on its good dataset, reports the broken one, and the job says why."""
    federation.make_pki(["site-1", "site-2"])
    federation.start_aggregator()
    federation.start_agent(site_setup("site-1", bc3, 0))
    missing = bc3.features[3]
    broken = tmp_path / "broken.csv"
    _drop_column(bc3.paths[1], broken, missing)
    good = {"path": str(bc3.paths[2]), "features": bc3.features, "label": "target"}
    bad = {"path": str(broken), "features": bc3.features, "label": "target"}
    federation.start_agent(SiteSetup(name="site-2", datasets={"other": good, "registry": bad}))
    federation.wait_for_sites(2)

    sites = _confide(federation, "sites", "--json")
    assert sites.returncode == 0, sites.stderr
    by_name = {s["siteId"]: s for s in json.loads(sites.stdout)}
    assert by_name["site-2"]["datasets"] == ["other"]
    [problem] = by_name["site-2"]["unusable"]
    detail = f"dataset 'registry': column '{missing}' is missing from the file"
    assert problem == {"dataset": "registry", "reason": "schema_mismatch", "detail": detail}
    assert "unusable dataset registry: (schema_mismatch)" in _confide(federation, "sites").stdout

    agent_cfg = federation.site_dirs["site-2"] / "agent.toml"
    local = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--config", str(agent_cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert local.returncode == 0, local.stderr
    assert f"unusable:    registry (schema_mismatch) {detail}" in local.stdout

    job = tmp_path / "job.toml"
    feats = ", ".join(f'"{f}"' for f in bc3.features)
    job.write_text(
        f'name = "on-broken"\nrounds = 1\nmin_sites = 1\nround_timeout_s = 2\n'
        f'[model]\nkind = "logreg"\n[dataset]\nname = "registry"\nfeatures = [{feats}]\n'
        f'label = "target"\n'
    )
    sub = _confide(federation, "job", "submit", str(job))
    assert sub.returncode == 0, sub.stderr
    final = federation.wait_job(sub.stdout.strip(), timeout=60)
    assert final.state == admin_pb2.JOB_STATE_FAILED
    # The job's error carries reason codes only; the site's words are in `confide sites`.
    assert final.error == (
        "no connected site exposes dataset 'registry' (waited 2 s for one); site-2 has it but "
        "reports it unusable (schema_mismatch)"
    )


def test_a_submit_the_federation_refuses_prints_the_key_and_the_rule(federation, bc3, tmp_path):
    """Secure aggregation with two sites is refused with one line naming min_sites and why."""
    federation.make_pki([])
    federation.start_aggregator()
    job = tmp_path / "job.toml"
    job.write_text(
        'name = "two"\nrounds = 1\nmin_sites = 2\n[model]\nkind = "logreg"\n'
        '[dataset]\nname = "d"\nfeatures = ["a"]\nlabel = "y"\n'
        "[secure_aggregation]\nenabled = true\n"
    )
    out = _confide(federation, "job", "submit", str(job))
    assert out.returncode in (1, 2)
    [line] = out.stderr.strip().splitlines()
    assert "config key 'min_sites'" in line and "at least 3 sites" in line
    assert "reveals" in line
