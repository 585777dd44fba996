"""``confide-aggregator --config FILE [--log-json]``: run the aggregator until SIGTERM/SIGINT.

SIGHUP reloads the certificate, keys, CA and CRL named in ``[tls]`` (``ServerTls``): new
connections get the new certificate, established ones stay, and a file that does not check
is refused with ``tls_reload_refused`` while the old material keeps serving. A certificate
(its own, or the CA's) that ends within 14 days is warned about at start and once a day
(``certificate_expiring``; ``confide.pki.expiry``).

``confide-aggregator enroll --dir pki [--name aggregator]`` makes the aggregator's own keys and
a CSR on the machine it runs on, for the CA holder to sign (``confide pki sign --role
aggregator --dns HOST``): like a site's, its private keys never leave that machine.

``confide-aggregator doctor --config FILE`` checks the config, identity files, listening
address, disk and state without starting (``aggregator.doctor``; exit 1: a check failed).

Once it listens it removes the blobs no job or model version names that are older than
``[store] unreferenced_blob_grace_s``, then hourly (``aggregator.blob_collection``).

``confide-aggregator backup --to DIR --config FILE`` copies the state online (while the
aggregator runs); ``confide-aggregator restore --from DIR --config FILE [--force]`` puts it
back while it is stopped (``aggregator.backup``).

The only place in the aggregator that configures structlog (STYLE rule 9). An error ends it
as every Confide command does (``confide.exits``): a config error prints one line naming the
key and exits 2, any other error one line with its reason and exits 1; a signal stops the
server gracefully, exit 0.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import structlog

from aggregator.backup import backup_command, restore_command
from aggregator.config import load_config
from aggregator.doctor import HANDSHAKE_TIMEOUT_S, doctor_command
from aggregator.server import Aggregator, build
from confide import __version__, sdnotify
from confide.exits import run_command
from confide.logs import configure_kwargs
from confide.pki import Role, make_key_and_csr
from confide.pki.certinfo import load_pem_certificate
from confide.pki.expiry import Certificate, ExpiryReminder

__all__ = ["main"]

_PROG = "confide-aggregator"
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_ARENAS = 2
_TICK_S = 1.0  # the main loop's period: signals are checked and systemd's watchdog fed
_MMAP_THRESHOLD = 256 * 1024
_TRIM_EVERY_TICKS = 5


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _tune_malloc(libc: ctypes.CDLL | None) -> None:
    """Make glibc's malloc give memory back after a burst, before threads start.

    Arenas are capped at 2 (like ``MALLOC_ARENA_MAX=2``): each gRPC handler thread otherwise
    gets its own arena, and the 2 MiB chunk buffers of concurrent uploads and downloads
    fragment them (10 sites x 1e6 float32 parameters: peak RSS 336 MB with default arenas,
    208 MB with 2, same median round time). The mmap threshold is fixed at 256 KiB: glibc
    otherwise raises it after each large free (up to 32 MiB), after which message-sized
    buffers come from the heap and stay there; a burst of queued 1 MiB calls left 2.2 GB
    resident that way. Each is a no-op off glibc or when the operator set the matching
    ``MALLOC_*`` variable.
    """
    if libc is None:
        return
    try:
        if not os.environ.get("MALLOC_ARENA_MAX"):
            libc.mallopt(_M_ARENA_MAX, _ARENAS)
        if not os.environ.get("MALLOC_MMAP_THRESHOLD_"):
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    except AttributeError:
        return


def _trimmer(libc: ctypes.CDLL | None) -> Callable[[], object]:
    """A call that returns free heap pages to the system (``malloc_trim(0)``; else a no-op).

    The main loop makes it every few seconds. The small buffers of many concurrent calls
    (gRPC's read slices, protobuf messages) are freed in the middle of the heap, where glibc
    keeps them; trimming hands their pages back, so the resident size falls back after a load
    instead of staying at its peak.
    """
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return lambda: None
    return lambda: trim(0)


def main(argv: list[str] | None = None) -> int:
    """Run the aggregator; returns the process exit code.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).
    """
    return run_command(_PROG, lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog=_PROG, description="Confide federation aggregator")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", help="aggregator TOML file (required to run)")
    parser.add_argument("--log-json", action="store_true", help="force JSON log lines")
    sub = parser.add_subparsers(dest="command")
    e = sub.add_parser("enroll", help="make this aggregator's keys and a CSR for the CA")
    e.add_argument("--dir", type=Path, required=True, help="folder for the keys and the CSR")
    e.add_argument("--name", default="aggregator", help="identity name (default: aggregator)")
    d = sub.add_parser("doctor", help="check config, identity, address, state; print fixes")
    d.add_argument("--config", default=argparse.SUPPRESS, help="aggregator TOML file")
    d.add_argument("--timeout", type=float, default=HANDSHAKE_TIMEOUT_S, help="handshake, s")
    b = sub.add_parser("backup", help="copy the state (store, model blobs) online into a folder")
    b.add_argument("--to", type=Path, required=True, help="a new or empty folder")
    b.add_argument("--config", default=argparse.SUPPRESS, help="aggregator TOML file")
    r = sub.add_parser("restore", help="put a backup back into the (stopped) aggregator's state")
    r.add_argument("--from", dest="source", type=Path, required=True, help="the backup folder")
    r.add_argument("--force", action="store_true", help="move a non-empty state folder aside")
    r.add_argument("--config", default=argparse.SUPPRESS, help="aggregator TOML file")
    args = parser.parse_args(argv)
    if args.command == "enroll":
        return _enroll(args.dir, args.name)
    if args.config is None:
        parser.print_usage(sys.stderr)
        print(f"{_PROG}: --config FILE is required", file=sys.stderr)
        return 2
    if args.command == "doctor":
        return doctor_command(Path(args.config), timeout_s=args.timeout)
    if args.command == "backup":
        return backup_command(Path(args.config), args.to)
    if args.command == "restore":
        return restore_command(Path(args.config), args.source, force=args.force)
    libc = _libc()
    _tune_malloc(libc)
    config = load_config(args.config)
    structlog.configure(
        **configure_kwargs(json=True if args.log_json else config.log_json, level=config.log_level)
    )
    log = structlog.get_logger("aggregator")
    stop = threading.Event()
    hup = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def _on_hup(signum: int, frame: FrameType | None) -> None:
        hup.set()  # the reload runs on the main loop, never in the handler

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_hup)
    agg, port = build(config)
    host = config.listen.rpartition(":")[0]
    log.info("aggregator_listening", address=f"{host}:{port}", federation=config.federation)
    if agg.metrics_server is not None:
        log.info("metrics_listening", address=agg.metrics_server.address)
    if agg.collector is not None:
        agg.collector.start()  # unnamed blobs past their grace: now, then hourly
    status = f"serving federation {config.federation} on {host}:{port}"
    notify = sdnotify.from_environ()
    notify.ready(status)
    reminder = ExpiryReminder()
    _warn_expiry(agg, reminder)
    trim = _trimmer(libc)
    ticks = 0
    while not stop.wait(_TICK_S):
        notify.watchdog()
        ticks += 1
        if hup.is_set():
            hup.clear()
            notify.status(f"{status}; reloading TLS material")
            agg.reload_tls()
            notify.status(status)
        if ticks % _TRIM_EVERY_TICKS == 0:
            trim()
            _warn_expiry(agg, reminder)
    log.info("aggregator_stopping")
    notify.stopping()
    agg.stop(grace=5.0)
    log.info("aggregator_stopped")
    return 0


def _warn_expiry(agg: Aggregator, reminder: ExpiryReminder) -> None:
    """Log each certificate in force (own, CA) that ends within 14 days: first, then daily."""
    log = structlog.get_logger("aggregator")
    identity = agg.tls.current()
    certs: dict[str, Certificate] = {
        "certificate": identity.info,
        "ca": load_pem_certificate(identity.ca_pem),
    }
    for notice in reminder.due(certs, now=datetime.now(UTC)):
        (log.error if notice.expired else log.warning)(notice.event, **notice.fields())


def _enroll(directory: Path, name: str) -> int:
    """Make the aggregator's TLS and signing keys (0600) and a CSR for role aggregator."""
    csr = make_key_and_csr(directory, name, role=Role.AGGREGATOR)
    print(f"wrote keys and {csr}")
    print(
        f"next: send it to the CA holder: confide pki sign {csr.name} --role aggregator "
        "--dns HOST (the name sites dial)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
