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
    crl = "pki/crl.pem"            # required: the CA's revocation list, or "none" explicitly

    [state]
    dir = "state"                  # aggregator.db and blobs/ live here

    [store]
    backend = "sqlite"             # the Store implementation (only sqlite today)
    unreferenced_blob_grace_s = 86400  # a blob no job names is removed this long after its upload

    [rounds]
    heartbeat_interval_s = 5
    site_timeout_s = 30
    max_round_retries = 3           # lowered to the job's signed attempts per round - 1
    retry_backoff_s = 10            # wait before retrying a round a site refused (doubling)

    [limits]                       # all optional; defaults shown
    max_model_bytes = 536870912    # SubmitJob refuses a job whose model is larger
    peer_calls = 8                 # calls one certificate identity may have in flight
    peer_transfers = 4             # uploads + downloads one identity may stream at once
    peer_rate = 50.0               # calls per second one identity may start (sustained)
    peer_burst = 200               # ... and at once
    peer_bytes_in_flight = 1073741824  # update bytes one identity's uploads may hold
    transfers = 32                 # uploads + downloads of all peers at once
    task_streams = 256             # sites holding a task stream at once
    bytes_in_flight = 2147483648   # update bytes all uploads may hold at once
    stream_idle_s = 30             # a stream waiting this long on its peer is cancelled

    [log]
    level = "info"
    json = true                    # optional; default: JSON unless stderr is a TTY

    [metrics]                      # optional; absent: no metrics endpoint
    listen = "127.0.0.1:9464"      # Prometheus text over plain HTTP; port 0: a free one
    allow_non_loopback = false     # true: listen may be an address beyond this host

Revocation is on by default: ``[tls].crl`` is required (``confide pki init`` writes
``crl.pem`` and ``confide pki revoke`` updates it). Running without one must be said with
``crl = "none"``, so a forgotten key can never mean that a revoked site registers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aggregator.quota import CALL_POOL, Limits
from aggregator.store import StoreBackend, StoreConfig
from aggregator.store.factory import MIN_UNREFERENCED_BLOB_GRACE_S, UNREFERENCED_BLOB_GRACE_S
from confide.config import Section, load_toml, parse_toml
from confide.errors import ConfigError, Reason
from confide.metrics import MetricsConfig, metrics_config

__all__ = ["DEFAULT_MAX_MODEL_BYTES", "NO_CRL", "AggregatorConfig", "load_config", "parse_config"]

DEFAULT_MAX_MODEL_BYTES = 512 * 1024**2
"""The largest job model accepted by default: 128M float32 parameters. The aggregator holds
a model, the round's sums and the updates in flight in memory, so a limit well above any
model this federation trains (tabular and small-image models) keeps one job from taking the
host; an operator who needs more raises ``limits.max_model_bytes``."""

NO_CRL = "none"
"""The explicit ``[tls].crl`` value that runs without a revocation list."""

