"""confide.pki's public types mean what they say (its exact __all__ is pinned in
tests/test_import_rules.py)."""

from __future__ import annotations

import confide.pki


def test_role_values() -> None:
    """Role values are the strings written into certificates."""
    assert [r.value for r in confide.pki.Role] == ["site", "aggregator", "operator"]


def test_bad_certificate_is_a_peer_error() -> None:
    """BadCertificate sits under PeerError with reason BAD_CERTIFICATE."""
    from confide.errors import PeerError, Reason

    err = confide.pki.BadCertificate("x")
    assert isinstance(err, PeerError) and err.reason is Reason.BAD_CERTIFICATE
