"""Federation PKI: one CA per federation, identities with a TLS key and an Ed25519 signing key.

Every identity (site, aggregator, operator) holds two private keys it made itself: an ECDSA
P-256 TLS key (the certificate's subject key, because gRPC's BoringSSL does not negotiate
Ed25519 certificates by default) and an Ed25519 signing key (signs every protocol message),
whose public half the certificate binds in a custom extension, next to the role.

Modules: ``certinfo`` (what a certificate says, ``verify_certificate``), ``files`` (layout,
0600 key writing), ``ca`` (CA, issue), ``crl`` (revocation), ``csr`` (enrollment),
``identity`` (loading one's own files), ``tls`` (gRPC credentials and peer identity).
"""

from __future__ import annotations

from confide.pki.ca import init_ca, issue
from confide.pki.certinfo import BadCertificate, CertInfo, Role, verify_certificate
from confide.pki.crl import revoke
from confide.pki.csr import enroll, make_key_and_csr, sign_csr
from confide.pki.identity import Identity, load_identity
from confide.pki.tls import (
    channel_credentials,
    peer_info,
    require_role,
    server_credentials,
)

__all__ = [
    "BadCertificate",
    "CertInfo",
    "Identity",
    "Role",
    "channel_credentials",
    "enroll",
    "init_ca",
    "issue",
    "load_identity",
    "make_key_and_csr",
    "peer_info",
    "require_role",
    "revoke",
    "server_credentials",
    "sign_csr",
    "verify_certificate",
]
