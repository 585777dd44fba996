"""The aggregator's TLS material in force, and its reload on SIGHUP without a restart.

gRPC reads a server's certificate once, when its credentials are made, unless they come with
a certificate-configuration fetcher (``grpc.dynamic_ssl_server_credentials``): gRPC calls
the fetcher before each new connection's handshake, and a configuration it returns is used
from then on. ``ServerTls.reload`` re-reads the identity's files (certificate, TLS key,
signing key, CA, CRL) and checks them as start-up does (``load_identity``: the chain, the keys
against the certificate, the CRL's signature, the validity) plus what a reload could break:
the certificate is still an aggregator's of this federation, and the CRL is not older than
the one in force (``Guard.check_trust``). Only then does it switch: new handshakes present
the new certificate, and the peer checks (``Guard``) use the new CA and CRL. A file that
fails is refused with the log event ``tls_reload_refused`` and an audit entry; the material
in force stays, and the daemon goes on serving.

Established connections are not dropped: their handshake is done, and each call on them is
still verified against the CA and CRL in force, so the connections of sites a new CRL
revokes lose their calls and their task streams (``Guard.use_trust``) and the others go on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
import structlog

from aggregator.guard import Guard
from aggregator.store import AuditNote, Store
from confide.errors import ConfigError
from confide.pki import BadCertificate, Identity, Role

__all__ = ["ServerTls"]

log = structlog.get_logger("aggregator.tls")


def _configuration(identity: Identity) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(identity.tls_key_pem, identity.cert_pem)], root_certificates=identity.ca_pem
    )


class ServerTls:
    """Owner of the server's identity in force; hands gRPC a new one after a reload.

    Args:
        identity: the identity loaded at start.
        load: loads the identity's files again (``load_identity`` on the config's paths).
        federation: the federation the certificate must keep belonging to.
        guard: verifies peers; told the new CA and CRL.
        store: where reloads are audited.
        clock: unix seconds, for audit entries.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        load: Callable[[], Identity],
        federation: str,
        guard: Guard,
        store: Store,
        clock: Callable[[], float],
    ) -> None:
        self._load, self._federation = load, federation
        self._guard, self._store, self._clock = guard, store, clock
        self._lock = threading.Lock()
        self._identity = identity
        self._pending: grpc.ServerCertificateConfiguration | None = None

    def current(self) -> Identity:
        """The identity new handshakes present (after a reload: the reloaded one)."""
        with self._lock:
            return self._identity

    def credentials(self) -> grpc.ServerCredentials:
        """mTLS server credentials whose certificate follows ``reload`` (clients must show a
        certificate from the CA in force)."""
        return grpc.dynamic_ssl_server_credentials(
            _configuration(self.current()), self._fetch, require_client_authentication=True
        )

    def reload(self) -> bool:
        """Re-read and check the files; switch to them, or keep the material in force.

        Logs (and audits) ``tls_reloaded`` or ``tls_reload_refused`` naming the file or key
        at fault. Never raises for a bad file.

        Returns:
            whether the new material is in force.
        """
        try:
            new = self._checked(self._load())
            self._guard.check_trust(ca_pem=new.ca_pem, crl_pem=new.crl_pem)
        except (ConfigError, BadCertificate) as exc:
            key = exc.key if isinstance(exc, ConfigError) else "tls.crl"
            error = exc.problem if isinstance(exc, ConfigError) else exc.message
            log.error("tls_reload_refused", key=key, error=error, kept="the material in force")
            self._audit("tls_reload_refused", reason=exc.reason.value, detail=f"{key}: {error}")
            return False
        with self._lock:
            self._identity = new
            self._pending = _configuration(new)
        self._guard.use_trust(ca_pem=new.ca_pem, crl_pem=new.crl_pem)
        info = new.info
        log.info(
            "tls_reloaded",
            name=info.name,
            serial=f"{info.serial:x}",
            not_after=info.not_after.isoformat(),
        )
        self._audit(
            "tls_reloaded",
            detail=f"certificate serial {info.serial:x}, valid until {info.not_after:%Y-%m-%d}",
        )
        return True

    def _checked(self, new: Identity) -> Identity:
        """``new`` if it may replace the identity in force (role and federation kept)."""
        if new.info.role is not Role.AGGREGATOR:
            raise ConfigError(
                "tls.cert", f"is a {new.info.role.value} certificate, not an aggregator's"
            )
        if new.info.federation != self._federation:
            raise ConfigError(
                "tls.cert",
                f"belongs to federation {new.info.federation!r}, not {self._federation!r}",
            )
        return new

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher, called before each handshake: the new configuration once, else None."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def _audit(self, event: str, *, reason: str = "", detail: str) -> None:
        try:
            self._store.audit(
                AuditNote(
                    event=event, actor="aggregator", at=self._clock(), reason=reason, detail=detail
                )
            )
        except Exception as exc:  # a reload must not fail because the audit did
            log.error("audit_failed", error=repr(exc))
