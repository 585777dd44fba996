"""``confide-aggregator --config FILE [--log-json]``: run the aggregator until SIGTERM/SIGINT.

The only place in the aggregator that configures structlog (STYLE rule 9). A config error
prints one line naming the key and exits 2; a signal stops the server gracefully, exit 0.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from types import FrameType

import structlog

from aggregator.config import load_config
from aggregator.server import build
from confide import sdnotify
from confide.errors import ConfigError
from confide.logs import configure_kwargs

__all__ = ["main"]

_PROG = "confide-aggregator"
_M_ARENA_MAX = -8
_ARENAS = 2
_TICK_S = 1.0  # the main loop's period: signals are checked and systemd's watchdog fed


def _limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas at 2 (like ``MALLOC_ARENA_MAX=2``), before threads start.

    Each of the ~100 gRPC handler threads otherwise gets its own arena, and the 2 MiB chunk
    buffers of concurrent uploads and downloads fragment them: with 10 sites x 1e6 float32
    parameters peak RSS measured 336 MB with default arenas, 208 MB with 2, at the same median
    round time. A no-op off glibc or when the operator set ``MALLOC_ARENA_MAX`` themselves.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_ARENA_MAX, _ARENAS)
    except (OSError, AttributeError):
        return


def main(argv: list[str] | None = None) -> int:
    """Run the aggregator; returns the process exit code.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(prog=_PROG, description="Confide federation aggregator")
    parser.add_argument("--config", required=True, help="aggregator TOML file")
    parser.add_argument("--log-json", action="store_true", help="force JSON log lines")
    args = parser.parse_args(argv)
    _limit_malloc_arenas()
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
    notify = sdnotify.from_environ()
    notify.ready(f"serving federation {config.federation} on {host}:{port}")
    while not stop.wait(_TICK_S):
        notify.watchdog()
    log.info("aggregator_stopping")
    notify.stopping()
    agg.stop(grace=5.0)
    log.info("aggregator_stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
