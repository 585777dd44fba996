"""``confide``: the operator's command line (PKI, jobs, sites, privacy planning, demo)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from confide import __version__
from confide.exits import run_command

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The full ``confide`` argument parser."""
    from confide.cli import demo, init, jobs, models, pki, privacy

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
    demo.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``confide`` command; config errors exit 2, other errors 1 (``confide.exits``)."""
    return run_command("confide", lambda: _run(argv))


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
