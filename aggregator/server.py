"""Build the aggregator's gRPC server: mTLS, both services, health, bound port.

``create_server(config) -> (server, port)`` so tests bind port 0 (STYLE rule 2). Once it
serves, the bound ``host:port`` is written atomically to ``<state.dir>/address`` so tests and
``confide demo`` can find it (and know it is up, also after a restart on a fixed port).

The TLS material comes from ``ServerTls`` (``aggregator.credentials``): SIGHUP reloads the
certificate, keys, CA and CRL (``Aggregator.reload_tls``) without a restart.

With ``[metrics] listen`` set, the Prometheus endpoint (``aggregator.metrics``) is bound
before the server starts, so a bad address stops the start (exit 2) rather than leaving the
server running without the metrics the operator asked for; its bound address is written to
``<state.dir>/metrics-address``.

Blobs that no row names are removed once past ``[store] unreferenced_blob_grace_s`` by
``Aggregator.collector`` (``aggregator.blob_collection``), a thread of its own that
``confide-aggregator`` starts once it logs that it listens; ``stop`` ends it.

Every call goes through ``QuotaInterceptor`` (per-peer limits, one handler pool per class
of call, idle streams cancelled). The HTTP/2 option ``grpc.max_concurrent_streams`` bounds
the streams one connection may have open at the server, so a peer that queues thousands of
calls queues them in its own memory, not the aggregator's.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from aggregator.admin import AdminServicer
from aggregator.blob_collection import BlobCollector
from aggregator.config import AggregatorConfig
from aggregator.coordinator import Coordinator
from aggregator.credentials import ServerTls
from aggregator.guard import Guard
from aggregator.interceptor import QuotaInterceptor, make_pools
from aggregator.metrics import AggregatorMetrics
from aggregator.quota import Quotas
from aggregator.servicer import FederationServicer
from aggregator.store import AuditNote, Store, open_blobs, open_store
from confide.errors import ConfigError
from confide.metrics import MetricsServer, serve_metrics
from confide.pki import Identity, load_identity
from confide.v1 import admin_pb2_grpc, federation_pb2_grpc
from confide.wire.blob import MAX_MESSAGE_BYTES

__all__ = ["MAX_STREAMS_PER_CONNECTION", "MAX_WORKERS", "Aggregator", "create_server"]

MAX_WORKERS = 8
"""Threads of gRPC's own pool; every Confide method runs on its class's pool instead
(``aggregator.interceptor.make_pools``), so only unknown methods are answered here."""

MAX_STREAMS_PER_CONNECTION = 16
"""HTTP/2 streams one connection may have open at once. An agent uses at most a handful
(its task stream, a heartbeat, a transfer, a report); further calls wait in the client."""


@dataclass
class Aggregator:
    """The running parts, for a graceful stop.

    ``collector`` is built but not started: the daemon starts it (``aggregator.main``), so an
    in-process test server collects only when its test asks.
    """

    server: grpc.Server
    coordinator: Coordinator
    store: Store
    interceptor: QuotaInterceptor
    tls: ServerTls
    metrics: AggregatorMetrics
    metrics_server: MetricsServer | None = None
    collector: BlobCollector | None = None

    def reload_tls(self) -> bool:
        """Reload certificate, keys, CA and CRL (SIGHUP); False: refused, the old stay."""
        return self.tls.reload()

    def stop(self, grace: float | None = 5.0) -> None:
        """End task streams, stop serving (waiting ``grace`` seconds), close the store."""
        self.coordinator.stop()
        self.server.stop(grace).wait()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.collector is not None:
            self.collector.stop()  # a no-op when it was never started
        self.interceptor.stop()
        self.store.close()


def create_server(
    config: AggregatorConfig,
    *,
    identity: Identity | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[grpc.Server, int]:
    """Create and start the server; see ``build`` for the parts.

    Raises:
        ConfigError: PKI files are unusable or the address cannot be bound.
    """
    agg, port = build(config, identity=identity, clock=clock)
    return agg.server, port


def build(
    config: AggregatorConfig,
    *,
    identity: Identity | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[Aggregator, int]:
    """Open the store, resume running jobs, bind and start serving.

    Args:
        config: the aggregator's configuration.
        identity: a loaded identity (default: loaded from ``config``'s tls files).
        clock: unix-seconds clock.

    Raises:
        ConfigError: PKI files are unusable (naming the file) or ``server.listen`` cannot be
            bound.
    """

    def load() -> Identity:
        return load_identity(
            cert=config.cert,
            key=config.key,
            signing_key=config.signing_key,
            ca=config.ca,
            crl=config.crl,
        )

    if identity is None:
        identity = load()
    store = open_store(config.store, state_dir=config.state_dir)
    blobs = open_blobs(config.store, state_dir=config.state_dir, clock=clock)
    metrics = AggregatorMetrics()
    coord = Coordinator(
        store,
        blobs,
        site_timeout_s=config.site_timeout_s,
        max_retries=config.max_round_retries,
        retry_backoff_s=config.retry_backoff_s,
        federation=config.federation,
        clock=clock,
        on_dropouts=metrics.dropped_out,
    )
    guard = Guard(
        store,
        federation=config.federation,
        ca_pem=identity.ca_pem,
        crl_pem=identity.crl_pem,
        clock=clock,
        crl_path=config.crl,
        metrics=metrics,
    )
    guard.on_crl_change = lambda: coord.drop_invalid(guard.check_cert)
    tls = ServerTls(
        identity, load=load, federation=config.federation, guard=guard, store=store, clock=clock
    )
    metrics.watch(
        store=store,
        connected=lambda: len(coord.connected()),
        certificate=lambda: tls.current().cert_pem,  # after a SIGHUP reload: the new one
        clock=clock,
    )
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
    ]
    quotas = Quotas(config.limits)

    def audit_refused(peer: str, reason: str, count: int) -> None:
        note = f"{count} calls refused since the last entry"
        store.audit(
            AuditNote(event="peer_throttled", actor=peer, at=clock(), reason=reason, detail=note)
        )

    interceptor = QuotaInterceptor(
        quotas,
        make_pools(quotas),
        on_refused=audit_refused,
        metrics=metrics,
        count_bytes=config.metrics is not None,
    )
    server = grpc.server(
        ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="rpc"),
        options=options,
        interceptors=[interceptor],
    )
    federation_pb2_grpc.add_FederationServicer_to_server(
        FederationServicer(
            guard,
            coord,
            blobs,
            quotas,
            max_update_bytes=config.max_update_bytes,
            max_concurrent_uploads=config.max_concurrent_uploads,
            heartbeat_interval_s=config.heartbeat_interval_s,
        ),
        server,
    )
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminServicer(guard, coord, blobs, max_model_bytes=config.max_model_bytes), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_secure_port(config.listen, tls.credentials())
    except RuntimeError as exc:
        interceptor.stop()
        store.close()
        raise ConfigError("server.listen", f"cannot bind {config.listen}: {exc}") from exc
    if port == 0:
        interceptor.stop()
        store.close()
        raise ConfigError("server.listen", f"cannot bind {config.listen}")
    try:
        metrics_server = serve_metrics(metrics.registry, config.metrics, state_dir=config.state_dir)
    except ConfigError:
        interceptor.stop()
        store.close()
        raise
    coord.start()
    server.start()
    for service in ("", "confide.v1.Federation", "confide.v1.Admin"):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    collector = BlobCollector(
        store, blobs, grace_s=config.store.unreferenced_blob_grace_s, clock=clock
    )
    host = config.listen.rpartition(":")[0]
    _write_atomic(config.state_dir / "address", f"{host}:{port}\n")
    agg = Aggregator(server, coord, store, interceptor, tls, metrics, metrics_server, collector)
    return agg, port


def _write_atomic(path: os.PathLike[str], text: str) -> None:
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".address-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
