"""One site with a valid certificate cannot stall the aggregator (a real process over mTLS).

The attack is ``bench.load``'s: the attacker holds a site certificate, opens 500 Upload
streams that never send and queues 2,000 calls of 1 MiB (Report and Heartbeat), over two
connections. During it the operator's GetJob/ListJobs and another site's heartbeat must each
answer within ``LATENCY_S``; afterwards the aggregator's RSS must fall back to within
``RSS_MARGIN_MB`` of what it was before.
"""

from __future__ import annotations

import statistics
import threading
import time

import grpc
import psutil
import pytest

from bench.load import Attack, Client, honest_calls, start_aggregator, stop_aggregator
from bench.load import submit_tiny_job as submit_job
from tests.aggregator.fakes import FEDERATION
from tests.support.wait import wait_for

LATENCY_S = 1.0
"""The longest one operator call or heartbeat may take during the attack (measured: < 50 ms)."""
RSS_MARGIN_MB = 48.0
"""How far above its pre-attack RSS the aggregator may stay once the attack is over."""
IDLE_S = 2.0

pytestmark = pytest.mark.slow


def test_one_site_cannot_stall_the_server_and_memory_comes_back(pki, tmp_path):
    """Silent streams and queued 1 MiB calls from one site leave operators, heartbeats, RSS."""
    proc, port = start_aggregator(
        pki, tmp_path, limits=f"stream_idle_s = {IDLE_S}", federation=FEDERATION
    )
    mem = psutil.Process(proc.pid)
    op = Client(pki, "alice", port, federation=FEDERATION)
    site = Client(pki, "site-1", port, federation=FEDERATION)
    attack: Attack | None = None
    try:
        job = submit_job(op, min_sites=3)
        for _ in range(5):
            honest_calls(op, site, job)  # warm: TLS sessions, caches, the first pool threads
        before_mb = mem.memory_info().rss / 2**20
        attack = Attack(
            pki,
            "site-3",
            port,
            job_id=job,
            idle_streams=500,
            queued=2000,
            connections=2,
            federation=FEDERATION,
        )
        attack.start()
        latencies: list[float] = []
        end = time.monotonic() + 3 * IDLE_S
        while time.monotonic() < end:
            latencies += honest_calls(op, site, job).values()
            time.sleep(0.2)  # pacing: an operator and a site, busy but within their rate
        assert max(latencies) < LATENCY_S, sorted(latencies)[-5:]
        assert statistics.median(latencies) < LATENCY_S / 10

        # The attacker is told it is over its own quota (not that the server is busy), and
        # its silent uploads were cut off by the idle-stream watchdog rather than held.
        told = attack.outcomes()
        assert told["RESOURCE_EXHAUSTED:peer_limit"] > 0
        assert told["CANCELLED:CANCELLED"] > 0
        assert not any(k.endswith(":server_busy") for k in told)

        attack.stop()
        attack = None
        wait_for(
            lambda: mem.memory_info().rss / 2**20,
            until=lambda after_mb: after_mb <= before_mb + RSS_MARGIN_MB,
            timeout=30,
            what=f"the aggregator's RSS (MiB) back within {RSS_MARGIN_MB:.0f} of {before_mb:.0f}",
        )
        site.heartbeat()  # and it still serves
    finally:
        if attack is not None:
            attack.stop()
        op.close()
        site.close()
        stop_aggregator(proc)


def test_an_idle_upload_is_cancelled_and_a_second_is_refused(pki, tmp_path):
    """Over its transfer limit a site is refused at once; its silent stream ends when idle."""
    limits = "stream_idle_s = 0.5\npeer_transfers = 1\ntransfers = 2"
    proc, port = start_aggregator(pki, tmp_path, limits=limits, federation=FEDERATION)
    site = Client(pki, "site-2", port, federation=FEDERATION)
    release = threading.Event()

    def silent():
        release.wait(30)
        return
        yield  # pragma: no cover

    try:
        t0 = time.monotonic()
        calls = [site.fed.Upload.future(silent(), timeout=30) for _ in range(2)]
        told = set()
        for call in calls:
            with pytest.raises(grpc.RpcError) as err:
                call.result(timeout=10)
            told.add((err.value.code(), err.value.details()))
        assert told == {
            (grpc.StatusCode.RESOURCE_EXHAUSTED, "peer_limit"),
            (grpc.StatusCode.CANCELLED, "CANCELLED"),
        }
        assert 0.4 < time.monotonic() - t0 < 5
    finally:
        release.set()
        site.close()
        stop_aggregator(proc)
