"""Real gRPC mutual TLS on 127.0.0.1: only clients holding a certificate from our CA get in."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from confide import pki
from confide.errors import ConfideError

from .conftest import Federation

_TIMEOUT = 10.0


class _RecordingHealth(health.HealthServicer):  # type: ignore[misc]
    """Health servicer that identifies every caller with peer_info before answering."""

    def __init__(self, ca_pem: bytes, crl: Callable[[], bytes]) -> None:
        super().__init__()
        self._ca_pem = ca_pem
        self._crl = crl
        self.seen: list[pki.CertInfo] = []

    def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext):
        """Answer only callers whose certificate verifies, including against the CRL."""
        try:
            info = pki.peer_info(
                context, ca_pem=self._ca_pem, crl_pem=self._crl(), now=datetime.now(UTC)
            )
        except ConfideError as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.reason.value)
        self.seen.append(info)
        return super().Check(request, context)


def create_server(identity: pki.Identity, crl: Callable[[], bytes]) -> tuple[grpc.Server, int]:
    """Start an mTLS health server on 127.0.0.1 port 0 and return it with its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = _RecordingHealth(identity.ca_pem, crl)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", pki.server_credentials(identity))
    server.start()
    server.servicer = servicer  # type: ignore[attr-defined]
    return server, port


@pytest.fixture(scope="module")
def aggregator(fed: Federation) -> pki.Identity:
    """The aggregator identity, issued with the default SANs (localhost, 127.0.0.1, agg)."""
    pki.issue(fed.ca_dir, "agg", role=pki.Role.AGGREGATOR)
    return fed.identity(fed.ca_dir, "agg")


@pytest.fixture(scope="module")
def served(fed: Federation, aggregator: pki.Identity) -> Iterator[tuple[grpc.Server, int]]:
    """A running mTLS health server for the whole module."""
    server, port = create_server(aggregator, lambda: fed.crl_pem)
    yield server, port
    server.stop(grace=None).wait()


def _check(port: int, creds: grpc.ChannelCredentials, **options: str) -> str:
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=list(options.items())) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=_TIMEOUT
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _refused(port: int, creds: grpc.ChannelCredentials, **options: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        _check(port, creds, **options)
    return err.value


def test_site_with_ca_certificate_is_served_and_identified(
    fed: Federation, served: tuple[grpc.Server, int], tmp_path: Path
) -> None:
    """A site holding a CA-issued certificate gets an answer; the server sees its name and role."""
    server, port = served
    fed.enroll_site(tmp_path, "site-ok")
    site = fed.identity(tmp_path, "site-ok")
    assert _check(port, pki.channel_credentials(site)) == "SERVING"
    info = server.servicer.seen[-1]  # type: ignore[attr-defined]
    assert (info.name, info.role) == ("site-ok", pki.Role.SITE)
    assert info.signing_public_key == bytes(site.signing_key.verify_key)


def test_target_name_override_checks_the_aggregator_name(
    fed: Federation, served: tuple[grpc.Server, int], tmp_path: Path
) -> None:
    """With ssl_target_name_override the server cert is checked against DNS:<aggregator name>."""
    _, port = served
    fed.enroll_site(tmp_path, "site-ovr")
    creds = pki.channel_credentials(fed.identity(tmp_path, "site-ovr"))
    override = "grpc.ssl_target_name_override"
    assert _check(port, creds, **{override: "agg"}) == "SERVING"
    err = _refused(port, creds, **{override: "not-the-aggregator"})
    assert err.code() is grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_is_refused(served: tuple[grpc.Server, int]) -> None:
    """An insecure (plaintext) channel cannot call the server."""
    _, port = served
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch, pytest.raises(grpc.RpcError) as err:
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=_TIMEOUT)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


def test_tls_client_without_certificate_is_refused(
    fed: Federation, served: tuple[grpc.Server, int]
) -> None:
    """A TLS client that trusts the CA but presents no certificate is refused."""
    _, port = served
    err = _refused(port, grpc.ssl_channel_credentials(root_certificates=fed.ca_pem))
    assert err.code() is grpc.StatusCode.UNAVAILABLE


