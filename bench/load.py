"""Load benchmark: one hostile site against a real aggregator, and what honest callers see.

    python -m bench.load [--idle-streams 500] [--queued 2000] [--connections 2] \
        [--seconds 6] [--json]

The shape of issue 9.5's attack: one valid site certificate opens ``--idle-streams`` Upload
streams that never send and queues ``--queued`` calls of 1 MiB each (half Report, half
Heartbeat, so both the short-call and the heartbeat path are flooded), spread over
``--connections`` connections. Meanwhile an operator calls GetJob and ListJobs and an honest
site heartbeats, five times a second. Prints the p50, p99 and max latency of those calls before
and during the attack, the aggregator's RSS before, at its peak and after the attack (once it
settled), and what the attacker was told, by status.

The aggregator is a real process (``python -m aggregator.main``) on 127.0.0.1 with mutual TLS,
its config written like the project's own: ``[tls].crl`` named, default limits except
``stream_idle_s`` (``--idle-s``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil

from confide import pki
from confide.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    federation_pb2,
    federation_pb2_grpc,
)
from confide.wire import seal

__all__ = ["Attack", "Client", "make_pki", "run", "start_aggregator", "stop_aggregator"]

FEDERATION = "bench"
_ROOT = Path(__file__).resolve().parents[1]
_PACE_S = 0.2


def make_pki(directory: Path, *, sites: list[str], operator: str = "alice") -> None:
    """A CA (with its CRL), the aggregator's identity, the sites' and an operator's."""
    pki.init_ca(directory, federation=FEDERATION)
    pki.issue(
        directory, "aggregator", role=pki.Role.AGGREGATOR, dns=["localhost"], ips=["127.0.0.1"]
    )
    for s in sites:
        pki.issue(directory, s, role=pki.Role.SITE)
    pki.issue(directory, operator, role=pki.Role.OPERATOR)


