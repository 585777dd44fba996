"""CI runs what README tells a newcomer to run: the same install, the test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    """The one-line shell commands of README's "Try it" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Try it", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_ci_runs_readmes_test_command_verbatim():
    """.ci/run holds README's test command as one whole line, and both README commands
    install the project and its development harness the same way."""
    demo, tests = _readme_commands()
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()
    install = " && ".join(tests.split(" && ")[:2])
    assert demo.startswith(install + " && ") and "-e ./dev" in install