def test_client_with_foreign_ca_certificate_is_refused(
    fed: Federation, foreign: Federation, served: tuple[grpc.Server, int]
) -> None:
    """A client presenting a certificate from another CA is refused in the handshake."""
    server, port = served
    pki.issue(foreign.ca_dir, "site-evil", role=pki.Role.SITE)
    evil = foreign.identity(foreign.ca_dir, "site-evil")
    creds = grpc.ssl_channel_credentials(
        root_certificates=fed.ca_pem,
        private_key=evil.tls_key_pem,
        certificate_chain=evil.cert_pem,
    )
    before = len(server.servicer.seen)  # type: ignore[attr-defined]
    assert _refused(port, creds).code() is grpc.StatusCode.UNAVAILABLE
    assert len(server.servicer.seen) == before  # type: ignore[attr-defined]


def test_revoked_site_passes_handshake_but_is_refused_by_peer_info(
    fed: Federation, served: tuple[grpc.Server, int], tmp_path: Path
) -> None:
    """gRPC ignores the CRL, so peer_info in the handler is what refuses a revoked site."""
    _, port = served
    fed.enroll_site(tmp_path, "site-rev")
    creds = pki.channel_credentials(fed.identity(tmp_path, "site-rev"))
    assert _check(port, creds) == "SERVING"
    pki.revoke(fed.ca_dir, "site-rev")
    err = _refused(port, creds)
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == "bad_certificate"


def test_client_refuses_server_from_foreign_ca(
    fed: Federation, foreign: Federation, tmp_path: Path
) -> None:
    """A site will not talk to an 'aggregator' whose certificate another CA issued."""
    pki.issue(foreign.ca_dir, "agg-evil", role=pki.Role.AGGREGATOR)
    server, port = create_server(foreign.identity(foreign.ca_dir, "agg-evil"), lambda: b"")
    try:
        fed.enroll_site(tmp_path, "site-wary")
        err = _refused(port, pki.channel_credentials(fed.identity(tmp_path, "site-wary")))
        assert err.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace=None).wait()


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
"""HTTP/2 client connection preface followed by an empty SETTINGS frame."""

_SETTINGS = bytes([0x04, 0x00, 0x00, 0x00, 0x00, 0x00])
"""Type, flags and stream id 0 of a server SETTINGS frame: proof that HTTP/2 got through."""

_needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")


def _s_client(port: int, ca: Path, *extra: str, timeout: float) -> tuple[int | None, bytes, bytes]:
    """Run openssl s_client, send an HTTP/2 preface, close input, wait for the server's verdict.

    Returns the exit code (``None`` when the server kept the connection open past
    ``timeout``), stdout (the bytes the server sent, plus s_client's text) and stderr.
    """
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca)]
    argv += ["-alpn", "h2", "-ign_eof", *extra]
    try:
        proc = subprocess.run(
            argv, input=_H2_PREFACE, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:  # the server kept the connection open
        out = exc.stdout if isinstance(exc.stdout, bytes) else b""
        return None, out, b""
    return proc.returncode, proc.stdout, proc.stderr


@_needs_openssl
def test_openssl_client_without_certificate_cannot_complete(
    fed: Federation, served: tuple[grpc.Server, int], tmp_path: Path
) -> None:
    """openssl s_client without a client certificate is cut off before any HTTP/2 reply."""
    _, port = served
    ca = tmp_path / "ca.crt"
    ca.write_bytes(fed.ca_pem)
    rc, out, err = _s_client(port, ca, "-brief", timeout=30)
    text = (out + err).decode(errors="replace").lower()
    assert rc is not None, "server kept a certificate-less connection open"
    assert rc != 0 or "alert" in text, text
    assert _SETTINGS not in out, "server answered HTTP/2 without a client certificate"


@_needs_openssl
def test_openssl_client_with_certificate_gets_http2_settings(
    fed: Federation, served: tuple[grpc.Server, int]
) -> None:
    """Control: the same s_client run with a CA-issued certificate gets the server's SETTINGS."""
    _, port = served
    ca = fed.ca_dir / "ca.crt"
    cert, key = fed.ca_dir / "agg.crt", fed.ca_dir / "agg.key"
    rc, out, _ = _s_client(port, ca, "-quiet", "-cert", str(cert), "-key", str(key), timeout=3)
    assert rc is None  # still connected: the server accepted the client
    assert _SETTINGS in out
