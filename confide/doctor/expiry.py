"""When a certificate is too close to its end: the 14-day warning, one rule for every reporter.

The doctor, the daemons' logs and their metrics all ask ``expiry`` so they agree on what is
"expiring soon": a certificate with less than ``EXPIRY_WARN_DAYS`` left is a warning (time to
renew, ``confide pki renew``), one past its end or not yet valid is a failure (TLS refuses
it). Pure: the time is a parameter.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from confide.pki.expiry import EXPIRY_WARNING

__all__ = ["EXPIRY_WARN_DAYS", "Expiry", "Validity", "expiry"]

EXPIRY_WARN_DAYS = EXPIRY_WARNING.days  # one number for doctor, logs and metrics
"""Warn this many days before a certificate ends: two weeks leaves time for a CSR round trip
to the operator (``confide pki renew``, issue 13 item 6) over holidays."""


class Validity(enum.Enum):
    """Where ``now`` falls in a certificate's validity window."""

    VALID = "valid"
    EXPIRING = "expiring"  # valid, but less than EXPIRY_WARN_DAYS left
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


def expiry(*, not_before: datetime, not_after: datetime, now: datetime) -> Expiry:
    """Classify ``now`` against the window ``[not_before, not_after]``.

    Args:
        not_before: the certificate's start of validity, timezone-aware.
        not_after: its end of validity, timezone-aware.
        now: the moment to judge, timezone-aware.
    """
    left = (not_after - now).total_seconds()
    if now < not_before:
        validity = Validity.NOT_YET_VALID
    elif now > not_after:
        validity = Validity.EXPIRED
    elif not_after - now < timedelta(days=EXPIRY_WARN_DAYS):
        validity = Validity.EXPIRING
    else:
        validity = Validity.VALID
    return Expiry(validity=validity, seconds_left=left, not_after=not_after)
