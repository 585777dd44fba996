# Math notation (σ, ε, δ, q) in docstrings cites the formulas as written in confide.dp.
# ruff: noqa: RUF002, RUF003
"""Is the privacy guarantee real? A one-run audit of a DP-SGD job and an update-noise job.

    python -m bench.privacy_audit [--quick] [--canaries M] [--sites M] [--rounds T]
        [--sigma S] [--z Z] [--mode fused|hooks|...] [--seed N] [--json]

Method: Steinke, Nasr, Jagielski 2023, "Privacy Auditing with One (1) Training Run" (the
bound is ``bench.audit_bound``). m canaries are each put into the input with probability
1/2; the job runs once through Confide's own mechanisms; the auditor scores every canary on
what the job releases, guesses the top scores in and the bottom ones out, and turns the number
of correct guesses into an ε that holds with 95% confidence. That empirical ε is printed
beside the ε the daemon's ledger charges for the same job, at the same δ. An empirical ε above
the accounted one means the accounting or the mechanism is wrong: the benchmark says so on
stderr and exits 1. It is a bug to report, not a figure to tune.

The two jobs, each audited against the adjacency its accountant claims:

- ``dpsgd`` (record level): one site's breast_cancer training set (scikit-learn's bundled
  copy) plus the canaries, trained by the worker's DP-SGD
  (``confide_worker.training.dpsgd.DpTrainer``,
  by default in the worker's fused mode; ``--mode hooks`` audits the Opacus path) with the q,
  σ and steps the daemon plans (``agent.privacy.plan.PrivacyPlan.plan``), for several rounds; the
  auditor sees the released model. Canary i is a record whose only non-zero feature is its
  own extra column, with value ``CANARY_VALUE`` and label 1 (a "Dirac" canary: no real record
  and no other canary touches that column's weights, so they move only by canary i's clipped
  gradient and by noise). Score: how far the logit weights of that column moved towards label
  1 over the job. The accounted ε is the ledger's record-level ε for the job's rounds
  (``confide.dp.budget.cumulative_epsilon`` of the planned round costs).
- ``update_noise`` (site level): m canary sites in every secure-aggregation round, each
  daemon protecting its update with the daemon's own functions
  (``agent.privacy.plan.protect_update``
  clips to C; ``confide.secagg.encoding.encode`` applies the job's mechanism, by default the
  distributed discrete Gaussian: rotation, conditional rounding, its share of the discrete
  noise), for several rounds; the auditor sees each round's decoded sum (what the aggregator
  unmasks and decodes; the masks cancel). Canary site i's worker returns 2C along coordinate
  i when it is in and a zero update when it is out; the two differ by one site's clipped
  update, of norm C, the sensitivity the accountant assumes. Score: coordinate i of the
  summed releases. The job uses threshold 0.9 on the complete graph (the highest SecAgg+
  accepts: a threshold of 1.0 would abort a round at any dropout), so each site plans its
  noise share for the 90% of sites the protocol may leave in the sum; with all m sites
  summed the noise is 1/0.9 of what the accountant counts on, which only makes the audit
  more conservative. The accounted ε is the ledger's site-level ε.

Each job also runs at very low noise (``*_low_noise``; the daemon refuses σ = 0 for DP-SGD):
there the accounted ε is in the hundreds and the audit must find a clearly positive ε, which
shows it can see leakage at all. A one-run audit is a lower bound and is loose by design (a few
thousand canaries cannot prove much more than ε ≈ 6 even with every guess right), so a gap
below the accounted ε is expected; only the reverse is a finding. With ``--json`` the last line
maps each of the four jobs to {accounted_epsilon, empirical_epsilon, ...}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from agent.privacy.ledger import Ledger
from agent.privacy.plan import PrivacyPlan, RoundPrivacy, protect_update
from bench.audit_bound import AuditOutcome, audit
from confide.dp.budget import cumulative_epsilon
from confide.jobspec import normalize
from confide.secagg.encoding import _encode_from_parts, decode, secure_encoding
from confide.secagg.rotation import rotation_seed
from confide.v1 import common_pb2
from confide_dev.localfed.data import breast_cancer_arrays
from confide_worker.training.dpsgd import DEFAULT_MODES, DpTrainer, GradSampleMode
from confide_worker.training.models import build_model

__all__ = [
    "FULL",
    "QUICK",
    "JobAudit",
    "Settings",
    "audit_dpsgd",
    "audit_update_noise",
    "main",
    "run_all",
]

CANARY_VALUE = 10.0
"""The canary record's one non-zero feature. Its per-record gradient is then mostly along its
own column, so clipping to C leaves almost all of C there."""

DELTA = 1e-5


@dataclass(frozen=True)
class JobAudit:
    """One audited job: its noise, the accountant's ε and the audit's.

    Args:
        kind: the job kind (``dpsgd``, ``update_noise``, or either with ``_low_noise``).
        noise_multiplier: σ for DP-SGD, z for update noise.
        accounted_epsilon: the ε the ledger charges for the whole job at ``delta``.
        delta: δ of both figures.
        outcome: the audit's result (empirical ε, guesses, correct guesses).
        seconds: wall time of the job and the audit.
    """

    kind: str
    noise_multiplier: float
    accounted_epsilon: float
    delta: float
    outcome: AuditOutcome
    seconds: float

    def as_json(self) -> dict[str, Any]:
        """The JSON row: both ε, and what the audit counted."""
        acc = self.accounted_epsilon
        return {
            # Rounded outwards (accounted up, empirical down) so rounding cannot make the
            # figures cross; null (JSON has no infinity) only if the accountant says ε = ∞.
            "accounted_epsilon": math.ceil(acc * 1e4) / 1e4 if math.isfinite(acc) else None,
            "empirical_epsilon": math.floor(self.outcome.epsilon * 1e4) / 1e4,
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
            "canaries": self.outcome.canaries,
            "guesses": self.outcome.guesses,
            "correct": self.outcome.correct,
            "confidence": self.outcome.confidence,
        }

    @property
    def violated(self) -> bool:
        """Whether the audit found more leakage than the accountant charged (a bug)."""
        return self.outcome.epsilon > self.accounted_epsilon


def _plan(spec: common_pb2.JobSpec, *, job_id: str, num_train: int) -> RoundPrivacy:
    """The daemon's plan for one round of ``spec`` (σ, q, steps, update noise, cost)."""
    with (
        tempfile.TemporaryDirectory(prefix="confide-audit-") as tmp,
        Ledger.open(Path(tmp) / "ledger.sqlite", delta=DELTA) as ledger,
    ):
        return PrivacyPlan(ledger).plan(
            spec, job_id=job_id, num_train=num_train, min_update_noise=0.0
        )


