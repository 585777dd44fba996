"""gRPC mutual-TLS credentials from an ``Identity``, and who is calling.

How integrators use it:

- Server (aggregator)::

      server.add_secure_port("0.0.0.0:7443", server_credentials(identity))

  Clients must present a certificate chaining to the federation CA; gRPC (BoringSSL) aborts
  the handshake otherwise. gRPC does **not** read the CRL: every handler must call
  ``peer_info(context, ca_pem=..., crl_pem=..., now=...)`` (which re-verifies the peer's
  certificate, federation, extensions and revocation) and then ``require_role``.

- Client (agent, operator CLI)::

      grpc.secure_channel(target, channel_credentials(identity), options=options)

  gRPC checks the aggregator's certificate against the CA and against the *target host name*.
  The aggregator's certificate carries ``DNS:<aggregator name>`` plus the SANs given at issue
  time (default ``DNS:localhost`` and ``IP:127.0.0.1``). When a client connects to an address
  that is not in those SANs (e.g. ``127.0.0.1`` against a cert issued with ``--dns`` only, or a
  bare IP behind NAT), the config names the aggregator's identity and the client passes
  ``options=[("grpc.ssl_target_name_override", "<aggregator name>")]`` so the name check uses
  the certificate's ``DNS:<aggregator name>`` SAN instead. That option changes which name is
  checked, never whether it is checked; chain verification against the CA always happens.

Insecure channels are not offered (STYLE rule 12).
"""

from __future__ import annotations

from datetime import datetime

import grpc

from confide.errors import Unauthorized
from confide.pki.certinfo import CertInfo, Role, verify_certificate
from confide.pki.identity import Identity

__all__ = [
    "TARGET_NAME_OVERRIDE",
    "channel_credentials",
    "peer_info",
    "require_role",
    "server_credentials",
]

TARGET_NAME_OVERRIDE = "grpc.ssl_target_name_override"
"""gRPC channel option naming the host name the server certificate is checked against."""


def server_credentials(identity: Identity) -> grpc.ServerCredentials:
    """Server-side mTLS credentials: present our certificate, require a CA-issued client one.

    Args:
        identity: the server's identity (normally role aggregator).
    """
    return grpc.ssl_server_credentials(
        [(identity.tls_key_pem, identity.cert_pem)],
        root_certificates=identity.ca_pem,
        require_client_auth=True,
    )


def channel_credentials(identity: Identity) -> grpc.ChannelCredentials:
    """Client-side mTLS credentials: trust only the federation CA and present our certificate.

    Args:
        identity: the client's identity (site or operator).
    """
    return grpc.ssl_channel_credentials(
        root_certificates=identity.ca_pem,
        private_key=identity.tls_key_pem,
        certificate_chain=identity.cert_pem,
    )


def peer_info(
    context: grpc.ServicerContext, *, ca_pem: bytes, crl_pem: bytes | None, now: datetime
) -> CertInfo:
    """Return the verified certificate facts of the peer of an RPC.

    Args:
        context: the servicer context of the current RPC.
        ca_pem: the federation CA certificate, PEM.
        crl_pem: the CA's revocation list, PEM, or ``None``.
        now: the time to check validity at.

    Raises:
        Unauthorized: the peer presented no certificate (not a TLS peer).
        BadCertificate: the certificate fails ``verify_certificate`` (e.g. revoked).
    """
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert") if auth else None
    if not pems:
        raise Unauthorized("peer presented no client certificate")
    pem = pems[0]
    if isinstance(pem, str):
        pem = pem.encode("ascii")
    return verify_certificate(bytes(pem), ca_pem=ca_pem, crl_pem=crl_pem, now=now)


def require_role(info: CertInfo, *roles: Role) -> None:
    """Allow the call only when the peer's role is one of ``roles``.

    Args:
        info: the peer's verified certificate facts (from ``peer_info``).
        roles: the roles allowed to make this call.

    Raises:
        Unauthorized: the peer's role is not among ``roles``.
    """
    if info.role not in roles:
        allowed = ", ".join(r.value for r in roles) or "nobody"
        raise Unauthorized(f"{info.name!r} has role {info.role.value!r}; this call needs {allowed}")
