"""How long a certificate has left, the check that says "renew it now", and when to say so.

A site whose certificate expires can no longer connect, and an aggregator whose certificate
expires is refused by every site, so expiry is announced ahead: within ``EXPIRY_WARNING``
(14 days) of its end a certificate is warned about in the daemons' logs (at start, then once
a day: ``ExpiryReminder``), by ``doctor`` (``check_expiry``), and in metrics
(``seconds_until_expiry``). Everything here is pure: the time is always a parameter (STYLE
rule 3), so tests move the clock instead of waiting for it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import NameOID

from confide.errors import ConfideError, Reason
from confide.pki.certinfo import CertificateExpired, CertInfo

__all__ = [
    "EXPIRY_WARNING",
    "EXPIRY_WARN_DAYS",
    "REMIND_EVERY",
    "RENEW_FIX",
    "Certificate",
    "CertificateExpired",
    "CertificateExpiresSoon",
    "Expiry",
    "ExpiryNotice",
    "ExpiryReminder",
    "Validity",
    "check_expiry",
    "expiry",
    "seconds_until_expiry",
]

EXPIRY_WARNING = timedelta(days=14)
"""A certificate with less than this left is warned about (logs, doctor, metrics alerts)."""

EXPIRY_WARN_DAYS = EXPIRY_WARNING.days
"""The same window in days, as the doctor and metrics say it. Two weeks leaves time for a CSR
round trip to the operator (``confide pki renew``) over holidays."""

REMIND_EVERY = timedelta(days=1)
"""A running daemon repeats the warning this often while it holds."""

RENEW_FIX = (
    "renew it on the CA machine (confide pki renew CERT --dir CA), put the new file in place "
    "of the old one, then reload the daemon (systemctl reload UNIT, or kill -HUP its pid); "
    "no restart is needed"
)
"""The fix a warning names (README: Certificates)."""

Certificate = x509.Certificate | CertInfo
"""Anything whose end of validity is known: a parsed certificate or verified ``CertInfo``."""


class CertificateExpiresSoon(ConfideError):
    """A certificate is still valid but ends within the warning window.

    Not a peer's fault and not (yet) a refusal: the operator is to renew it.

    Args:
        message: what ends and when.
        not_after: the end of its validity, timezone-aware UTC.
    """

    default_reason = Reason.BAD_CERTIFICATE

    def __init__(self, message: str, *, not_after: datetime) -> None:
        super().__init__(message)
        self.not_after = not_after


class Validity(enum.Enum):
    """Where a moment falls in a certificate's validity window."""

    VALID = "valid"
    EXPIRING = "expiring"  # valid, but less than the warning window left
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"


