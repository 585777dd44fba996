"""The public surface of confide.pki is exactly the agreed API."""

from __future__ import annotations

import confide.pki

EXPECTED = {
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
}


def test_all_is_exact() -> None:
    """confide.pki.__all__ lists exactly the agreed names, and each one resolves."""
    assert set(confide.pki.__all__) == EXPECTED
    assert len(confide.pki.__all__) == len(EXPECTED)
    for name in EXPECTED:
        assert getattr(confide.pki, name) is not None


def test_role_values() -> None:
    """Role values are the strings written into certificates."""
    assert [r.value for r in confide.pki.Role] == ["site", "aggregator", "operator"]


def test_bad_certificate_is_a_peer_error() -> None:
    """BadCertificate sits under PeerError with reason BAD_CERTIFICATE."""
    from confide.errors import PeerError, Reason

    err = confide.pki.BadCertificate("x")
    assert isinstance(err, PeerError) and err.reason is Reason.BAD_CERTIFICATE
