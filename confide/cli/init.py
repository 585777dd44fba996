"""``confide init aggregator|agent|operator|job``: write a commented starting configuration.

The files are the ones in ``examples/`` (shipped inside the package as ``confide/examples``),
so what ``init`` writes is what the documentation shows and what a test loads with the real
loaders: every key, its default and its meaning in comments.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from confide.errors import ConfigError

__all__ = ["KINDS", "example_text", "register"]

KINDS = ("aggregator", "agent", "operator", "job")

_NEXT = {
    "aggregator": "edit it, then: confide-aggregator --config {out}",
    "agent": "edit it, then: confide-agent check --config {out}",
    "operator": "edit it, then: confide --config {out} sites",
    "job": "edit it, then: confide job submit {out}",
}


def example_text(kind: str) -> str:
    """The commented example file for ``kind`` (one of ``KINDS``)."""
    if kind not in KINDS:
        raise ValueError(f"no example for {kind!r}")
    return (resources.files("confide") / "examples" / f"{kind}.toml").read_text(encoding="utf-8")


def register(subparsers: Any) -> None:
    """Add the ``init`` command."""
    p = subparsers.add_parser(
        "init", help="write a commented starting config (aggregator, agent, operator, job)"
    )
    p.add_argument("kind", choices=KINDS)
    p.add_argument(
        "--out", type=Path, default=None, help="file to write (default: print to stdout)"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> int:
    text = example_text(args.kind)
    out: Path | None = args.out
    if out is None:
        sys.stdout.write(text)
        return 0
    if out.exists() and not args.force:
        raise ConfigError(str(out), "already exists; pass --force to overwrite it")
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(out), f"cannot write: {exc.strerror}") from exc
    print(f"wrote {out}; {_NEXT[args.kind].format(out=out)}", file=sys.stderr)
    return 0
