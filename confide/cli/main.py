"""``confide``: the operator's command line (PKI, jobs, sites, privacy planning).

A development checkout adds ``confide demo``: the ``confide-dev`` distribution (``dev/``)
names its command in the ``confide.commands`` entry-point group, and the parser adds each
command that group names. A production install has no such distribution; there ``confide
demo`` says which install it needs. A command that fails to load is an error, never skipped.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from confide import __version__
from confide.exits import run_command

__all__ = ["COMMANDS_GROUP", "DEV_INSTALL", "build_parser", "main"]

COMMANDS_GROUP = "confide.commands"
"""Entry-point group of the commands another installed distribution adds (``confide demo``)."""

DEV_INSTALL = "pip install -c constraints.txt -e '.[dev]' -e ./dev"
"""How a checkout installs the development harness that brings ``confide demo``."""


def build_parser(*, extensions: Iterable[EntryPoint] | None = None) -> argparse.ArgumentParser:
    """The full ``confide`` argument parser.

    Args:
        extensions: the entry points whose ``register(subparsers)`` add commands; default:
            those installed in ``COMMANDS_GROUP``.
    """
    from confide.cli import init, jobs, models, pki, privacy

    parser = argparse.ArgumentParser(
        prog="confide", description="Federated learning for organizations that must not move data."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("operator.toml"),
        help="operator config: aggregator address and TLS identity (default: operator.toml)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    init.register(sub)
    pki.register(sub)
    jobs.register(sub)
    models.register(sub)
    privacy.register(sub)
    for ext in entry_points(group=COMMANDS_GROUP) if extensions is None else extensions:
        ext.load()(sub)
    if "demo" not in sub.choices:
        _register_demo_needs_dev(sub)
    return parser


def _register_demo_needs_dev(subparsers: Any) -> None:
    """``confide demo`` where the development harness is not installed: say what it needs."""
    p = subparsers.add_parser(
        "demo",
        help="run a real federation on this machine (development checkout only)",
        # Whatever follows (--sites 3, --help, ...) is the real demo's to read: take it all.
        add_help=False,
        prefix_chars="\0",
    )
    p.add_argument("args", nargs="*")
    p.set_defaults(func=_demo_needs_dev)


def _demo_needs_dev(args: argparse.Namespace) -> int:
    print(
        "confide demo: the demo comes with the development harness (confide-dev), which "
        f"production installs do not ship; from a checkout: {DEV_INSTALL} (README: Try it)",
        file=sys.stderr,
    )
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``confide`` command; config errors exit 2, other errors 1 (``confide.exits``)."""
    return run_command("confide", lambda: _run(argv))


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
