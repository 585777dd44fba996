"""Both daemons' Prometheus endpoints, scraped over real HTTP while a real private job runs."""

from __future__ import annotations

import math

import pytest

from confide.v1 import admin_pb2
from confide_dev.demo import demo_job
from tests.support.scrape import Samples, metrics_address, scrape

from .conftest import site_setup

pytestmark = pytest.mark.e2e

A, G = "confide_aggregator", "confide_agent"
UPLOAD = "/confide.v1.Federation/Upload"
DOWNLOAD = "/confide.v1.Federation/Download"
LOCAL = {"metrics": {"listen": "127.0.0.1:0"}}
CAP = 1000.0  # finite, so what is left of it shrinks as the job spends


def test_both_endpoints_show_a_real_private_job_moving(federation, bc3):
    """During and after a real DP job over gRPC + mTLS, the aggregator's rounds, round seconds,
    bytes and jobs move, and a site's tasks, worker start, training time and ε move too."""
    federation.make_pki(["site-1"])  # one site: a worker start is most of the test's time
    federation.start_aggregator(extra=LOCAL)
    federation.start_agent(site_setup("site-1", bc3, 0, max_epsilon=CAP), extra=LOCAL)
    federation.wait_for_sites(1)
    agg = metrics_address(federation.aggregator_dir / "state")
    site_state = federation.site_dirs["site-1"] / "state"
    federation.wait_for(
        lambda: scrape(metrics_address(site_state)).get(f"{G}_connected") == 1,
        timeout=30,
        what="site-1 to report itself connected",
    )
    site = metrics_address(site_state)
    a0, s0 = scrape(agg), scrape(site)
    assert a0.get(f"{A}_connected_sites") == 1
    assert a0.get(f"{A}_rounds_total", state="done") == 0
    assert s0.get(f"{G}_epsilon_spent", dataset=bc3.name) == 0
    assert s0.get(f"{G}_epsilon_remaining", dataset=bc3.name) == CAP
    for s, ns in ((a0, A), (s0, G)):
        assert s.get(f"{ns}_certificate_expiry_seconds") > 86400
        assert s.get(f"{ns}_certificate_validity", **{f"{ns}_certificate_validity": "valid"}) == 1

    spec = demo_job(sites=1, rounds=3, features=bc3.features, secure=False, private=True, seed=0)
    job_id = federation.submit(spec)
    seen: list[Samples] = []

    def one_round_in() -> bool:
        seen.append(scrape(agg))
        return seen[-1].get(f"{A}_rounds_total", state="done") >= 1

    federation.wait_for(one_round_in, timeout=300, what="a completed round in the metrics")
    assert seen[-1].get(f"{A}_jobs", state="running") == 1  # still running: 2 rounds to go
    assert seen[-1].get(f"{A}_received_bytes_total", method=UPLOAD) > 0

    status = federation.wait_job(job_id, timeout=300)
    assert status.state == admin_pb2.JOB_STATE_DONE, status.error
    a1, s1 = scrape(agg), scrape(site)
    assert a1.get(f"{A}_jobs", state="done") == 1 and a1.get(f"{A}_jobs", state="running") == 0
    assert a1.get(f"{A}_rounds_total", state="done") == 3
    assert a1.get(f"{A}_round_seconds_count") == 3 and a1.get(f"{A}_round_seconds_sum") > 0
    assert a1.get(f"{A}_received_bytes_total", method=UPLOAD) > seen[-1].get(
        f"{A}_received_bytes_total", method=UPLOAD
    )
    assert a1.get(f"{A}_sent_bytes_total", method=DOWNLOAD) > 0
    assert a1.get(f"{A}_connected_sites") == 1

    assert s1.get(f"{G}_tasks_total", kind="train", outcome="ok", reason="") == 3
    assert s1.total(f"{G}_tasks_total", outcome="refused") == 0
    assert s1.get(f"{G}_worker_start_seconds_count") == 1
    assert s1.get(f"{G}_training_seconds_count") == 3
    spent = s1.get(f"{G}_epsilon_spent", dataset=bc3.name)
    assert 0 < spent < CAP
    assert s1.get(f"{G}_epsilon_remaining", dataset=bc3.name) == pytest.approx(CAP - spent)
    assert math.isfinite(spent) and spent == pytest.approx(status.epsilon_by_site["site-1"])
