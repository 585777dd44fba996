"""The shipped example configs load with the real loaders, and list every key they read."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config as load_agent
from aggregator.config import load_config as load_aggregator
from confide import pki
from confide.cli.init import KINDS, example_text
from confide.cli.operator import load_operator_config
from confide.config import Section, load_toml
from confide.jobspec import job_from_toml

ROOT = Path(__file__).resolve().parents[2]
_OPTIONAL = re.compile(r"^# (\w+) = ")
_KEY = re.compile(r"^(?:# (?:or: )?)?(\w+) = ")
_TABLE = re.compile(r"^\[([\w.]+)\]\s*$")


def _pki_files(d: Path) -> None:
    """A real CA and identities under the names the examples use (federation acme)."""
    p = d / "pki"
    pki.init_ca(p, federation="acme")
    pki.issue(p, "aggregator", role=pki.Role.AGGREGATOR, dns=["agg.example.org"])
    pki.issue(p, "alice", role=pki.Role.OPERATOR)


LOADERS: dict[str, Callable[[Path], Any]] = {
    "aggregator": load_aggregator,
    "agent": load_agent,
    "operator": load_operator_config,
    "job": lambda path: job_from_toml(load_toml(path)),
}


def _load(kind: str, text: str, d: Path) -> Any:
    path = d / f"{kind}.toml"
    path.write_text(text)
    return LOADERS[kind](path)


def _declared(text: str) -> set[str]:
    """Every dotted key and table the example names, set or commented."""
    keys: set[str] = set()
    table = ""
    for line in text.splitlines():
        if m := _TABLE.match(line):
            table = m.group(1)
            parts = table.split(".")
            keys.update(".".join(parts[: i + 1]) for i in range(len(parts)))
        elif m := _KEY.match(line):
            keys.add(f"{table}.{m.group(1)}" if table else m.group(1))
    return keys


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("examples")
    _pki_files(d)
    return d


def test_examples_folder_is_what_init_writes():
    """examples/ at the top of the repository holds exactly the files `confide init` writes."""
    for kind in KINDS:
        assert (ROOT / "examples" / f"{kind}.toml").read_text() == example_text(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_example_loads_and_each_optional_key_too(kind, folder):
    """Each example loads as shipped, and with any one commented optional key switched on."""
    text = example_text(kind)
    _load(kind, text, folder)
    lines = text.splitlines()
    optional = [i for i, line in enumerate(lines) if _OPTIONAL.match(line)]
    assert optional, "an example shows its optional keys at their defaults"
    for i in optional:
        edited = [*lines[:i], lines[i][2:], *lines[i + 1 :]]
        try:
            _load(kind, "\n".join(edited) + "\n", folder)
        except Exception as exc:
            pytest.fail(f"{kind}.toml line {i + 1} {lines[i]!r}: {exc}")


@pytest.mark.parametrize("kind", KINDS)
def test_every_key_the_loader_reads_is_in_the_example(kind, folder, monkeypatch):
    """A key a loader reads (with or without a default) is documented in its example."""
    read: set[str] = set()
    original_get, original_has = Section._get, Section.has

    def get(self: Section, name: str, default: Any) -> Any:
        read.add(self.key(name))
        return original_get(self, name, default)

    def has(self: Section, name: str) -> bool:
        read.add(self.key(name))
        return original_has(self, name)

    monkeypatch.setattr(Section, "_get", get)
    monkeypatch.setattr(Section, "has", has)
    text = example_text(kind)
    _load(kind, text, folder)
    missing = sorted(read - _declared(text))
    assert not missing, f"{kind}.toml does not document {missing}"


def test_init_writes_a_file_and_refuses_to_overwrite_it(tmp_path):
    """`confide init agent --out F` writes the example; a second run refuses without --force."""
    out = tmp_path / "agent.toml"
    cmd = [sys.executable, "-m", "confide.cli.main", "init", "agent", "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert out.read_text() == example_text("agent")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2
    assert "already exists" in again.stderr and "Traceback" not in again.stderr
