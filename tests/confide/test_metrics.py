"""The shared metrics pieces: the [metrics] table, the HTTP endpoint, the certificate collector."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, Counter

from confide.config import parse_toml
from confide.errors import ConfigError, Reason
from confide.metrics import (
    ADDRESS_FILE,
    CertificateCollector,
    MetricsConfig,
    metrics_config,
    serve_metrics,
)
from tests.support.scrape import metrics_address, scrape


def _read(text: str) -> MetricsConfig | None:
    root = parse_toml(text)
    cfg = metrics_config(root.section("metrics"))
    root.done()
    return cfg


def test_no_metrics_table_or_no_listen_means_no_endpoint():
    """Metrics are off by default: no table, or a table without listen, gives no endpoint."""
    assert _read("") is None
    assert _read("[metrics]\n") is None
    assert _read("[metrics]\nallow_non_loopback = false\n") is None


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:9464", "127.0.0.1", 9464),
        ("127.8.0.1:0", "127.8.0.1", 0),
        ("[::1]:9464", "::1", 9464),
        ("localhost:65535", "localhost", 65535),
    ],
)
def test_loopback_addresses_are_accepted(listen, host, port):
    """A loopback host:port (IPv4, bracketed IPv6, localhost) needs nothing more."""
    assert _read(f'[metrics]\nlisten = "{listen}"\n') == MetricsConfig(host=host, port=port)


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:9464", "192.0.2.7:9464", "[::]:9464", "metrics.example.org:9464"]
)
def test_a_wider_address_must_be_allowed_explicitly(listen):
    """A non-loopback address (or a name that may resolve anywhere) is refused naming
    metrics.listen unless allow_non_loopback = true says it is meant."""
    with pytest.raises(ConfigError) as err:
        _read(f'[metrics]\nlisten = "{listen}"\n')
    assert err.value.key == "metrics.listen"
    assert "allow_non_loopback" in err.value.message
    cfg = _read(f'[metrics]\nlisten = "{listen}"\nallow_non_loopback = true\n')
    assert cfg is not None and cfg.address == listen


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('listen = "9464"', "metrics.listen"),
        ('listen = "127.0.0.1"', "metrics.listen"),
        ('listen = ":9464"', "metrics.listen"),
        ('listen = "127.0.0.1:65536"', "metrics.listen"),
        ('listen = "127.0.0.1:-1"', "metrics.listen"),
        ('listen = "::1:9464"', "metrics.listen"),
        ('listen = "[localhost]:9464"', "metrics.listen"),
        ('listen = ""', "metrics.listen"),
        ("listen = 9464", "metrics.listen"),
        ('allow_non_loopback = "yes"', "metrics.allow_non_loopback"),
        ("port = 9464", "metrics.port"),
    ],
)
def test_bad_values_are_refused_naming_the_key(text, key):
    """A malformed address, a wrong type or an unknown key is a ConfigError naming its key."""
    with pytest.raises(ConfigError) as err:
        _read(f"[metrics]\n{text}\n")
    assert err.value.key == key
    if key == "metrics.port":
        assert err.value.reason is Reason.UNKNOWN_KEY


def _registry(value: float) -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("test_things", "things", registry=registry).inc(value)
    return registry


def test_the_endpoint_serves_its_own_registry_on_the_bound_port(tmp_path):
    """Port 0 binds a free port, written to the state folder; a real GET returns the registry's
    samples and only those (two endpoints in one process do not mix), and stop closes it."""
    one = serve_metrics(_registry(3), MetricsConfig("127.0.0.1", 0), state_dir=tmp_path)
    two = serve_metrics(_registry(5), MetricsConfig("127.0.0.1", 0))
    assert one is not None and two is not None
    try:
        assert metrics_address(tmp_path) == one.address != two.address
        assert not one.address.endswith(":0")
        assert scrape(one.address).get("test_things_total") == 3
        assert scrape(two.address).get("test_things_total") == 5
    finally:
        two.stop()
        one.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://{one.address}/metrics", timeout=5)


def test_no_config_serves_nothing_and_removes_a_stale_address(tmp_path):
    """Without [metrics] nothing listens, and an address file a previous run left is removed."""
    (tmp_path / ADDRESS_FILE).write_text("127.0.0.1:1\n")
    assert serve_metrics(_registry(1), None, state_dir=tmp_path) is None
    assert not (tmp_path / ADDRESS_FILE).exists()


def test_a_taken_port_is_a_config_error_naming_metrics_listen(tmp_path):
    """An address already in use is refused as the config's fault, naming metrics.listen."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            serve_metrics(_registry(1), MetricsConfig("127.0.0.1", port), state_dir=tmp_path)
    assert err.value.key == "metrics.listen"
    assert not (tmp_path / ADDRESS_FILE).exists()


def _cert(not_before: datetime, not_after: datetime) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site-1")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _watching(pem: list[bytes], now: datetime) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(CertificateCollector("t", lambda: pem[0], clock=now.timestamp))
    return registry


def _read_certificate(registry: CollectorRegistry) -> tuple[float, str]:
    seconds = registry.get_sample_value("t_certificate_expiry_seconds")
    assert seconds is not None
    states = [
        s
        for s in ("valid", "expiring", "expired", "not_yet_valid")
        if registry.get_sample_value("t_certificate_validity", {"t_certificate_validity": s})
    ]
    assert len(states) == 1
    return seconds, states[0]


@pytest.mark.parametrize(
    ("at", "state"),
    [
        (timedelta(days=-1), "not_yet_valid"),
        (timedelta(days=1), "valid"),
        (timedelta(days=76), "valid"),  # 14 days and 1 second left
        (timedelta(days=76, seconds=2), "expiring"),  # just under 14 days left
        (timedelta(days=90), "expiring"),  # the last moment
        (timedelta(days=90, seconds=1), "expired"),
    ],
)
def test_certificate_figures_follow_the_doctors_expiry_rule(at, state):
    """Seconds left and the validity state come from the same 14-day rule as the doctor's,
    on both sides of each edge; seconds go negative once the certificate has ended."""
    start = datetime(2030, 1, 1, tzinfo=UTC)
    pem = [_cert(start, start + timedelta(days=90))]
    seconds, got = _read_certificate(_watching(pem, start + at))
    assert got == state
    assert seconds == pytest.approx((timedelta(days=90) - at).total_seconds())


def test_a_reloaded_certificate_shows_at_the_next_scrape():
    """The collector asks for the certificate in force at each scrape, so a renewal shows."""
    start = datetime(2030, 1, 1, tzinfo=UTC)
    pem = [_cert(start, start + timedelta(days=20))]
    registry = _watching(pem, start + timedelta(days=10))
    assert _read_certificate(registry)[1] == "expiring"
    pem[0] = _cert(start, start + timedelta(days=400))
    seconds, state = _read_certificate(registry)
    assert state == "valid" and seconds == pytest.approx(390 * 86400)
