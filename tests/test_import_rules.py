"""The house import rules, as tests: daemons never load torch; exports are exact."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import confide


def _modules_loaded_by(stmt: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{stmt}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "stmt",
    [
        "import aggregator.main, aggregator.server",
        "import agent.main, agent.link.session, agent.tasks.runner, agent.local.api, "
        "agent.workers.handle",
        "import confide.cli.main",
    ],
)
def test_daemons_never_import_torch(stmt):
    """The aggregator, the agent daemon and the operator CLI run without torch or opacus."""
    mods = _modules_loaded_by(stmt)
    assert "torch" not in mods and "opacus" not in mods and "onnxruntime" not in mods


def test_confide_never_imports_agent_or_aggregator():
    """The shared library imports neither daemon (the dependency points one way)."""
    names = [m.name for m in pkgutil.walk_packages(confide.__path__, "confide.")]
    stmt = "\n".join(f"import {n}" for n in names if not n.startswith("confide.v1"))
    mods = _modules_loaded_by(stmt)
    assert not any(m == "agent" or m.startswith("agent.") for m in mods)
    assert not any(m == "aggregator" or m.startswith("aggregator.") for m in mods)


def test_agent_and_aggregator_do_not_import_each_other():
    """agent never imports aggregator and vice versa."""
    assert not any(m.startswith("aggregator") for m in _modules_loaded_by("import agent.main"))
    assert not any(m.startswith("agent") for m in _modules_loaded_by("import aggregator.main"))


@pytest.mark.parametrize(
    "pkg",
    [
        "confide.wire",
        "confide.pki",
        "confide.dp",
        "confide.secagg",
        "confide.localfed",
        "confide.doctor",
    ],
)
def test_subpackage_all_is_exact(pkg):
    """Each confide subpackage's __all__ lists exactly its public names, each one defined."""
    mod = importlib.import_module(pkg)
    declared = set(mod.__all__)
    public = {n for n, v in vars(mod).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert declared == public - {"annotations"}
    for name in declared:
        assert getattr(mod, name) is not None