def start_aggregator(
    ca: Path, root: Path, *, limits: str = "", federation: str = FEDERATION
) -> tuple[subprocess.Popen[bytes], int]:
    """Run the aggregator as a process on a free loopback port; return it and the port.

    Args:
        ca: the PKI folder (``ca.crt``, ``crl.pem``, ``aggregator.*``).
        root: a scratch folder for its config and state.
        limits: lines for the config's ``[limits]`` table.
    """
    state = root / "state"
    config = root / "aggregator.toml"
    config.write_text(
        f"""federation = "{federation}"
[server]
listen = "127.0.0.1:0"
[tls]
ca = "{ca}/ca.crt"
cert = "{ca}/aggregator.crt"
key = "{ca}/aggregator.key"
signing_key = "{ca}/aggregator.sign.key"
crl = "{ca}/crl.pem"
[state]
dir = "{state}"
[log]
level = "error"
[limits]
{limits}
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "aggregator.main", "--config", str(config)],
        cwd=_ROOT,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    address = state / "address"
    deadline = time.monotonic() + 60
    while not (address.exists() and address.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_aggregator(proc)
            raise RuntimeError("the aggregator did not start")
        time.sleep(0.05)
    return proc, int(address.read_text().strip().rpartition(":")[2])


def stop_aggregator(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Client:
    """One identity's connection: stubs and envelope sealing.

    Args:
        ca: the PKI folder holding ``NAME.crt``, ``NAME.key``, ``NAME.sign.key``.
        name: the identity.
        port: the aggregator's loopback port.
        connection: a distinct value gives a connection of its own (no shared subchannel).
    """

    def __init__(
        self, ca: Path, name: str, port: int, *, connection: int = 0, federation: str = FEDERATION
    ) -> None:
        self.name, self.federation = name, federation
        self.identity = pki.load_identity(
            cert=ca / f"{name}.crt",
            key=ca / f"{name}.key",
            signing_key=ca / f"{name}.sign.key",
            ca=ca / "ca.crt",
        )
        opts = [("grpc.use_local_subchannel_pool", 1), ("confide.bench.connection", connection)]
        self.channel = grpc.secure_channel(
            f"127.0.0.1:{port}", pki.channel_credentials(self.identity), opts
        )
        self.fed = federation_pb2_grpc.FederationStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)

    def seal(self, stage: int, payload: bytes, *, job_id: str = "", round: int = 0) -> Any:
        """Sign ``payload`` as this identity for ``stage``."""
        return seal(
            signing_key=self.identity.signing_key,
            federation=self.federation,
            sender=self.name,
            stage=stage,
            payload=payload,
            now=time.time(),
            job_id=job_id,
            round=round,
        )

    def heartbeat(self) -> None:
        """One signed heartbeat."""
        hb = federation_pb2.Heartbeat(current_task="").SerializeToString()
        self.fed.Heartbeat(self.seal(common_pb2.STAGE_HEARTBEAT, hb), timeout=10)

    def close(self) -> None:
        """Close the connection."""
        self.channel.close()


def submit_tiny_job(op: Client, *, min_sites: int) -> str:
    """Submit a small logistic-regression job (so GetJob has something to read)."""
    spec = common_pb2.JobSpec(
        name="load",
        rounds=1,
        min_sites=min_sites,
        round_timeout_s=600.0,
        model=common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_LOGREG),
        dataset=common_pb2.DatasetSpec(name="tab", features=["a", "b"], label="y", num_classes=2),
        training=common_pb2.TrainingSpec(
            local_epochs=1, batch_size=8, learning_rate=0.1, server_learning_rate=1.0, seed=1
        ),
    )
    env = op.seal(common_pb2.STAGE_JOB, spec.SerializeToString())
    return str(op.admin.SubmitJob(env, timeout=30).job_id)


def honest_calls(op: Client, site: Client, job_id: str) -> dict[str, float]:
    """One GetJob and one ListJobs by the operator and one heartbeat by the site, timed."""

    def timed(fn: Callable[[], object]) -> float:
        t0 = time.monotonic()
        fn()
        return time.monotonic() - t0

    return {
        "get_job": timed(lambda: op.admin.GetJob(admin_pb2.JobRef(job_id=job_id), timeout=10)),
        "list_jobs": timed(lambda: op.admin.ListJobs(admin_pb2.ListJobsRequest(), timeout=10)),
        "heartbeat": timed(site.heartbeat),
    }


class Attack:
    """One site's flood: silent Upload streams and queued 1 MiB calls, over some connections.

    Args:
        ca: the PKI folder.
        name: the attacking site's identity (a valid site certificate).
        port: the aggregator's port.
        job_id: the job its reports name.
        idle_streams: Upload streams that never send (spread over the connections).
        queued: 1 MiB calls, half Report and half Heartbeat.
        connections: how many connections the attacker opens.
    """

    def __init__(
        self,
        ca: Path,
        name: str,
        port: int,
        *,
        job_id: str,
        idle_streams: int,
        queued: int,
        connections: int,
        federation: str = FEDERATION,
    ) -> None:
        self._release = threading.Event()
        self._clients = [
            Client(ca, name, port, connection=100 + n, federation=federation)
            for n in range(connections)
        ]
        self._futures: list[grpc.Future] = []
        self._job_id = job_id
        self._idle, self._queued = idle_streams, queued

    def start(self) -> None:
        """Open every stream and queue every call (returns at once)."""

        def silent() -> Iterator[federation_pb2.UploadPart]:
            self._release.wait(300)
            return
            yield  # a generator that never yields a message

        big = b"\x01" * (1 << 20)
        k = len(self._clients)
        for i, c in enumerate(self._clients):
            env = c.seal(common_pb2.STAGE_TASK_REPORT, big, job_id=self._job_id, round=1)
            share = range(i, self._idle, k)
            self._futures += [c.fed.Upload.future(silent(), timeout=300) for _ in share]
            for j in range(i, self._queued, k):
                call = c.fed.Report if j % 2 == 0 else c.fed.Heartbeat
                self._futures.append(call.future(env, timeout=300))

    def outcomes(self) -> Counter[str]:
        """What the attacker was told so far, by ``STATUS:details`` (``pending`` if not yet)."""
        out: Counter[str] = Counter()
        for f in self._futures:
            if not f.done():
                out["pending"] += 1
            elif f.cancelled():
                out["cancelled by the attacker"] += 1
            elif (exc := f.exception()) is None:
                out["OK"] += 1
            else:
                out[f"{exc.code().name}:{exc.details()}"] += 1  # type: ignore[attr-defined]
        return out

    def stop(self) -> None:
        """End every stream and call, and close the connections."""
        self._release.set()
        for f in self._futures:
            f.cancel()
        for c in self._clients:
            c.close()


def _percentiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(0.99 * len(xs)))]
    return {
        "p50_ms": round(1000 * statistics.median(xs), 1),
        "p99_ms": round(1000 * p99, 1),
        "max_ms": round(1000 * xs[-1], 1),
    }


def _paced(op: Client, site: Client, job_id: str, seconds: float) -> list[dict[str, float]]:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append(honest_calls(op, site, job_id))
        time.sleep(_PACE_S)  # an honest operator and site, busy but polite
    return out


def run(
    *, idle_streams: int, queued: int, connections: int, seconds: float, idle_s: float
) -> dict[str, Any]:
    """Run the benchmark once and return its figures."""
    with tempfile.TemporaryDirectory(prefix="confide-load-") as tmp:
        root = Path(tmp)
        ca = root / "pki"
        make_pki(ca, sites=["honest", "hostile"])
        proc, port = start_aggregator(ca, root, limits=f"stream_idle_s = {idle_s}")
        mem = psutil.Process(proc.pid)
        op, site = Client(ca, "alice", port), Client(ca, "honest", port)
        attack: Attack | None = None
        try:
            job = submit_tiny_job(op, min_sites=2)
            quiet = _paced(op, site, job, 2.0)
            rss_before = mem.memory_info().rss / 2**20
            attack = Attack(
                ca,
                "hostile",
                port,
                job_id=job,
                idle_streams=idle_streams,
                queued=queued,
                connections=connections,
            )
            attack.start()
            during: list[dict[str, float]] = []
            peak = rss_before
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                during += _paced(op, site, job, _PACE_S)
                peak = max(peak, mem.memory_info().rss / 2**20)
            told = attack.outcomes()
            attack.stop()
            attack = None
            settled = time.monotonic() + 30
            while (after := mem.memory_info().rss / 2**20) > rss_before + 16:
                if time.monotonic() > settled:
                    break
                time.sleep(0.5)
        finally:
            if attack is not None:
                attack.stop()
            op.close()
            site.close()
            stop_aggregator(proc)
    figures: dict[str, Any] = {
        "idle_streams": idle_streams,
        "queued_calls": queued,
        "connections": connections,
        "rss_before_mb": round(rss_before, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_after_mb": round(after, 1),
        "attacker_told": dict(told),
    }
    for kind in ("get_job", "list_jobs", "heartbeat"):
        figures[f"{kind}_quiet"] = _percentiles([c[kind] for c in quiet])
        figures[f"{kind}_attack"] = _percentiles([c[kind] for c in during])
    return figures


def main() -> None:
    """Parse arguments, run, print figures."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--idle-streams", type=int, default=500)
    ap.add_argument("--queued", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--idle-s", type=float, default=2.0, help="limits.stream_idle_s")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    r = run(
        idle_streams=a.idle_streams,
        queued=a.queued,
        connections=a.connections,
        seconds=a.seconds,
        idle_s=a.idle_s,
    )
    print(
        f"attack: {r['idle_streams']} silent uploads + {r['queued_calls']} queued 1 MiB calls "
        f"from one site over {r['connections']} connections"
    )
    for kind in ("get_job", "list_jobs", "heartbeat"):
        q, d = r[f"{kind}_quiet"], r[f"{kind}_attack"]
        print(
            f"{kind:10s} quiet p50 {q['p50_ms']:6.1f} ms  p99 {q['p99_ms']:6.1f}  "
            f"| attack p50 {d['p50_ms']:6.1f} ms  p99 {d['p99_ms']:6.1f}  max {d['max_ms']:6.1f}"
        )
    print(
        f"aggregator RSS before {r['rss_before_mb']:.1f} MB, peak {r['rss_peak_mb']:.1f} MB, "
        f"after {r['rss_after_mb']:.1f} MB"
    )
    print("attacker told: " + ", ".join(f"{k} x{v}" for k, v in r["attacker_told"].items()))
    if a.json:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
