"""The site's federation identity in force, and its reload on SIGHUP without a restart.

The identity is what ``[tls]`` in agent.toml names: the certificate, the TLS key, the Ed25519
signing key, the federation CA and its CRL. ``IdentityHolder.reload`` re-reads them and checks
them as start-up does (``load_identity``: the chain, the keys against the certificate, the
CRL's signature, the validity) plus what a reload could break: still a site certificate of
this federation for this site (``check``), and a CRL not older than the one in force. Only
then does the new identity replace the old; a file that fails is refused and the identity in
force stays, so a half-copied certificate never takes a site off the federation.

When the new identity takes effect:

- the connection to the aggregator: from the next one (``for_connection``). An established
  task stream is not dropped: the aggregator knows the site on it by the certificate of its
  TLS handshake, so the stream keeps that certificate and the signing key it binds until it
  ends (the aggregator ends it if a CRL revokes that certificate, and the session reconnects
  with the new one);
- the CA and CRL that verify job signers and other sites: from the next task (``trust``).

A certificate that has expired does not stop the daemon: it starts (``load_identity(...,
allow_expired=True)``), says so (``certificate_expired``, with the date and the fix, at start
and once a day), and ``for_connection`` refuses to dial with it, so the session keeps trying
on its backoff until a reload brings a renewed certificate.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from confide.errors import ConfigError
from confide.pki import BadCertificate, CertificateExpired, Identity
from confide.pki.crl import check_crl
from confide.pki.expiry import RENEW_FIX

__all__ = ["IdentityHolder"]


class IdentityHolder:
    """Owner of the site's identity in force; ``reload`` replaces it only with a sound one.

    Args:
        identity: the identity loaded at start (it may have expired).
        load: loads the identity's files again (``load_identity`` on ``[tls]``'s paths).
        check: raises ``ConfigError`` for an identity this site may not use (another
            federation or site, not a site certificate).
    """

    def __init__(
        self,
        identity: Identity,
        *,
        load: Callable[[], Identity],
        check: Callable[[Identity], None],
    ) -> None:
        self._load, self._check = load, check
        self._lock = threading.Lock()
        self._identity = identity

    def current(self) -> Identity:
        """The identity in force."""
        with self._lock:
            return self._identity

    def trust(self) -> tuple[bytes, bytes | None]:
        """The CA and CRL in force, which verify job signers and other sites' keys."""
        identity = self.current()
        return identity.ca_pem, identity.crl_pem

    def for_connection(self, *, now: datetime) -> Identity:
        """The identity a new connection presents and signs with.

        Args:
            now: the time to check its validity at.

        Raises:
            CertificateExpired: the certificate has expired; dialling would only be refused.
        """
        identity = self.current()
        end = identity.info.not_after
        if end < now:
            raise CertificateExpired(
                f"the site certificate expired on {end:%Y-%m-%d %H:%M} UTC; {RENEW_FIX}",
                not_after=end,
            )
        return identity

    def reload(self) -> Identity:
        """Re-read and check the identity's files; put them in force if they pass.

        Returns:
            the identity now in force.

        Raises:
            ConfigError: naming the file or key at fault; the identity in force stays.
        """
        new = self._load()
        old = self.current()
        if new.info.name != old.info.name:
            raise ConfigError(
                "tls.cert",
                f"names site {new.info.name!r}, not {old.info.name!r}; a site's name does not "
                "change by a reload",
            )
        self._check(new)
        if new.crl_pem is not None:
            try:
                check_crl(new.crl_pem, ca_pem=new.ca_pem, in_force=old.crl_pem)
            except BadCertificate as exc:
                raise ConfigError("tls.crl", exc.message) from None
        with self._lock:
            self._identity = new
        return new