def _dpsgd_spec(
    *, features: list[str], rounds: int, epochs: int, batch_size: int, lr: float, sigma: float
) -> common_pb2.JobSpec:
    spec = common_pb2.JobSpec(name="audit-dpsgd", rounds=rounds, min_sites=1)
    spec.model.kind = common_pb2.MODEL_KIND_LOGREG
    spec.dataset.name = "breast_cancer_canaries"
    spec.dataset.features.extend(features)
    spec.dataset.label = "target"
    spec.dataset.num_classes = 2
    spec.training.local_epochs = epochs
    spec.training.batch_size = batch_size
    spec.training.learning_rate = lr
    rp = spec.record_privacy
    rp.enabled = True
    rp.noise_multiplier = sigma
    rp.max_grad_norm = 1.0
    rp.delta = DELTA
    return normalize(spec)  # as the site runs it (agent.admission.signed_job)


def audit_dpsgd(
    *,
    canaries: int,
    noise_multiplier: float,
    rounds: int,
    epochs: int,
    batch_size: int,
    lr: float,
    confidence: float,
    rng: np.random.Generator,
    kind: str = "dpsgd",
    mode: GradSampleMode | None = None,
) -> JobAudit:
    """Audit a DP-SGD job on breast_cancer with ``canaries`` Dirac canaries (module docstring).

    Args:
        canaries: m >= 2.
        noise_multiplier: σ of DP-SGD.
        rounds: rounds of the job (the site's model after each is released).
        epochs: local epochs per round (the daemon turns them into Poisson steps).
        batch_size: expected batch; the daemon's q is batch_size / n.
        lr: the job's SGD learning rate.
        confidence: of the empirical bound.
        rng: the auditor's coin flips and the seeds of the worker's generators.
        kind: the row's name.
        mode: the per-sample-gradient mode; None for the worker's default for the model.
    """
    start = time.perf_counter()
    x_real, y_real, names = breast_cancer_arrays()
    n_real, f_real = x_real.shape
    included = rng.random(canaries) < 0.5
    members = np.flatnonzero(included)
    x = np.zeros((n_real + members.size, f_real + canaries), dtype=np.float32)
    x[:n_real, :f_real] = x_real
    x[n_real + np.arange(members.size), f_real + members] = CANARY_VALUE
    y = np.concatenate([y_real, np.ones(members.size, dtype=np.int64)])
    features = names + [f"canary_{i}" for i in range(canaries)]
    spec = _dpsgd_spec(
        features=features,
        rounds=rounds,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        sigma=noise_multiplier,
    )
    plan = _plan(spec, job_id="audit-dpsgd", num_train=int(x.shape[0]))
    assert plan.dp is not None
    torch.manual_seed(int(rng.integers(2**62)))
    model = build_model(spec.model, spec.dataset)
    weight = dict(model.named_parameters())["net.0.weight"]
    before = weight.detach().numpy().copy()
    trainer = DpTrainer(model, mode=mode or DEFAULT_MODES[spec.model.kind], lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(rounds):
        trainer.run(
            xt,
            yt,
            noise_multiplier=plan.dp.noise_multiplier,
            max_grad_norm=plan.dp.max_grad_norm,
            sample_rate=plan.dp.sample_rate,
            steps=plan.dp.steps,
            sample_generator=torch.Generator().manual_seed(int(rng.integers(2**62))),
            noise_generator=torch.Generator().manual_seed(int(rng.integers(2**62))),
        )
    moved = weight.detach().numpy() - before
    scores = (moved[1] - moved[0])[f_real:].astype(np.float64)
    accounted, _site = cumulative_epsilon([plan.cost] * rounds, delta=plan.cost.delta)
    outcome = audit(scores, included, delta=plan.cost.delta, confidence=confidence)
    return JobAudit(
        kind=kind,
        noise_multiplier=noise_multiplier,
        accounted_epsilon=accounted,
        delta=plan.cost.delta,
        outcome=outcome,
        seconds=time.perf_counter() - start,
    )


def _update_spec(*, sites: int, rounds: int, z: float) -> common_pb2.JobSpec:
    spec = common_pb2.JobSpec(name="audit-update-noise", rounds=rounds, min_sites=sites)
    spec.model.kind = common_pb2.MODEL_KIND_FIXED_DELTA
    spec.model.fixed_delta_params = sites
    spec.dataset.name = "canary_sites"
    up = spec.update_privacy
    up.clip_norm = 1.0
    up.noise_multiplier = z
    up.delta = DELTA
    sa = spec.secure_aggregation
    sa.enabled = True
    sa.threshold = 0.9
    sa.neighbours = sites - 1
    return normalize(spec)  # as the site runs it (agent.admission.signed_job)


def audit_update_noise(
    *,
    canaries: int,
    noise_multiplier: float,
    rounds: int,
    confidence: float,
    rng: np.random.Generator,
    kind: str = "update_noise",
) -> JobAudit:
    """Audit the daemon's update clipping and noise with ``canaries`` canary sites.

    Args:
        canaries: m >= 3 sites in every round, each a canary.
        noise_multiplier: z of the job's update privacy.
        rounds: rounds; the sum of each is released.
        confidence: of the empirical bound.
        rng: the auditor's coin flips and the daemons' noise.
        kind: the row's name.
    """
    start = time.perf_counter()
    spec = _update_spec(sites=canaries, rounds=rounds, z=noise_multiplier)
    plan = _plan(spec, job_id="audit-update-noise", num_train=1)
    assert plan.clip_norm is not None
    included = rng.random(canaries) < 0.5
    scores: npt.NDArray[np.float64] = np.zeros(canaries)
    enc = secure_encoding(spec)
    for r in range(1, rounds + 1):
        seed = rotation_seed(federation="audit", attempt=f"audit-update-noise/{r}/1")
        total = np.zeros(enc.length, dtype=np.uint32)
        for i in range(canaries):
            update = np.zeros(canaries, dtype=np.float32)
            if included[i]:
                update[i] = 2.0 * plan.clip_norm  # the daemon clips it to C
            ((_name, protected),) = protect_update([("delta", update)], plan, rng=rng)
            total += _encode_from_parts(protected, enc, seed=seed, rng=rng).values
        scores += decode(total, enc, n=canaries, seed=seed)
    _record, accounted = cumulative_epsilon([plan.cost] * rounds, delta=plan.cost.delta)
    outcome = audit(scores, included, delta=plan.cost.delta, confidence=confidence)
    return JobAudit(
        kind=kind,
        noise_multiplier=noise_multiplier,
        accounted_epsilon=accounted,
        delta=plan.cost.delta,
        outcome=outcome,
        seconds=time.perf_counter() - start,
    )


@dataclass(frozen=True)
class Settings:
    """The sizes and noise of one benchmark run (``FULL`` by default, ``QUICK`` for tests).

    Args:
        canaries: DP-SGD canary records.
        sites: canary sites of the update-noise job.
        rounds: rounds of each job.
        epochs: DP-SGD local epochs per round.
        batch_size: DP-SGD expected batch (q = batch_size / n).
        lr: DP-SGD learning rate (the scores are invariant to it while canaries stay clipped).
        sigma: DP-SGD noise multiplier.
        z: update noise multiplier.
        low_sigma: DP-SGD σ of the low-noise check (the daemon refuses σ = 0).
        low_z: z of the low-noise check.
        mode: DP-SGD's per-sample-gradient mode (None: the worker's default, fused).
    """

    canaries: int = 5000
    sites: int = 2000
    rounds: int = 5
    epochs: int = 2
    batch_size: int = 256
    lr: float = 0.05
    sigma: float = 1.0
    z: float = 2.0
    low_sigma: float = 0.1
    low_z: float = 0.05
    mode: GradSampleMode | None = None


FULL = Settings()
QUICK = Settings(canaries=200, sites=100, rounds=2, epochs=1, batch_size=64)


def run_all(settings: Settings, *, confidence: float, seed: int) -> list[JobAudit]:
    """Both jobs at their noise and at very low noise, each with its own generator."""
    s = settings
    seeds = np.random.SeedSequence(seed).spawn(4)

    def dpsgd(sigma: float, i: int, kind: str) -> JobAudit:
        return audit_dpsgd(
            canaries=s.canaries,
            noise_multiplier=sigma,
            rounds=s.rounds,
            epochs=s.epochs,
            batch_size=s.batch_size,
            lr=s.lr,
            confidence=confidence,
            rng=np.random.default_rng(seeds[i]),
            kind=kind,
            mode=s.mode,
        )

    def update(z: float, i: int, kind: str) -> JobAudit:
        return audit_update_noise(
            canaries=s.sites,
            noise_multiplier=z,
            rounds=s.rounds,
            confidence=confidence,
            rng=np.random.default_rng(seeds[i]),
            kind=kind,
        )

    return [
        dpsgd(s.sigma, 0, "dpsgd"),
        update(s.z, 1, "update_noise"),
        dpsgd(s.low_sigma, 2, "dpsgd_low_noise"),
        update(s.low_z, 3, "update_noise_low_noise"),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the audits, print the table (and the JSON line); 1 if any empirical ε > accounted."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small run (seconds), for tests")
    ap.add_argument("--canaries", type=int, help="DP-SGD canary records")
    ap.add_argument("--sites", type=int, help="canary sites of the update-noise job")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--sigma", type=float, help="DP-SGD noise multiplier")
    ap.add_argument("--z", type=float, help="update noise multiplier")
    ap.add_argument(
        "--mode",
        choices=[m.value for m in GradSampleMode],
        help="DP-SGD per-sample-gradient mode (default: the worker's, fused)",
    )
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    base = QUICK if a.quick else FULL
    given = {k: getattr(a, k) for k in ("canaries", "sites", "rounds", "sigma", "z")}
    settings = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    if a.mode:
        settings = dataclasses.replace(settings, mode=GradSampleMode(a.mode))
    torch.set_num_threads(1)
    rows = run_all(settings, confidence=a.confidence, seed=a.seed)
    print(
        f"{'job':<24} {'noise':>6} {'accounted eps':>13} {'empirical eps':>13} "
        f"{'correct/guesses':>15} {'canaries':>8} {'s':>6}"
    )
    for r in rows:
        o = r.outcome
        print(
            f"{r.kind:<24} {r.noise_multiplier:>6g} {r.accounted_epsilon:>13.3f} "
            f"{o.epsilon:>13.3f} {f'{o.correct}/{o.guesses}':>15} {o.canaries:>8} "
            f"{r.seconds:>6.1f}"
        )
    print(f"(delta {rows[0].delta:g}; empirical: lower bounds at {a.confidence:.0%} confidence)")
    bad = [r.kind for r in rows if r.violated]
    for kind in bad:
        print(f"BUG: {kind}: the empirical epsilon exceeds the accounted epsilon", file=sys.stderr)
    if a.json:
        print(json.dumps({r.kind: r.as_json() for r in rows}), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
