"""The doctor's checks of a daemon's own identity files: keys, chain, expiry and the CRL.

Each returns ``Finding`` lines rather than raising at the first problem, so one run of the
doctor shows every broken file, each with its fix. They reuse the checks the daemons run at
start (``confide.pki``: ``verify_certificate``, the key parsers), split so that one problem
reads as one line: the chain is verified at a moment inside the certificate's validity, so an
expired certificate is the ``expiry`` line's failure, not also the chain's; a revoked one is
told apart from a foreign one, because their fixes differ.

Private keys must be mode 0600 (or stricter) and owned by the user the daemon runs as
(``daemon_uid``): the systemd units run it as ``confide``.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confide.doctor.checklist import Finding
from confide.errors import ConfideError
from confide.pki import files
from confide.pki.certinfo import BadCertificate, CertInfo, cert_info, verify_certificate
from confide.pki.expiry import EXPIRY_WARN_DAYS, Validity, expiry

__all__ = [
    "IdentityPaths",
    "chain_finding",
    "crl_finding",
    "daemon_uid",
    "expiry_finding",
    "key_findings",
    "read_cert_info",
]


@dataclass(frozen=True)
class IdentityPaths:
    """A daemon's identity files, and how its config names them.

    Args:
        ca, cert, key, signing_key: the files.
        crl: the CA's revocation list; None when the config names none.
        section: the config table that names them (``tls``), for messages.
        reissue: what to do for a new certificate (the fix of a bad or expiring one).
    """

    ca: Path
    cert: Path
    key: Path
    signing_key: Path
    crl: Path | None
    section: str
    reissue: str


def daemon_uid(state_dir: Path) -> int | None:
    """The user the daemon runs as, as far as the doctor can tell; None: unknown.

    The doctor's own user, unless that is root: then the owner of the state folder (which
    systemd's ``StateDirectory=`` gives to the daemon's ``User=``), or None before it exists.
    """
    uid = os.geteuid()
    if uid != 0:
        return uid
    try:
        return state_dir.stat().st_uid
    except OSError:
        return None


def key_findings(paths: IdentityPaths, *, owner_uid: int | None) -> list[Finding]:
    """The ``tls key`` and ``signing key`` lines: mode, owner, readable, matching the cert."""
    try:
        cert: x509.Certificate | None = x509.load_pem_x509_certificate(files.read_bytes(paths.cert))
    except (ConfideError, ValueError):
        cert = None
    info = _info_or_none(cert)

    def tls_match(data: bytes) -> str | None:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            return "is not an unencrypted PEM private key"
        if cert is None:
            return None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or files.spki(
            key.public_key()
        ) != files.spki(cert.public_key()):
            return f"does not match the certificate {paths.cert}"
        return None

    def signing_match(data: bytes) -> str | None:
        try:
            sk = files.parse_signing_key(data, source=str(paths.signing_key))
        except ConfideError as exc:
            return getattr(exc, "problem", str(exc))
        if info is not None and bytes(sk.verify_key) != info.signing_public_key:
            return f"does not match the certificate's signing key ({paths.cert})"
        return None

    return [
        _key_finding("tls key", paths.key, f"{paths.section}.key", owner_uid, tls_match, cert),
        _key_finding(
            "signing key",
            paths.signing_key,
            f"{paths.section}.signing_key",
            owner_uid,
            signing_match,
            cert,
        ),
    ]


def _key_finding(
    check: str,
    path: Path,
    key: str,
    owner_uid: int | None,
    matches: Callable[[bytes], str | None],
    cert: x509.Certificate | None,
) -> Finding:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Finding.fail(
            check,
            f"{path} does not exist",
            f"install the key that `enroll` made on this machine at {path}, or correct {key}",
        )
    except OSError as exc:
        return Finding.fail(check, f"{path}: {exc.strerror}", f"check the folders above {path}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return Finding.fail(
            check,
            f"{path}: mode {mode:o}: group or others may read it",
            f"chmod 600 {path}",
        )
    if owner_uid is not None and st.st_uid != owner_uid:
        return Finding.fail(
            check,
            f"{path} is owned by {_user(st.st_uid)}, not by the daemon's user {_user(owner_uid)}",
            f"chown {_user(owner_uid)}: {path}",
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Finding.fail(
            check, f"{path}: {exc.strerror}", f"chown the key to the daemon's user: {path}"
        )
    problem = matches(data)
    if problem is not None:
        return Finding.fail(
            check,
            f"{path} {problem}",
            "install the certificate signed from this key's CSR, or the key made with it",
        )
    matched = "matches the certificate" if cert is not None else "certificate unreadable (chain)"
    return Finding.ok(check, f"{path}: mode {mode:o}, owner {_user(st.st_uid)}, {matched}")


def read_cert_info(path: Path) -> CertInfo:
    """What the certificate at ``path`` says, not yet trusted (for the names check).

    Raises:
        ConfideError: the file is missing, unreadable, or not a federation certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(files.read_bytes(path))
    except ValueError:
        raise BadCertificate(f"{path} is not a PEM certificate") from None
    return cert_info(cert)


