"""``confide-aggregator --config FILE [--log-json]``: run the aggregator until SIGTERM/SIGINT.

The only place in the aggregator that configures structlog (STYLE rule 9). A config error
prints one line naming the key and exits 2; a signal stops the server gracefully, exit 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

import structlog

from aggregator.config import load_config
from aggregator.server import build
from confide.errors import ConfigError
from confide.logs import configure_kwargs

__all__ = ["main"]

_PROG = "confide-aggregator"


def main(argv: list[str] | None = None) -> int:
    """Run the aggregator; returns the process exit code.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(prog=_PROG, description="Confide federation aggregator")
    parser.add_argument("--config", required=True, help="aggregator TOML file")
    parser.add_argument("--log-json", action="store_true", help="force JSON log lines")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return 2
    structlog.configure(
        **configure_kwargs(json=True if args.log_json else config.log_json, level=config.log_level)
    )
    log = structlog.get_logger("aggregator")
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        agg, port = build(config)
    except ConfigError as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return 2
    host = config.listen.rpartition(":")[0]
    log.info("aggregator_listening", address=f"{host}:{port}", federation=config.federation)
    stop.wait()
    log.info("aggregator_stopping")
    agg.stop(grace=5.0)
    log.info("aggregator_stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
