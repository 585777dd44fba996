# ruff: noqa: RUF002
"""Distributed discrete Gaussian benchmark: what the default secure-job mechanism costs.

Run: ``python -m bench.ddg [--dim 1000000] [--sites 10] [--min-sites 10] [--z 1.0] [--json]``.
Real code: ``confide.dp.discrete``, ``confide.secagg.encoding``, the site ledger's accounting.

Figures:
- sampler_seconds: ``discrete_gaussian`` drawing d' values at the job's σ on the grid (one
  thread, OS randomness), and sampler_draws_per_second;
- encode_seconds: one site's whole encoding of a d-vector (clip, scale, rotate, conditional
  rounding, discrete noise, mod 2^32); rounding_tries; decode_seconds: the aggregator's lift,
  scale and inverse rotation of the sum;
- eps_discrete / eps_continuous: one round's site-level ε at δ = 1e-5 for t = the SecAgg+
  threshold of ``--min-sites`` survivors, by Proposition 14 on the job's grid and by the
  Gaussian with σ_eff = z·√(t/m); eps_overhead is their ratio − 1 (the privacy price of
  discreteness, rounding inflation and τ);
- noise_kept_discrete: std of the decoded sum of ``--sites`` zero updates over the planned
  z·C·√(n/m) (1 means all the noise survives); noise_kept_clipped_r{1,2}: the same for the
  continuous shares clipped to [−r, r] (r = C and 2C) before the sum, as the fixed-point path
  did for the coordinates of a clipped update at ±C/√d (1 − this is the noise the clip cut).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from confide.dp.budget import discrete_update_cost, round_cost, update_cost
from confide.dp.discrete import discrete_gaussian
from confide.jobspec import normalize
from confide.secagg.encoding import decode, encode, secure_encoding
from confide.secagg.params import job_params
from confide.secagg.rotation import rotation_seed
from confide.v1 import common_pb2


def _spec(*, dim: int, min_sites: int, z: float) -> common_pb2.JobSpec:
    """The benchmark's secure job, normalized as the aggregator and the sites run it."""
    return normalize(
        common_pb2.JobSpec(
            name="bench-ddg",
            rounds=1,
            min_sites=min_sites,
            round_timeout_s=60.0,
            model=common_pb2.ModelSpec(
                kind=common_pb2.MODEL_KIND_FIXED_DELTA, fixed_delta_params=dim
            ),
            dataset=common_pb2.DatasetSpec(name="bench", features=["a"], label="y", num_classes=2),
            training=common_pb2.TrainingSpec(
                local_epochs=1, batch_size=8, learning_rate=0.1, server_learning_rate=1.0
            ),
            update_privacy=common_pb2.UpdatePrivacy(clip_norm=1.0, noise_multiplier=z, delta=1e-5),
            secure_aggregation=common_pb2.SecureAggregation(enabled=True, threshold=0.66, bits=16),
        )
    )


def _clipped_noise_kept(*, sites: int, min_sites: int, z: float, r: float, dim: int) -> float:
    """Std kept of the summed continuous shares when each site's coordinate, at C/√d plus its
    share, is clipped to [−r, r] before the sum (relative to the planned std)."""
    rng = np.random.default_rng(0)
    s = z / math.sqrt(min_sites)
    x = 1.0 / math.sqrt(dim)
    shares = rng.normal(0.0, s, size=(sites, min(dim, 200_000)))
    summed = np.clip(x + shares, -r, r).sum(axis=0) - sites * x
    return float(np.std(summed) / (s * math.sqrt(sites)))


def run(*, dim: int, sites: int, min_sites: int, z: float) -> dict[str, object]:
    """Run the benchmark and return the figures."""
    spec = _spec(dim=dim, min_sites=min_sites, z=z)
    enc = secure_encoding(spec)
    p = enc.ddg
    assert p is not None
    seed = rotation_seed(federation="bench", attempt="job/1/1")

    start = time.perf_counter()
    discrete_gaussian(sigma=p.sigma, size=p.dim)
    sampler = time.perf_counter() - start

    rng = np.random.default_rng(1)
    update = rng.normal(size=dim)
    start = time.perf_counter()
    one = encode(update, enc, seed=seed)
    encode_s = time.perf_counter() - start
    total = np.zeros(enc.length, dtype=np.uint32)
    total += one.values
    start = time.perf_counter()
    decode(total, enc, n=1, seed=seed)
    decode_s = time.perf_counter() - start

    total = np.zeros(enc.length, dtype=np.uint32)
    for _ in range(sites):
        total += encode(np.zeros(dim), enc, seed=seed).values
    kept = float(np.std(decode(total, enc, n=sites, seed=seed))) / (
        z * math.sqrt(sites / min_sites)
    )

    t = max(1, min(min_sites, job_params(spec, n=min_sites).threshold))
    disc = round_cost(record=None, update=discrete_update_cost(p, summands=t), delta=1e-5)
    gauss = update_cost(noise_multiplier=z, sites_survived=t, min_sites=min_sites, distributed=True)
    cont = round_cost(record=None, update=gauss, delta=1e-5).update_epsilon
    return {
        "dim": dim,
        "padded_dim": p.dim,
        "granularity": p.granularity,
        "sigma_grid": p.sigma,
        "sampler_seconds": sampler,
        "sampler_draws_per_second": p.dim / sampler,
        "encode_seconds": encode_s,
        "rounding_tries": one.rounding_tries,
        "decode_seconds": decode_s,
        "threshold_t": t,
        "eps_discrete": disc.update_epsilon,
        "eps_continuous": cont,
        "eps_overhead": disc.update_epsilon / cont - 1.0,
        "noise_kept_discrete": kept,
        "noise_kept_clipped_r1": _clipped_noise_kept(
            sites=sites, min_sites=min_sites, z=z, r=1.0, dim=dim
        ),
        "noise_kept_clipped_r2": _clipped_noise_kept(
            sites=sites, min_sites=min_sites, z=z, r=2.0, dim=dim
        ),
    }


def main() -> None:
    """Parse the command line, run, print the figures (last line JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1_000_000)
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--min-sites", type=int, default=10)
    ap.add_argument("--z", type=float, default=1.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    figures = run(dim=args.dim, sites=args.sites, min_sites=args.min_sites, z=args.z)
    for key, value in figures.items():
        print(f"{key:>24}: {value:.6g}" if isinstance(value, float) else f"{key:>24}: {value}")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
