"""Accuracy against privacy budget: the demo federation at four record-level ε targets.

    python -m bench.dp_utility [--sites 3] [--rounds 5] [--epsilons 0.5,1,3,8] [--json]

Each point is a real federation (aggregator and agents as processes over mTLS) running the
demo's job (logistic regression on non-IID breast_cancer, DP-SGD for the target ε per site
over the whole job at δ=1e-5, update clip C=1 and noise z=0.1), plus a non-private
baseline. Prints held-out accuracy and the ε each site actually spent; with ``--json`` the
last line maps each target ε ("inf" for the baseline) to {accuracy, loss, epsilon}.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from confide_dev.demo import demo_job
from confide_dev.localfed import LocalFederation, partition_breast_cancer, partition_site


def run_point(target: float, *, sites: int, rounds: int, seed: int) -> dict[str, Any]:
    """One federation run at record-level target ε (``inf``: no privacy at all)."""
    root = Path(tempfile.mkdtemp(prefix="confide-utility-"))
    private = math.isfinite(target)
    try:
        data = partition_breast_cancer(root / "data", sites=sites, seed=seed)
        names = [f"site-{i + 1}" for i in range(sites)]
        with LocalFederation(root, federation="utility", log_level="warning") as fed:
            fed.make_pki(names)
            fed.start_aggregator()
            for i, n in enumerate(names):
                # Public data: the sites give exact hold-out figures (README "Evaluation").
                site = partition_site(data, i, n, max_epsilon=math.inf, exact_evaluation=True)
                fed.start_agent(site)
            fed.wait_for_sites(sites)
            spec = demo_job(
                sites=sites,
                rounds=rounds,
                features=data.features,
                secure=False,
                private=private,
                seed=seed,
            )
            if private:
                spec.record_privacy.target_epsilon = target
            status = fed.wait_job(fed.submit(spec), timeout=600)
        eps = max(status.epsilon_by_site.values(), default=math.inf)
        return {
            "accuracy": round(status.final_accuracy, 4),
            "loss": round(status.final_loss, 4),
            # None (JSON null) for the non-private baseline, whose ε is unbounded.
            "epsilon": round(eps, 4) if math.isfinite(eps) else None,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """Run every point and print the curve."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epsilons", default="0.5,1,3,8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    targets = [float(x) for x in a.epsilons.split(",")] + [math.inf]
    curve: dict[str, dict[str, Any]] = {}
    print(f"{'target eps':>10} {'spent eps':>10} {'accuracy':>9} {'loss':>7}")
    for t in targets:
        r = run_point(t, sites=a.sites, rounds=a.rounds, seed=a.seed)
        curve["inf" if math.isinf(t) else f"{t:g}"] = r
        spent = "inf" if r["epsilon"] is None else f"{r['epsilon']:.3f}"
        print(f"{t:>10g} {spent:>10} {r['accuracy']:>9.4f} {r['loss']:>7.4f}", flush=True)
    if a.json:
        print(json.dumps(curve))


if __name__ == "__main__":
    main()
