"""Prometheus metrics shared by both daemons: the ``[metrics]`` table, the endpoint, certificates.

Off by default. ``[metrics] listen = "127.0.0.1:9464"`` serves one daemon's metrics over
plain HTTP at that address with prometheus_client's own server (``start_http_server``), so
a Prometheus on the same host (or a node exporter's textfile, or an SSH tunnel) scrapes it.
The endpoint has no authentication and no TLS, so it listens on a loopback address unless
the config also says ``allow_non_loopback = true``: a wider address must be chosen on
purpose, never reached by a typo. The figures are counts and durations, never data or keys,
but dataset and event names are in the labels.

Each daemon builds its own ``CollectorRegistry`` (``aggregator.metrics``,
``agent.local.metrics``); nothing here touches prometheus_client's global default registry,
so two daemons built in one process (the tests) never collide.

``CertificateCollector`` reports the certificate in force at each scrape with the functions
the doctor and the logs use: seconds left (``confide.pki.seconds_until_expiry``), and
whether it is valid, expiring (less than 14 days left: renew), expired or not yet valid
(``confide.pki.expiry.expiry``, 14 days).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from cryptography import x509
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric, StateSetMetricFamily

from confide.config import Section
from confide.errors import ConfigError
from confide.pki import seconds_until_expiry
from confide.pki.expiry import Validity, expiry

__all__ = [
    "ADDRESS_FILE",
    "CertificateCollector",
    "MetricsConfig",
    "MetricsServer",
    "metrics_config",
    "serve_metrics",
]

ADDRESS_FILE = "metrics-address"
"""The file in the daemon's state folder that holds the bound ``host:port`` once it serves."""

_LOOPBACK_NAMES = frozenset({"localhost"})


@dataclass(frozen=True)
class MetricsConfig:
    """Where a daemon serves its metrics (``[metrics]``).

    Args:
        host: the address to bind: an IP literal or a host name (without brackets).
        port: the TCP port; 0 picks a free one (the bound one is logged and written to
            ``<state.dir>/metrics-address``).
    """

    host: str
    port: int

    @property
    def address(self) -> str:
        """``host:port``, an IPv6 host in brackets."""
        return _join(self.host, self.port)


def metrics_config(sec: Section) -> MetricsConfig | None:
    """Read a daemon's ``[metrics]`` table; None (no endpoint) when ``listen`` is absent.

    Args:
        sec: the ``metrics`` table (empty when the file has none).

    Raises:
        ConfigError: ``metrics.listen`` is not ``host:port`` with a port 0-65535, or is not a
            loopback address while ``metrics.allow_non_loopback`` is not true.
    """
    listen: str | None = sec.str("listen", None)
    wide: bool = sec.bool("allow_non_loopback", False)
    sec.done()
    if listen is None:
        return None
    key = sec.key("listen")
    host, port = _split(key, listen)
    if not wide and not _is_loopback(host):
        raise ConfigError(
            key,
            f"{host} is not a loopback address; the metrics endpoint has no authentication, "
            "so serving it beyond this host needs metrics.allow_non_loopback = true",
        )
    return MetricsConfig(host=host, port=port)


def _split(key: str, listen: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); an IPv6 host must be bracketed (``[::1]:9464``)."""
    host, sep, port = listen.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535 or " " in host:
        raise ConfigError(key, f"must be host:port (port 0-65535), got {listen!r}")
    if ":" in host or bracketed:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(key, f"{host!r} is not an IPv6 address; got {listen!r}") from None
        if not bracketed:
            raise ConfigError(
                key, f"an IPv6 address goes in brackets, e.g. [::1]:9464; got {listen!r}"
            )
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve anywhere


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MetricsServer:
    """A running metrics endpoint; ``stop`` ends it.

    Args:
        httpd: prometheus_client's WSGI server.
        thread: the thread serving it.
    """

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self._httpd, self._thread = httpd, thread

    @property
    def address(self) -> str:
        """The bound ``host:port`` (the real port when the config said 0)."""
        host, port = self._httpd.server_address[:2]
        return _join(str(host), int(port))

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5.0)


def serve_metrics(
    registry: CollectorRegistry, config: MetricsConfig | None, *, state_dir: Path | None = None
) -> MetricsServer | None:
    """Serve ``registry`` over HTTP at ``config``'s address on a thread of its own.

    Args:
        registry: the daemon's own registry.
        config: where to listen; None: serve nothing (and remove a stale address file).
        state_dir: when given, the bound ``host:port`` is written atomically to
            ``<state_dir>/metrics-address`` once it serves (what tests and tools read).

    Raises:
        ConfigError: ``metrics.listen`` cannot be bound (in use, not an address of this host).
    """
    if config is None:
        if state_dir is not None:
            (state_dir / ADDRESS_FILE).unlink(missing_ok=True)
        return None
    try:
        httpd, thread = start_http_server(config.port, addr=config.host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            "metrics.listen", f"cannot bind {config.address}: {exc.strerror or exc}"
        ) from exc
    server = MetricsServer(httpd, thread)
    if state_dir is not None:
        _write_atomic(state_dir / ADDRESS_FILE, f"{server.address}\n")
    return server


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class CertificateCollector:
    """The certificate in force: seconds to its end and its validity, read at each scrape.

    Exposes ``<namespace>_certificate_expiry_seconds`` (negative once expired) and
    ``<namespace>_certificate_validity`` (a state set: valid, expiring, expired,
    not_yet_valid), by ``confide.pki.expiry.expiry``'s rule.

    Args:
        namespace: the metric name prefix (``confide_aggregator``, ``confide_agent``).
        certificate: the PEM of the certificate the daemon presents now (asked at each
            scrape, so a reloaded certificate shows at once).
        clock: unix seconds.
    """

    def __init__(
        self,
        namespace: str,
        certificate: Callable[[], bytes],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._namespace, self._certificate, self._clock = namespace, certificate, clock
        self._parsed: tuple[bytes, x509.Certificate] | None = None

    def describe(self) -> Iterator[Metric]:
        """The metrics' names, for the registry's duplicate check (no samples)."""
        yield self._seconds()
        yield self._validity()

    def collect(self) -> Iterator[Metric]:
        """Yield the two metrics for the certificate in force now."""
        cert = self._parse(self._certificate())
        now = datetime.fromtimestamp(self._clock(), UTC)
        seconds = self._seconds()
        seconds.add_metric([], seconds_until_expiry(cert, now=now))
        yield seconds
        e = expiry(
            not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc, now=now
        )
        validity = self._validity()
        validity.add_metric([], {v.value: v is e.validity for v in Validity})
        yield validity

    def _seconds(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            f"{self._namespace}_certificate_expiry_seconds",
            "Seconds until this daemon's certificate ends (negative once it has).",
        )

    def _validity(self) -> StateSetMetricFamily:
        return StateSetMetricFamily(
            f"{self._namespace}_certificate_validity",
            "This daemon's certificate: valid, expiring (under 14 days left), expired or "
            "not yet valid.",
        )

    def _parse(self, pem: bytes) -> x509.Certificate:
        """The parsed certificate, parsed again only when another PEM is in force."""
        parsed = self._parsed
        if parsed is None or parsed[0] != pem:
            parsed = (pem, x509.load_pem_x509_certificate(pem))
            self._parsed = parsed
        return parsed[1]
