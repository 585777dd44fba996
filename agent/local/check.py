"""``confide-agent check --config agent.toml``: the self-check, printed, without starting.

Prints one line per finding (identity, each dataset, the training runtime) with everything
the site's IT needs to fix it; exits 0 when all is well and 1 otherwise. Unlike the daemon's
start-up check it imports the runtime in a child process, as a worker would.
"""

from __future__ import annotations

from agent.config import AgentConfig
from agent.local.selfcheck import DatasetBook, check_identity, probe_runtime, runtime_problem
from confide.errors import ConfideError
from confide.pki import load_identity
from confide.v1 import federation_pb2

__all__ = ["problems", "run_check"]


def problems(book: DatasetBook) -> list[federation_pb2.DatasetProblem]:
    """The unusable datasets as the aggregator and the local API are told (no data)."""
    return [
        federation_pb2.DatasetProblem(dataset=h.name, reason=h.reason, detail=h.detail)
        for h in book.all()
        if not h.usable
    ]


def run_check(cfg: AgentConfig) -> int:
    """Check the identity, every dataset and the runtime; print a line each; 0 if all pass."""
    ok = True
    try:
        identity = load_identity(
            cert=cfg.tls.cert,
            key=cfg.tls.key,
            signing_key=cfg.tls.signing_key,
            ca=cfg.tls.ca,
            crl=cfg.tls.crl,
        )
        info = identity.info
        check_identity(info, federation=cfg.federation, site=cfg.site)
        print(
            f"identity:  ok: site {info.name!r} of federation {info.federation!r}, "
            f"certificate valid until {info.not_after:%Y-%m-%d}"
        )
    except ConfideError as exc:
        print(f"identity:  PROBLEM: {exc}")
        ok = False
    if not cfg.datasets:
        print("datasets:  PROBLEM: none exposed; add a [datasets.NAME] table")
        ok = False
    for h in DatasetBook.check(cfg.datasets).all():
        if h.error is None:
            print(f"dataset:   ok: {h.name}, {h.records} records")
        else:
            print(f"dataset:   PROBLEM: {h.name} ({h.reason}): {h.error.message}")
            ok = False
    problem = runtime_problem()
    if problem is None:
        try:
            rt = probe_runtime()
            cuda = "available" if rt.get("cuda") else "not available"
            print(f"runtime:   ok: torch {rt.get('torch')}, opacus {rt.get('opacus')}, CUDA {cuda}")
        except ConfideError as exc:
            problem = str(exc)
    if problem is not None:
        print(f"runtime:   PROBLEM: {problem}")
        ok = False
    return 0 if ok else 1
