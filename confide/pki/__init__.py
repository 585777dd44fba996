"""Federation PKI: one CA per federation, identities with a TLS key and an Ed25519 signing key.

Every identity (site, aggregator, operator) holds two private keys it made itself: an ECDSA
P-256 TLS key (the certificate's subject key, because gRPC's BoringSSL does not negotiate
Ed25519 certificates by default) and an Ed25519 signing key (signs every protocol message),
whose public half the certificate binds in a custom extension, next to the role.

Modules: ``certinfo`` (what a certificate says, ``verify_certificate``), ``files`` (layout,
0600 key writing), ``ca`` (CA, issue), ``crl`` (revocation), ``csr`` (enrollment),
``renew`` (a new certificate for existing keys), ``expiry`` (time left, the 14-day check),
``identity`` (loading one's own files), ``tls`` (gRPC credentials and peer identity).
"""

from __future__ import annotations

from confide.pki.ca import init_ca, issue
from confide.pki.certinfo import (
    BadCertificate,
    CertificateExpired,
    CertInfo,
    Role,
    verify_certificate,
)
from confide.pki.crl import revoke
from confide.pki.csr import enroll, make_key_and_csr, sign_csr
from confide.pki.expiry import (
    EXPIRY_WARNING,
    CertificateExpiresSoon,
    check_expiry,
    seconds_until_expiry,
)
from confide.pki.identity import Identity, load_identity
from confide.pki.renew import renew
from confide.pki.tls import (
    channel_credentials,
    peer_info,
    require_role,
    server_credentials,
)

__all__ = [
    "EXPIRY_WARNING",
    "BadCertificate",
    "CertInfo",
    "CertificateExpired",
    "CertificateExpiresSoon",
    "Identity",
    "Role",
    "channel_credentials",
    "check_expiry",
    "enroll",
    "init_ca",
    "issue",
    "load_identity",
    "make_key_and_csr",
    "peer_info",
    "renew",
    "require_role",
    "revoke",
    "seconds_until_expiry",
    "server_credentials",
    "sign_csr",
    "verify_certificate",
]
