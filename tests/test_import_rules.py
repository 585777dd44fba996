"""The house import rules, as tests: daemons never load torch nor development code; the worker
runtime stands apart; exports are exact."""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import confide

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def _modules_loaded_by(stmt: str) -> frozenset[str]:
    """The modules a fresh interpreter holds after running ``stmt`` (cached: one run each)."""
    out = subprocess.run(
        [sys.executable, "-c", f"{stmt}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return frozenset(out.stdout.split())


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


# --- Rule: the daemons never load torch (this rule's only home) -----------------------------

_TORCH = ("torch", "opacus", "onnxruntime")

_NOT_WALKED = ("confide.v1",)
"""Generated messages (loaded by what uses them). The worker's training code, the one place
torch loads, is ``confide_worker``: a package of its own, never imported by these."""


def _import_every_module_of(package: str) -> str:
    """A statement importing the package and every module under it, but its ``__main__``
    (which would run) and ``_NOT_WALKED``."""
    root = importlib.import_module(package)
    walked = [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")]
    names = [package] + [n for n in walked if not n.endswith(".__main__")]
    return "\n".join(f"import {n}" for n in names if not _within(n, _NOT_WALKED))


_NAMED_BY_THE_OLD_COPIES = {
    "aggregator": {"aggregator.main", "aggregator.server"},
    "agent": {
        "agent.main",
        "agent.config",
        "agent.link.session",
        "agent.link.transport",
        "agent.tasks.runner",
        "agent.local.api",
        "agent.local.resources",
        "agent.admission.signed_job",
        "agent.admission.rules",
        "agent.workers.pool",
        "agent.workers.handle",
        "agent.privacy.ledger",
        "agent.data.declared",
    },
    "confide": {
        "confide.cli.main",
        "confide.cli.privacy",
        "confide.data.datasets",
        "confide.dp.accountant",
        "confide.dp.budget",
        "confide.dp.ddg",
        "confide.dp.discrete",
        "confide.dp.prv",
        "confide.dp.rdp",
        "confide.dp.update",
    },
}
"""The modules the rule's former copies named one by one; the walk must still reach them."""


@pytest.mark.parametrize("package", sorted(_NAMED_BY_THE_OLD_COPIES))
def test_daemons_never_import_torch(package):
    """Every module of the aggregator, the agent daemon and the shared library (the operator
    CLI's code) loads without torch, opacus or onnxruntime: only the worker process trains."""
    mods = _modules_loaded_by(_import_every_module_of(package))
    assert _NAMED_BY_THE_OLD_COPIES[package] <= mods
    assert sorted(m for m in mods if _within(m, _TORCH)) == []


# --- end of the torch rule -------------------------------------------------------------------


def test_confide_never_imports_agent_or_aggregator():
    """The shared library imports neither daemon (the dependency points one way)."""
    mods = _modules_loaded_by(_import_every_module_of(confide.__name__))
    assert not any(m == "agent" or m.startswith("agent.") for m in mods)
    assert not any(m == "aggregator" or m.startswith("aggregator.") for m in mods)


# --- Rule: the worker runtime stands apart from the daemons --------------------------------

_WORKER_MAY_IMPORT = ("confide.wire", "confide.models", "confide.errors", "confide.data")
"""What the worker runtime may use of confide (besides the generated messages they load)."""


def test_worker_runtime_imports_nothing_of_the_daemons():
    """Every confide_worker module loads neither agent nor aggregator, and of confide only
    its wire, models, errors and data (and the generated messages they use)."""
    mods = _modules_loaded_by(_import_every_module_of("confide_worker"))
    assert "confide_worker.training.job" in mods  # torch's side was imported too
    assert sorted(m for m in mods if _within(m, ("agent", "aggregator"))) == []
    allowed = (*_WORKER_MAY_IMPORT, "confide.v1")
    used = [m for m in mods if m.startswith("confide.")]
    assert sorted(m for m in used if not _within(m, allowed)) == []


@pytest.mark.parametrize("package", ["agent", "aggregator", "confide"])
def test_daemons_never_import_the_worker_runtime(package):
    """No module of agent, aggregator or confide loads confide_worker: the daemon starts it as
    a process (the same walks as the torch rule, so no extra interpreter)."""
    mods = _modules_loaded_by(_import_every_module_of(package))
    assert sorted(m for m in mods if _within(m, ("confide_worker",))) == []


def test_the_daemon_finds_the_worker_runtime_without_importing_it():
    """agent.workers.handle.worker_package_dir looks the package up; nothing of it loads."""
    stmt = "from agent.workers.handle import worker_package_dir\nprint(worker_package_dir())"
    mods = _modules_loaded_by(stmt)
    assert "agent.workers.handle" in mods
    assert sorted(m for m in mods if _within(m, ("confide_worker",))) == []


def test_agent_and_aggregator_do_not_import_each_other():
    """agent never imports aggregator and vice versa."""
    agent = _modules_loaded_by(_import_every_module_of("agent"))
    aggregator = _modules_loaded_by(_import_every_module_of("aggregator"))
    assert "agent.main" in agent and "aggregator.main" in aggregator
    assert not any(m.startswith("aggregator") for m in agent)
    assert not any(m.startswith("agent") for m in aggregator)


# --- Rule: `__all__` is exact; where an API was agreed, it is pinned here (its only home) ----

_PINNED_API = {
    "confide.pki": {
        "EXPIRY_WARNING",
        "BadCertificate",
        "CertInfo",
        "CertificateExpired",
        "CertificateExpiresSoon",
        "Identity",
        "Role",
        "channel_credentials",
        "check_expiry",
        "enroll",
        "init_ca",
        "issue",
        "load_identity",
        "make_key_and_csr",
        "peer_info",
        "renew",
        "require_role",
        "revoke",
        "seconds_until_expiry",
        "server_credentials",
        "sign_csr",
        "verify_certificate",
    },
    "confide.dp.rdp": {"DEFAULT_ORDERS", "epsilon_from_rdp", "rdp"},
    "confide.dp.prv": {"EpsilonBounds", "prv_epsilon", "prv_epsilon_bounds"},
    "confide.dp.accountant": {
        "AccountantKind",
        "SampledGaussian",
        "compose_rdp",
        "epsilon",
        "noise_multiplier_for",
        "rdp_curve",
    },
    "confide.dp.budget": {
        "RecordCost",
        "RoundCost",
        "UpdateCost",
        "cumulative_epsilon",
        "discrete_update_cost",
        "record_curve",
        "round_cost",
        "site_curve",
        "update_cost",
    },
    "confide.dp.discrete": {"MAX_SIGMA", "discrete_gaussian"},
    "confide.dp.ddg": {
        "DEFAULT_BETA",
        "DEFAULT_WRAP_PROBABILITY",
        "MIN_LEVELS",
        "DdgParams",
        "ddg_params",
        "ddg_rdp",
        "rounded_norm_bound_sq",
        "scaled_rdp",
        "sum_tau",
        "wrap_probability",
    },
    "confide.dp.update": {"add_noise", "clip", "noise_std", "system_rng"},
}
"""The agreed public names of a package or module: adding or dropping one is a decision."""


@pytest.mark.parametrize("name", sorted(_PINNED_API))
def test_pinned_api_is_exact(name):
    """The module's __all__ lists exactly its agreed names, once each, and each one resolves."""
    mod = importlib.import_module(name)
    assert sorted(mod.__all__) == sorted(_PINNED_API[name])
    for attr in mod.__all__:
        assert getattr(mod, attr) is not None


# --- end of the pinned API ------------------------------------------------------------------


@pytest.mark.parametrize(
    "pkg",
    [
        "confide.wire",
        "confide.pki",
        "confide.dp",
        "confide.secagg",
        "confide_dev.localfed",
        "confide.doctor",
    ],
)
def test_subpackage_all_is_exact(pkg):
    """Each confide subpackage's __all__ lists exactly its public names, each one defined."""
    mod = importlib.import_module(pkg)
    declared = set(mod.__all__)
    assert len(mod.__all__) == len(declared)  # each name once
    public = {n for n, v in vars(mod).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert declared == public - {"annotations"}
    for name in declared:
        assert getattr(mod, name) is not None


PRODUCTION = ("confide", "confide_worker", "agent", "aggregator")
"""The packages the wheel ships (pyproject.toml), and so every .deb and the offline bundle."""

_DEV_ONLY = ("confide_dev", "bench", "tests", "confide.localfed", "agent.faults")
"""Development code: the harness (dev/), benchmarks, tests, and the harness's old homes."""

_IMPORTERS = ("import_module", "__import__", "find_spec")


def _production_sources() -> list[Path]:
    return sorted(
        p
        for pkg in PRODUCTION
        for p in (ROOT / pkg).rglob("*.py")
        if not p.is_relative_to(ROOT / "confide" / "v1")
    )


def _is_dev(name: str) -> bool:
    return any(name == d or name.startswith(f"{d}.") for d in _DEV_ONLY)


def _imported_names(tree: ast.AST) -> list[str]:
    """Every module an import statement or an importlib call with a literal name imports."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if called in _IMPORTERS and isinstance(first, ast.Constant):
                names.append(str(first.value))
    return names


def test_production_packages_never_import_development_code():
    """No module of confide, confide_worker, agent or aggregator imports the harness, benchmarks
    or tests, even lazily, nor reads a test switch (CONFIDE_TEST_*) from the environment."""
    sources = _production_sources()
    assert len(sources) > 100  # the scan sees the packages
    found = []
    for path in sources:
        tree = ast.parse(path.read_text(), filename=str(path))
        found += [(str(path.relative_to(ROOT)), n) for n in _imported_names(tree) if _is_dev(n)]
        found += [
            (str(path.relative_to(ROOT)), node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "CONFIDE_TEST_" in node.value
        ]
    assert found == []
    for package in PRODUCTION:  # and loaded: every module walked (cached from the torch rule)
        loaded = _modules_loaded_by(_import_every_module_of(package))
        assert sorted(m for m in loaded if _is_dev(m)) == []


def test_the_wheel_holds_the_production_packages_only():
    """pyproject's package discovery finds confide, confide_worker, agent and aggregator, never
    dev/ or bench/."""
    found = pyproject_packages()
    assert {p.split(".")[0] for p in found} == set(PRODUCTION)
    assert {"confide.cli", "confide_worker.training", "agent.workers", "aggregator"} <= set(found)


def pyproject_packages() -> list[str]:
    """The packages setuptools puts in the wheel, found as pyproject.toml tells it to."""
    from setuptools import find_namespace_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    options = find["packages"]["find"]
    return find_namespace_packages(
        where=str(ROOT), include=options["include"], exclude=options.get("exclude", ())
    )


def test_the_dev_distribution_pins_this_checkouts_confide():
    """dev/pyproject.toml has the project's version and requires exactly that confide."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    dev = tomllib.loads((ROOT / "dev" / "pyproject.toml").read_text())["project"]
    assert dev["version"] == version
    assert f"confide[agent]=={version}" in dev["dependencies"]
