"""The federation's revocation list ``crl.pem``: write it, and add certificates to it.

gRPC does not read CRLs, so revocation is enforced by ``verify_certificate`` (called by
``peer_info`` on every RPC). Daemons re-read ``crl.pem`` when told to (SIGHUP; the aggregator
also when the file changes); the file is replaced atomically, so a reader never sees half of
it, and ``check_crl`` decides whether a new one may replace the one in force.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from confide.errors import ConfigError
from confide.pki import files
from confide.pki.certinfo import BadCertificate, load_pem_certificate

__all__ = ["CRL_DAYS", "check_crl", "revoke", "write_crl"]

CRL_DAYS = 3650
"""``nextUpdate`` of the CRL; the CRL is replaced whenever a certificate is revoked."""

_BACKDATE = timedelta(minutes=5)
"""lastUpdate is set this far in the past so peers with slightly slow clocks accept it."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def write_crl(
    directory: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    revoked: Sequence[x509.RevokedCertificate],
    now: datetime,
) -> None:
    """Sign a CRL listing ``revoked`` and atomically replace ``directory/crl.pem`` with it.

    Args:
        directory: the CA directory.
        ca_cert: the CA certificate (issuer name).
        ca_key: the CA private key.
        revoked: every entry the new CRL must list (earlier ones included).
        now: lastUpdate (minus a 5-minute backdate); nextUpdate is ``CRL_DAYS`` later.

    Raises:
        ConfigError: the file cannot be written.
    """
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + timedelta(days=CRL_DAYS))
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    files.replace_public(directory / files.CRL, crl.public_bytes(serialization.Encoding.PEM))


def check_crl(crl_pem: bytes, *, ca_pem: bytes, in_force: bytes | None = None) -> None:
    """Accept a revocation list to put in force in place of ``in_force``.

    It must be a PEM CRL issued and signed by the CA, and, when ``in_force`` is the same
    CA's, not older than it (``lastUpdate``): an old copy of the file would otherwise
    un-revoke every certificate revoked since.

    Args:
        crl_pem: the new revocation list, PEM.
        ca_pem: the CA certificate it must come from, PEM.
        in_force: the revocation list it replaces, PEM, or None.

    Raises:
        BadCertificate: not a PEM CRL, not this CA's, or older than the one in force.
    """
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
    except ValueError:
        raise BadCertificate("revocation list is not a PEM CRL") from None
    ca = load_pem_certificate(ca_pem)
    key = ca.public_key()
    if (
        crl.issuer != ca.subject
        or not isinstance(key, ec.EllipticCurvePublicKey)
        or not crl.is_signature_valid(key)
    ):
        raise BadCertificate("revocation list is not signed by the configured CA")
    if in_force is None:
        return
    try:
        old = x509.load_pem_x509_crl(in_force)
    except ValueError:
        return  # nothing sound in force: anything this CA signed is better
    if old.issuer == crl.issuer and crl.last_update_utc < old.last_update_utc:
        raise BadCertificate(
            f"revocation list of {crl.last_update_utc.isoformat()} is older than the one in "
            f"force ({old.last_update_utc.isoformat()})"
        )


def _issued_to(ca_directory: Path, name: str) -> list[x509.Certificate]:
    candidates = sorted((ca_directory / files.ISSUED).glob("*.crt"))
    own = ca_directory / f"{files.check_name(name)}.crt"
    if own.exists():
        candidates.append(own)
    found: dict[int, x509.Certificate] = {}
    for path in candidates:
        try:
            cert = load_pem_certificate(files.read_bytes(path))
        except BadCertificate:
            continue
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if cns and cns[0].value == name:
            found[cert.serial_number] = cert
    return list(found.values())


def revoke(
    ca_directory: Path, name_or_cert: str | bytes | Path, *, now: datetime | None = None
) -> None:
    """Add certificates to the CA's revocation list ``crl.pem`` (idempotent).

    Args:
        ca_directory: the CA directory.
        name_or_cert: an identity name (every certificate this CA issued to it is revoked),
            a certificate PEM (``bytes``), or the ``Path`` of a certificate file.
        now: revocation time; defaults to the current UTC time.

    Raises:
        ConfigError: no usable CA, no certificate issued to that name, or a certificate that
            this CA did not issue.
    """
    now = now or _utcnow()
    ca_cert, ca_key = files.load_ca(ca_directory)
    if isinstance(name_or_cert, str):
        targets = _issued_to(ca_directory, name_or_cert)
        if not targets:
            raise ConfigError(
                "name", f"no certificate issued to {name_or_cert!r} in {ca_directory}"
            )
    else:
        source = str(name_or_cert) if isinstance(name_or_cert, Path) else "certificate"
        pem = files.read_bytes(name_or_cert) if isinstance(name_or_cert, Path) else name_or_cert
        try:
            targets = [load_pem_certificate(pem)]
        except BadCertificate as exc:
            raise ConfigError(source, str(exc)) from None
    for cert in targets:
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise ConfigError("certificate", "was not issued by this CA") from exc
    crl_path = ca_directory / files.CRL
    revoked: list[x509.RevokedCertificate] = []
    if crl_path.exists():
        try:
            revoked = list(x509.load_pem_x509_crl(files.read_bytes(crl_path)))
        except ValueError as exc:
            raise ConfigError(str(crl_path), f"not a PEM CRL: {exc}") from None
    known = {r.serial_number for r in revoked}
    for cert in targets:
        if cert.serial_number not in known:
            revoked.append(
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(now)
                .build()
            )
            known.add(cert.serial_number)
    write_crl(ca_directory, ca_cert, ca_key, revoked=revoked, now=now)
