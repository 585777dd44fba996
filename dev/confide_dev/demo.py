"""``confide demo``: a real federation on this machine, end to end, in one command.

It makes a throw-away federation in a temp dir (CA; site certificates through the CSR
flow), starts one aggregator and N agents as separate OS processes on 127.0.0.1 over mutual
TLS, gives each agent a different non-IID partition of scikit-learn's bundled breast_cancer
data, runs a job, shows a progress bar and a per-round table, stops everything, and exits 0.
This distribution adds it to the ``confide`` CLI (``confide.commands`` entry point in
``dev/pyproject.toml``); production installs have no demo.

Stopped by SIGTERM or Ctrl-C (SIGINT) it stops every process it started before it exits
(128 + the signal number); a second signal during that stop is ignored, so the stop (which
kills what does not end within 30 s) is not cut short and nothing is left running.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from confide.cli.main import DEV_INSTALL
from confide.errors import InternalError
from confide.jobspec import DEFAULT_LOSS_CLIP
from confide.secagg import MIN_SECURE_SITES
from confide.v1 import admin_pb2, common_pb2
from confide_dev.localfed import LocalFederation, partition_breast_cancer, partition_site

__all__ = ["demo_job", "register", "run_demo"]


def register(subparsers: Any) -> None:
    """Add the ``demo`` command."""
    p = subparsers.add_parser("demo", help="run a real federation on this machine")
    p.add_argument("--sites", type=int, default=3, help="number of agents (default 3)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the job (default 5)")
    p.add_argument("--json", action="store_true", help="last line: a JSON summary")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, certs)")
    p.add_argument("--no-secure-aggregation", action="store_true", help="plaintext sums")
    p.add_argument("--no-privacy", action="store_true", help="no DP-SGD, no update noise")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_handle)


def demo_job(
    *, sites: int, rounds: int, features: list[str], secure: bool, private: bool, seed: int
) -> common_pb2.JobSpec:
    """The demo's job: logistic regression on breast_cancer, with privacy and SecAgg+ on.

    Privacy defaults: DP-SGD for a record-level ε of 3 per site over the whole job at
    δ = 1e-5 (the site's accountant picks the noise multiplier), update clipping to C = 1
    and update noise z = 0.1 (distributed over the sites when secure aggregation is on). Logistic
    regression keeps the update small (62 parameters), so the update noise costs little
    accuracy; the MLP under the same noise ends near 0.87 on this data.

    Evaluation: each round's input model and the final model (rounds + 1), with exact figures
    (noise multiplier 0), which the demo's sites allow by policy because breast_cancer is
    public data. Noised figures would be meaningless here: a site holds about 47 hold-out
    records, and the noise std on its correct count is z·√3 (README "Evaluation").
    """
    spec = common_pb2.JobSpec(
        name="demo-breast-cancer",
        rounds=rounds,
        min_sites=sites,
        round_timeout_s=120.0,
        model=common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_LOGREG),
        dataset=common_pb2.DatasetSpec(
            name="breast_cancer", features=features, label="target", num_classes=2
        ),
        training=common_pb2.TrainingSpec(
            local_epochs=2,
            batch_size=32,
            learning_rate=0.2,
            server_optimizer=common_pb2.SERVER_OPTIMIZER_FEDAVG,
            server_learning_rate=1.0,
            seed=seed,
        ),
        evaluation=common_pb2.EvaluationSpec(
            max_evaluations=rounds + 1, noise_multiplier=0.0, loss_clip=DEFAULT_LOSS_CLIP
        ),
    )
    if private:
        spec.record_privacy.CopyFrom(
            common_pb2.RecordPrivacy(
                enabled=True,
                target_epsilon=3.0,
                max_grad_norm=1.0,
                delta=1e-5,
                accountant=common_pb2.ACCOUNTANT_RDP,
            )
        )
        spec.update_privacy.CopyFrom(
            common_pb2.UpdatePrivacy(clip_norm=1.0, noise_multiplier=0.1, delta=1e-5)
        )
    if secure:
        spec.secure_aggregation.CopyFrom(
            common_pb2.SecureAggregation(
                enabled=True, threshold=0.66, clip_range=2.0, bits=16, stage_timeout_s=60.0
            )
        )
    return spec


class _Stopped(Exception):
    """SIGTERM or SIGINT arrived: unwind, stopping every process the demo started."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    for s in (signal.SIGTERM, signal.SIGINT):  # let the stop finish: ignore a second signal
        signal.signal(s, signal.SIG_IGN)
    raise _Stopped(signum)


def _end_children(*, wait_s: float = 10.0) -> None:
    """Terminate (then kill) any process this one started that is still running."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=wait_s)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=wait_s)


def _missing_modules() -> list[str]:
    """What the demo needs and this install lacks (looked up, not imported)."""
    needed = ("sklearn", "torch", "opacus")
    return [m for m in needed if importlib.util.find_spec(m) is None]


def _handle(args: argparse.Namespace) -> int:
    if args.sites < 1 or args.rounds < 1:
        print("confide demo: --sites and --rounds must be >= 1", file=sys.stderr)
        return 2
    missing = _missing_modules()
    if missing:
        names = ", ".join("scikit-learn" if m == "sklearn" else m for m in missing)
        print(
            f"confide demo: needs {names}; install them with: {DEV_INSTALL} (README: Try it)",
            file=sys.stderr,
        )
        return 2
    previous = {s: signal.signal(s, _stop_on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        summary = run_demo(
            sites=args.sites,
            rounds=args.rounds,
            # The sum of two sites' updates would reveal each to the other (MIN_SECURE_SITES).
            secure=not args.no_secure_aggregation and args.sites >= MIN_SECURE_SITES,
            private=not args.no_privacy,
            keep=args.keep,
            seed=args.seed,
        )
    except _Stopped as stopped:
        _end_children()  # a process started just as the signal came is not left behind
        print(
            f"confide demo: stopped by {stopped}; every process it started has ended",
            file=sys.stderr,
        )
        return 128 + stopped.signum
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if args.json:
        print(json.dumps(summary))
    return 0 if summary["state"] == "done" else 1


class _Progress:
    """A progress bar on a TTY, one line per finished round otherwise."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.tty = sys.stderr.isatty()
        self.shown = 0  # the last round printed

    def __call__(self, status: admin_pb2.JobStatus) -> None:
        # GetJob carries the latest rounds only: count the others from rounds_total.
        done = [r for r in status.rounds if r.state == "done"]
        if self.tty:
            n = status.rounds_total - (len(status.rounds) - len(done))
            bar = "#" * int(30 * n / self.rounds)
            print(f"\r  rounds [{bar:<30}] {n}/{self.rounds}", end="", file=sys.stderr, flush=True)
        for r in done:
            if r.round > self.shown and not self.tty:
                print(f"  round {r.round}/{self.rounds} done in {r.seconds:.2f}s", file=sys.stderr)
        self.shown = max([self.shown, *(r.round for r in done)])

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def run_demo(
    *, sites: int, rounds: int, secure: bool, private: bool, keep: bool = False, seed: int = 0
) -> dict[str, Any]:
    """Run the whole demo and return its JSON summary."""
    start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="confide-demo-"))
    out = sys.stdout
    try:
        names = [f"site-{i + 1}" for i in range(sites)]
        print(f"confide demo: federation in {root}", file=out)
        data = partition_breast_cancer(root / "data", sites=sites, seed=seed)
        fed = LocalFederation(root, federation="demo", log_level="info")
        with fed:
            fed.make_pki(names)
            print(
                "  certificates: CA, aggregator, operator, and each site through its CSR", file=out
            )
            addr = fed.start_aggregator()
            print(f"  aggregator listening on {addr} (mutual TLS)", file=out)
            # --no-privacy: the sites must accept an unbounded ε explicitly.
            cap = 10.0 if private else math.inf
            for i, (name, size) in enumerate(zip(names, data.sizes, strict=True)):
                site = partition_site(data, i, name, max_epsilon=cap, exact_evaluation=True)
                fed.start_agent(site)
                print(f"  {name}: {size} records (non-IID share of breast_cancer)", file=out)
            fed.wait_for_sites(sites)
            spec = demo_job(
                sites=sites,
                rounds=rounds,
                features=data.features,
                secure=secure,
                private=private,
                seed=seed,
            )
            job_id = fed.submit(spec)
            print(
                f"  job {job_id}: logistic regression, {rounds} rounds, secure aggregation "
                f"{'on' if secure else 'off'}, privacy {'on' if private else 'off'}",
                file=out,
            )
            progress = _Progress(rounds)
            status = fed.wait_job(job_id, timeout=120.0 + 60.0 * rounds, on_status=progress)
            progress.close()
            _print_table(status, out)
            codes = fed.stop()
        bad = {k: v for k, v in codes.items() if v != 0}
        if bad:
            raise InternalError(f"processes did not exit cleanly: {bad}")
        epsilon = max(status.epsilon_by_site.values(), default=0.0)
        return {
            "state": admin_pb2.JobState.Name(status.state).removeprefix("JOB_STATE_").lower(),
            "job_id": status.job_id,
            "rounds": len([r for r in status.rounds if r.state == "done"]),
            "final_accuracy": round(status.final_accuracy, 6),
            "final_loss": round(status.final_loss, 6),
            "sites": sites,
            "epsilon": round(epsilon, 6),
            "secure_aggregation": secure,
            "wall_seconds": round(time.monotonic() - start, 3),
        }
    finally:
        if keep:
            print(f"  kept {root}", file=out)
        else:
            shutil.rmtree(root, ignore_errors=True)


def _print_table(status: admin_pb2.JobStatus, out: Any) -> None:
    print(f"\n{'round':>5} {'sites':>5} {'accuracy':>9} {'loss':>8} {'seconds':>8}", file=out)
    for r in status.rounds:
        if r.state != "done":
            continue
        print(
            f"{r.round:>5} {r.aggregated:>5} {r.accuracy:>9.4f} {r.loss:>8.4f} {r.seconds:>8.2f}",
            file=out,
        )
    state = admin_pb2.JobState.Name(status.state).removeprefix("JOB_STATE_").lower()
    print(
        f"\njob {state}: final held-out accuracy {status.final_accuracy:.4f}, "
        f"loss {status.final_loss:.4f}" + (f" ({status.error})" if status.error else ""),
        file=out,
    )
    for site, eps in sorted(status.epsilon_by_site.items()):
        print(f"  {site}: record-level epsilon spent {eps:.3f}", file=out)
