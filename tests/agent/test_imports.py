"""Import rules: the agent daemon never imports torch (STYLE rule 7)."""

from __future__ import annotations

import subprocess
import sys

DAEMON_MODULES = [
    "agent.main",
    "agent.link.session",
    "agent.tasks.runner",
    "agent.local.api",
    "agent.link.transport",
    "agent.config",
    "agent.admission.signed_job",
    "agent.admission.rules",
    "agent.local.resources",
    "agent.workers.pool",
    "agent.workers.handle",
]


def test_daemon_imports_no_torch():
    """Importing every daemon module in a fresh interpreter leaves torch out of sys.modules."""
    code = (
        "import importlib, sys\n"
        f"for m in {DAEMON_MODULES!r}: importlib.import_module(m)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
