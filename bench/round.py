"""Federation overhead per round: a real aggregator and N agents as processes over mTLS.

The job's local step trains nothing (the worker returns a fixed delta of D float32
parameters) but still goes through the worker process like any job, so the figure is the
federation's own cost: serialization, transfer, worker hand-off, aggregation and state.

    python -m bench.round --sites 10 --params 1000000 --rounds 10 [--json]

Prints the median and max round seconds (as the aggregator measures a round: dispatch to
stored model), the aggregator's idle RSS (sites connected, no job) and peak RSS (VmHWM), and
one agent daemon's idle RSS. With
``--json`` the last line is a JSON object with ``median_round_seconds``,
``max_round_seconds``, ``aggregator_peak_rss_mb``, ``agent_idle_rss_mb``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from confide.v1 import common_pb2
from confide_dev.localfed import LocalFederation, SiteSetup


def _proc_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def run(sites: int, params: int, rounds: int) -> dict[str, float]:
    """Run one benchmark federation and return its figures."""
    root = Path(tempfile.mkdtemp(prefix="confide-bench-"))
    try:
        data = root / "bench.csv"
        data.write_text("x,y\n" + "".join(f"{i % 7},{i % 2}\n" for i in range(64)))
        with LocalFederation(root, federation="bench", log_level="warning") as fed:
            names = [f"site-{i + 1}" for i in range(sites)]
            fed.make_pki(names)
            fed.start_aggregator()
            for n in names:
                fed.start_agent(
                    SiteSetup(
                        n,
                        datasets={"bench": {"path": str(data), "features": ["x"], "label": "y"}},
                        # The benchmark job has no privacy: the sites accept that explicitly.
                        policy={"datasets": {"bench": {"max_epsilon": math.inf}}},
                    )
                )
            fed.wait_for_sites(sites, timeout=60.0 + 2.0 * sites)
            time.sleep(1.0)  # let the agents settle into idle before reading their RSS
            agent_idle = _proc_mb(fed.agents[names[0]].pid, "VmRSS")
            assert fed.aggregator is not None
            agg_idle = _proc_mb(fed.aggregator.pid, "VmRSS")
            spec = common_pb2.JobSpec(
                name="bench-round",
                rounds=rounds,
                min_sites=sites,
                round_timeout_s=300.0,
                model=common_pb2.ModelSpec(
                    kind=common_pb2.MODEL_KIND_FIXED_DELTA, fixed_delta_params=params
                ),
                dataset=common_pb2.DatasetSpec(
                    name="bench", features=["x"], label="y", num_classes=2
                ),
                training=common_pb2.TrainingSpec(
                    local_epochs=1,
                    batch_size=8,
                    learning_rate=0.1,
                    server_learning_rate=1.0,
                ),
            )
            t0 = time.monotonic()
            status = fed.wait_job(fed.submit(spec), timeout=600.0)
            wall = time.monotonic() - t0
            agg_peak = _proc_mb(fed.aggregator.pid, "VmHWM")
            secs = [r.seconds for r in status.rounds if r.state == "done"]
            if len(secs) != rounds:
                raise SystemExit(
                    f"job ended {status.state} after {len(secs)} rounds: {status.error}"
                )
        return {
            "sites": sites,
            "params": params,
            "rounds": rounds,
            "median_round_seconds": round(statistics.median(secs), 4),
            "max_round_seconds": round(max(secs), 4),
            "job_wall_seconds": round(wall, 3),
            "aggregator_peak_rss_mb": round(agg_peak, 1),
            "aggregator_idle_rss_mb": round(agg_idle, 1),
            "agent_idle_rss_mb": round(agent_idle, 1),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """Parse arguments, run, print figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--params", type=float, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    r = run(a.sites, int(a.params), a.rounds)
    print(f"sites={r['sites']} params={r['params']} rounds={r['rounds']}")
    print(f"median round  {r['median_round_seconds']:.3f} s   max {r['max_round_seconds']:.3f} s")
    print(f"job wall      {r['job_wall_seconds']:.2f} s")
    print(f"aggregator idle RSS {r['aggregator_idle_rss_mb']:.1f} MB (sites connected, no job)")
    print(f"aggregator peak RSS {r['aggregator_peak_rss_mb']:.1f} MB")
    print(f"agent idle RSS      {r['agent_idle_rss_mb']:.1f} MB")
    if a.json:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