@dataclass(frozen=True)
class Expiry:
    """A certificate's validity at one moment.

    Args:
        validity: where ``now`` falls.
        seconds_left: seconds until ``not_after`` (negative once expired); what a metric shows.
        not_after: the end of validity.
    """

    validity: Validity
    seconds_left: float
    not_after: datetime

    @property
    def days_left(self) -> int:
        """Whole days left (0 on the last day; negative once expired)."""
        return int(self.seconds_left // 86400)


def expiry(
    *, not_before: datetime, not_after: datetime, now: datetime, within: timedelta = EXPIRY_WARNING
) -> Expiry:
    """Classify ``now`` against the window ``[not_before, not_after]``: the one rule that the
    doctor, the daemons' logs and reminders, metrics and ``check_expiry`` all apply.

    Expired once ``now`` is past ``not_after``; expiring with less than ``within`` left (the
    last valid instant included); not yet valid before ``not_before``.

    Args:
        not_before: the certificate's start of validity, timezone-aware.
        not_after: its end of validity, timezone-aware.
        now: the moment to judge, timezone-aware.
        within: the warning window (default 14 days).
    """
    left = not_after - now
    if now < not_before:
        validity = Validity.NOT_YET_VALID
    elif now > not_after:
        validity = Validity.EXPIRED
    elif left < within:
        validity = Validity.EXPIRING
    else:
        validity = Validity.VALID
    return Expiry(validity=validity, seconds_left=left.total_seconds(), not_after=not_after)


def _not_after(cert: Certificate) -> datetime:
    return cert.not_after if isinstance(cert, CertInfo) else cert.not_valid_after_utc


def _name(cert: Certificate) -> str:
    if isinstance(cert, CertInfo):
        return cert.name
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else cert.subject.rfc4514_string()


def _serial(cert: Certificate) -> int:
    return cert.serial if isinstance(cert, CertInfo) else cert.serial_number


def seconds_until_expiry(cert: Certificate, *, now: datetime) -> float:
    """Seconds from ``now`` to the end of ``cert``'s validity; negative once it has expired.

    Args:
        cert: a parsed certificate or the ``CertInfo`` of a verified one.
        now: the time to measure from, timezone-aware.

    Raises:
        TypeError: ``now`` is naive (a certificate's times are UTC).
    """
    return (_not_after(cert) - now).total_seconds()


def check_expiry(cert: Certificate, *, now: datetime, within: timedelta = EXPIRY_WARNING) -> None:
    """Pass when ``cert`` stays valid for at least ``within`` after ``now``.

    Judged by ``expiry`` (a certificate not yet valid passes here: TLS reports that).

    Args:
        cert: a parsed certificate or the ``CertInfo`` of a verified one.
        now: the time to check at, timezone-aware.
        within: the warning window (default 14 days).

    Raises:
        CertificateExpired: its validity ended before ``now``.
        CertificateExpiresSoon: it ends within ``within`` of ``now``.
    """
    end = _not_after(cert)
    verdict = expiry(not_before=_EPOCH, not_after=end, now=now, within=within)
    if verdict.validity is Validity.EXPIRED:
        raise CertificateExpired(
            f"certificate of {_name(cert)!r} expired on {end:%Y-%m-%d %H:%M} UTC; {RENEW_FIX}",
            not_after=end,
        )
    if verdict.validity is Validity.EXPIRING:
        raise CertificateExpiresSoon(
            f"certificate of {_name(cert)!r} expires on {end:%Y-%m-%d %H:%M} UTC, in "
            f"{verdict.days_left} days; {RENEW_FIX}",
            not_after=end,
        )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ExpiryNotice:
    """One log line due about one certificate.

    Args:
        event: ``certificate_expiring`` (still valid) or ``certificate_expired``.
        which: what the certificate is to the daemon (``certificate``, ``ca``).
        name: the certificate's subject name.
        not_after: the end of its validity.
        seconds_left: from the check's ``now``; negative once expired.
    """

    event: str
    which: str
    name: str
    not_after: datetime
    seconds_left: float

    @property
    def expired(self) -> bool:
        """Whether the certificate has already expired (an error, not a warning)."""
        return self.event == "certificate_expired"

    def fields(self) -> dict[str, object]:
        """The log event's keys: which, name, the date, days left and the fix."""
        return {
            "which": self.which,
            "name": self.name,
            "not_after": self.not_after.isoformat(),
            "days_left": round(self.seconds_left / 86400, 1),
            "fix": RENEW_FIX,
        }


@dataclass
class ExpiryReminder:
    """Says when a running daemon should warn about a certificate that ends soon.

    A notice is due for a certificate within the window the first time it is seen in its
    state (expiring, or expired) and then once per ``every``; a renewed certificate (another
    serial) is a new one, so nothing is said about it until it, too, nears its end.

    Args:
        within: the warning window.
        every: how often a warning that still holds is repeated.
    """

    within: timedelta = EXPIRY_WARNING
    every: timedelta = REMIND_EVERY
    _said: dict[tuple[str, int, str], datetime] = field(default_factory=dict, repr=False)

    def due(self, certs: Mapping[str, Certificate], *, now: datetime) -> list[ExpiryNotice]:
        """The notices to log now, one per certificate that needs one.

        Args:
            certs: the certificates to watch, by what they are to the daemon
                (``{"certificate": identity.info, "ca": ca_cert}``).
            now: the time to check at, timezone-aware.
        """
        notices = []
        for which, cert in certs.items():
            verdict = expiry(
                not_before=_EPOCH, not_after=_not_after(cert), now=now, within=self.within
            )
            if verdict.validity is Validity.VALID:
                continue
            expired = verdict.validity is Validity.EXPIRED
            event = "certificate_expired" if expired else "certificate_expiring"
            key = (which, _serial(cert), event)
            last = self._said.get(key)
            if last is not None and now - last < self.every:
                continue
            self._said[key] = now
            notices.append(
                ExpiryNotice(
                    event=event,
                    which=which,
                    name=_name(cert),
                    not_after=_not_after(cert),
                    seconds_left=verdict.seconds_left,
                )
            )
        return notices