_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class AggregatorConfig:
    """Everything the aggregator reads from its config file.

    Args:
        federation: the federation name; every envelope must be bound to it.
        listen: host:port to bind (port 0 picks a free one).
        max_update_bytes: largest update blob accepted, in bytes.
        max_concurrent_uploads: uploads received at once; others wait.
        ca, cert, key, signing_key: the aggregator's PKI files.
        crl: the CA's revocation list, re-read when it changes; None only when the config
            said ``crl = "none"``.
        state_dir: folder holding ``aggregator.db`` and ``blobs/``.
        store: which ``Store`` implementation holds the rows (``[store]``).
        heartbeat_interval_s: how often sites are told to heartbeat.
        site_timeout_s: a site silent this long is disconnected.
        max_round_retries: failed attempts of one round before its job fails.
        retry_backoff_s: the wait before retrying a round that a site refused, doubled for
            each further attempt (0: retry at once).
        log_level: minimum log level.
        log_json: force JSON logs (True), console (False) or decide by TTY (None).
        max_model_bytes: the largest job model SubmitJob accepts, in bytes.
        limits: what one peer, and all peers together, may hold of the server.
        metrics: where the Prometheus endpoint listens; None: no endpoint (the default).
    """

    federation: str
    listen: str
    state_dir: Path
    ca: Path
    cert: Path
    key: Path
    signing_key: Path
    crl: Path | None
    max_update_bytes: int = 2 * 1024**3
    max_concurrent_uploads: int = 16
    heartbeat_interval_s: float = 5.0
    site_timeout_s: float = 30.0
    max_round_retries: int = 3
    retry_backoff_s: float = 10.0
    log_level: str = "info"
    log_json: bool | None = None
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    limits: Limits = field(default_factory=Limits)
    store: StoreConfig = field(default_factory=StoreConfig)
    metrics: MetricsConfig | None = None


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
    crl = _crl(tls)
    tls.done()
    state = root.section("state", required=True)
    state_dir = state.path("dir")
    state.done()
    store = root.section("store")
    backend = store.choice("backend", StoreBackend, StoreBackend.SQLITE)
    blob_grace = store.float(
        "unreferenced_blob_grace_s",
        UNREFERENCED_BLOB_GRACE_S,
        min=MIN_UNREFERENCED_BLOB_GRACE_S,
    )
    store.done()
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
    max_model_bytes, limits = _limits(root.section("limits"))
    metrics = metrics_config(root.section("metrics"))
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
        max_model_bytes=max_model_bytes,
        limits=limits,
        store=StoreConfig(backend=backend, unreferenced_blob_grace_s=blob_grace),
        metrics=metrics,
    )


def _crl(tls: Section) -> Path | None:
    """``[tls].crl``: a CRL file, or None when it says ``"none"``; absent is an error."""
    if tls.value("crl", None) is None:
        raise ConfigError(
            tls.key("crl"),
            "is required: name the CA's revocation list (confide pki init writes crl.pem), "
            f'or set crl = "{NO_CRL}" to run without revocation',
            reason=Reason.MISSING_KEY,
        )
    if tls.value("crl") == NO_CRL:
        return None
    path: Path = tls.path("crl", must_exist=True)
    return path


def _limits(sec: Section) -> tuple[int, Limits]:
    """``[limits]``: the job model size limit, and the per-peer and server-wide limits."""
    d = Limits()
    max_model = sec.int("max_model_bytes", DEFAULT_MAX_MODEL_BYTES, min=1)
    limits = Limits(
        peer_calls=sec.int("peer_calls", d.peer_calls, min=1, max=CALL_POOL - 1),
        peer_transfers=sec.int("peer_transfers", d.peer_transfers, min=1, max=1024),
        peer_rate=sec.float("peer_rate", d.peer_rate, min=0.0, min_exclusive=True),
        peer_burst=sec.int("peer_burst", d.peer_burst, min=1),
        peer_bytes_in_flight=sec.int("peer_bytes_in_flight", d.peer_bytes_in_flight, min=1),
        transfers=sec.int("transfers", d.transfers, min=1, max=1024),
        task_streams=sec.int("task_streams", d.task_streams, min=1, max=4096),
        bytes_in_flight=sec.int("bytes_in_flight", d.bytes_in_flight, min=1),
        stream_idle_s=sec.float("stream_idle_s", d.stream_idle_s, min=0.0, min_exclusive=True),
    )
    if limits.peer_transfers >= limits.transfers:
        # One peer must never be able to take every transfer slot.
        raise ConfigError(sec.key("peer_transfers"), "must be below limits.transfers")
    if limits.peer_bytes_in_flight > limits.bytes_in_flight:
        raise ConfigError(sec.key("peer_bytes_in_flight"), "must not exceed bytes_in_flight")
    if max_model > limits.peer_bytes_in_flight:
        # Else a job could be accepted whose updates no site may ever upload.
        raise ConfigError(sec.key("max_model_bytes"), "must not exceed peer_bytes_in_flight")
    sec.done()
    return max_model, limits


def _check_listen(key: str, listen: str) -> None:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(key, f"must be host:port (port 0-65535), got {listen!r}")
