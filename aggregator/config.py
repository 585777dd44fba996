"""The aggregator's TOML configuration, read once at start-up into a typed dataclass.

Example::

    federation = "acme"

    [server]
    listen = "127.0.0.1:7443"      # port 0: pick a free port, written to <state.dir>/address
    max_update_bytes = 2147483648  # refuse any update blob larger than this
    max_concurrent_uploads = 16

    [tls]
    ca = "pki/ca.crt"
    cert = "pki/aggregator.crt"
    key = "pki/aggregator.key"
    signing_key = "pki/aggregator.sign.key"
    crl = "pki/crl.pem"            # optional

    [state]
    dir = "state"                  # aggregator.db and blobs/ live here

    [rounds]
    heartbeat_interval_s = 5
    site_timeout_s = 30
    max_round_retries = 3           # lowered to the job's signed attempts per round - 1
    retry_backoff_s = 10            # wait before retrying a round a site refused (doubling)

    [log]
    level = "info"
    json = true                    # optional; default: JSON unless stderr is a TTY
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from confide.config import Section, load_toml, parse_toml
from confide.errors import ConfigError

__all__ = ["AggregatorConfig", "load_config", "parse_config"]

_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class AggregatorConfig:
    """Everything the aggregator reads from its config file.

    Args:
        federation: the federation name; every envelope must be bound to it.
        listen: host:port to bind (port 0 picks a free one).
        max_update_bytes: largest update blob accepted, in bytes.
        max_concurrent_uploads: uploads received at once; others wait.
        ca, cert, key, signing_key, crl: the aggregator's PKI files.
        state_dir: folder holding ``aggregator.db`` and ``blobs/``.
        heartbeat_interval_s: how often sites are told to heartbeat.
        site_timeout_s: a site silent this long is disconnected.
        max_round_retries: failed attempts of one round before its job fails.
        retry_backoff_s: the wait before retrying a round that a site refused, doubled for
            each further attempt (0: retry at once).
        log_level: minimum log level.
        log_json: force JSON logs (True), console (False) or decide by TTY (None).
    """

    federation: str
    listen: str
    state_dir: Path
    ca: Path
    cert: Path
    key: Path
    signing_key: Path
    crl: Path | None = None
    max_update_bytes: int = 2 * 1024**3
    max_concurrent_uploads: int = 16
    heartbeat_interval_s: float = 5.0
    site_timeout_s: float = 30.0
    max_round_retries: int = 3
    retry_backoff_s: float = 10.0
    log_level: str = "info"
    log_json: bool | None = None


def load_config(path: str | Path) -> AggregatorConfig:
    """Read and check an aggregator config file.

    Raises:
        ConfigError: naming the first key that is missing, invalid or unknown.
    """
    return _from_section(load_toml(path))


def parse_config(text: str, *, base_dir: Path | None = None) -> AggregatorConfig:
    """Parse config text (tests); relative paths resolve against ``base_dir``.

    Raises:
        ConfigError: naming the first key that is missing, invalid or unknown.
    """
    root = parse_toml(text)
    root.base_dir = base_dir
    return _from_section(root)


def _from_section(root: Section) -> AggregatorConfig:
    federation = root.str("federation")
    server = root.section("server")
    listen = server.str("listen", "127.0.0.1:7443")
    _check_listen(server.key("listen"), listen)
    max_update = server.int("max_update_bytes", 2 * 1024**3, min=1)
    max_uploads = server.int("max_concurrent_uploads", 16, min=1, max=1024)
    server.done()
    tls = root.section("tls", required=True)
    ca = tls.path("ca", must_exist=True)
    cert = tls.path("cert", must_exist=True)
    key = tls.path("key", must_exist=True)
    signing_key = tls.path("signing_key", must_exist=True)
    crl = tls.path("crl", None, must_exist=True)
    tls.done()
    state = root.section("state", required=True)
    state_dir = state.path("dir")
    state.done()
    rounds = root.section("rounds")
    hb = rounds.float("heartbeat_interval_s", 5.0, min=0.0, min_exclusive=True)
    timeout = rounds.float("site_timeout_s", 30.0, min=0.0, min_exclusive=True)
    if timeout <= hb:
        raise ConfigError(rounds.key("site_timeout_s"), "must be longer than heartbeat_interval_s")
    retries = rounds.int("max_round_retries", 3, min=0, max=100)
    backoff = rounds.float("retry_backoff_s", 10.0, min=0.0, max=3600.0)
    rounds.done()
    log = root.section("log")
    level = log.str("level", "info").lower()
    if level not in _LEVELS:
        raise ConfigError(log.key("level"), f"must be one of {', '.join(_LEVELS)}; got {level!r}")
    log_json = log.bool("json", None)
    log.done()
    root.done()
    return AggregatorConfig(
        federation=federation,
        listen=listen,
        state_dir=state_dir,
        ca=ca,
        cert=cert,
        key=key,
        signing_key=signing_key,
        crl=crl,
        max_update_bytes=max_update,
        max_concurrent_uploads=max_uploads,
        heartbeat_interval_s=hb,
        site_timeout_s=timeout,
        max_round_retries=retries,
        retry_backoff_s=backoff,
        log_level=level,
        log_json=log_json,
    )


def _check_listen(key: str, listen: str) -> None:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(key, f"must be host:port (port 0-65535), got {listen!r}")