def chain_finding(paths: IdentityPaths, *, now: datetime) -> Finding:
    """The ``chain`` line: issued by the configured CA, fit for its role, not revoked."""
    check = "chain"
    try:
        ca_pem = files.read_bytes(paths.ca)
        ca = x509.load_pem_x509_certificate(ca_pem)
    except (ConfideError, ValueError) as exc:
        return Finding.fail(
            check,
            f"{paths.section}.ca {paths.ca}: {_why(exc, 'not a PEM certificate')}",
            "install the federation's ca.crt as the operator sent it",
        )
    try:
        pem = files.read_bytes(paths.cert)
        cert = x509.load_pem_x509_certificate(pem)
    except (ConfideError, ValueError) as exc:
        return Finding.fail(
            check,
            f"{paths.section}.cert {paths.cert}: {_why(exc, 'not a PEM certificate')}",
            paths.reissue,
        )
    start = max(ca.not_valid_before_utc, cert.not_valid_before_utc)
    end = min(ca.not_valid_after_utc, cert.not_valid_after_utc)
    if start > end:
        return Finding.fail(
            check, f"{paths.cert} is valid only when the CA {paths.ca} is not", paths.reissue
        )
    at = min(max(now, start), end)  # validity is the expiry line's concern
    try:
        info = verify_certificate(pem, ca_pem=ca_pem, now=at)
    except BadCertificate as exc:
        return Finding.fail(check, f"{paths.cert}: {exc} (CA {paths.ca})", paths.reissue)
    revocation = "no revocation list configured"
    if paths.crl is not None:
        crl = _crl_or_none(paths.crl, ca)
        if crl is None:
            revocation = "revocation not checked (see the crl line)"
        elif crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            return Finding.fail(
                check,
                f"{paths.cert} (serial {cert.serial_number:x}) is revoked in {paths.crl}",
                f"a revoked certificate cannot be reinstated: {paths.reissue}",
            )
        else:
            revocation = "not revoked"
    return Finding.ok(
        check,
        f"{info.role.value} certificate of {info.name!r} issued by the {info.federation!r} "
        f"CA; {revocation}",
    )


def expiry_finding(paths: IdentityPaths, *, now: datetime) -> Finding:
    """The ``expiry`` line: FAIL past the end (or before the start), warn in the last 14 days."""
    check = "expiry"
    found: list[tuple[str, x509.Certificate]] = []
    for what, path in (("certificate", paths.cert), ("CA certificate", paths.ca)):
        try:
            found.append((what, x509.load_pem_x509_certificate(files.read_bytes(path))))
        except (ConfideError, ValueError):
            return Finding.fail(check, f"{path} cannot be read (see chain)", paths.reissue)
    parts: list[str] = []
    worst: tuple[int, str, str] = (0, "", "")
    rank = {Validity.VALID: 0, Validity.EXPIRING: 1, Validity.EXPIRED: 2, Validity.NOT_YET_VALID: 2}
    for what, cert in found:
        e = expiry(
            not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc, now=now
        )
        end = f"{e.not_after:%Y-%m-%d %H:%M} UTC"
        if e.validity is Validity.NOT_YET_VALID:
            text = f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
            fix = "check this machine's clock (timedatectl; is NTP on?)"
        elif e.validity is Validity.EXPIRED:
            text = f"{what} expired at {end}"
            fix = _expiry_fix(what, paths)
        else:
            text = f"{what} valid until {end} ({e.days_left} days left)"
            fix = _expiry_fix(what, paths)
        parts.append(text)
        if rank[e.validity] > worst[0]:
            worst = (rank[e.validity], text, fix)
    if worst[0] == 0:
        return Finding.ok(check, "; ".join(parts))
    if worst[0] == 1:
        return Finding.warn(check, f"{worst[1]}: under {EXPIRY_WARN_DAYS} days", worst[2])
    return Finding.fail(check, worst[1], worst[2])


def _expiry_fix(what: str, paths: IdentityPaths) -> str:
    if what == "certificate":
        return paths.reissue
    return (
        "the federation CA itself ends: the operator makes a new CA (confide pki init) and "
        "every identity is issued again"
    )


def crl_finding(path: Path, ca_path: Path, *, now: datetime, key: str) -> Finding:
    """The ``crl`` line: the revocation list is readable, signed by the CA and current."""
    check = "crl"
    fix = "copy the CA's current crl.pem from the operator (confide pki revoke writes it)"
    try:
        ca = x509.load_pem_x509_certificate(files.read_bytes(ca_path))
    except (ConfideError, ValueError):
        return Finding.fail(check, f"cannot check {path}: the CA cannot be read (see chain)", fix)
    try:
        data = files.read_bytes(path)
    except ConfideError as exc:
        return Finding.fail(check, f"{key} {path}: {_why(exc, 'unreadable')}", fix)
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError:
        return Finding.fail(check, f"{key} {path} is not a PEM revocation list", fix)
    if _crl_or_none(path, ca) is None:
        return Finding.fail(check, f"{key} {path} is not signed by the CA {ca_path}", fix)
    entries = sum(1 for _ in crl)
    nxt = crl.next_update_utc
    if nxt is not None and nxt < now:
        return Finding.warn(
            check, f"{path}: its next update was due {nxt:%Y-%m-%d} and none came", fix
        )
    return Finding.ok(check, f"{path}: signed by the CA, {entries} revoked")


def _crl_or_none(path: Path, ca: x509.Certificate) -> x509.CertificateRevocationList | None:
    """The CRL at ``path`` when it is readable and signed by ``ca``; else None."""
    try:
        crl = x509.load_pem_x509_crl(files.read_bytes(path))
    except (ConfideError, ValueError):
        return None
    key = ca.public_key()
    if (
        crl.issuer != ca.subject
        or not isinstance(key, ec.EllipticCurvePublicKey)
        or not crl.is_signature_valid(key)
    ):
        return None
    return crl


def _info_or_none(cert: x509.Certificate | None) -> CertInfo | None:
    if cert is None:
        return None
    try:
        return cert_info(cert)
    except BadCertificate:
        return None


def _why(exc: Exception, fallback: str) -> str:
    if isinstance(exc, ConfideError):
        return getattr(exc, "problem", str(exc))
    return fallback


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
