"""The audit hash chain: each entry's hash covers the previous hash and the entry itself.

``hash_n = sha256(hash_{n-1} || canonical_json(entry_n))`` with ``hash_0 = 32 zero bytes``,
where the canonical JSON has sorted keys, no spaces and UTF-8 text. Changing, removing or
reordering any stored entry changes every later hash, which ``verify_chain`` detects.
The chain itself is ``confide.audit_chain`` (the site's audit trail uses the same one).
"""

from __future__ import annotations

from dataclasses import dataclass

from confide.audit_chain import GENESIS, AuditTampered, canonical_json, link_hash, verify_chain

__all__ = ["GENESIS", "AuditEntry", "AuditTampered", "entry_hash", "verify_chain"]


@dataclass(frozen=True, kw_only=True)
class AuditEntry:
    """One audit record as stored.

    Args:
        seq: position in the chain, from 1.
        at: unix seconds.
        event: stable event name, e.g. ``update_refused``.
        actor: who caused it (site, operator or ``aggregator``).
        job: job id or "".
        round: round number or 0.
        reason: a ``confide.errors.Reason`` value or "".
        detail: free text for humans.
        prev_hash: the previous entry's hash.
        hash: this entry's hash.
    """

    seq: int
    at: float
    event: str
    actor: str
    job: str
    round: int
    reason: str
    detail: str
    prev_hash: bytes = GENESIS
    hash: bytes = b""

    def canonical(self) -> bytes:
        """The canonical JSON bytes of the entry's content (not its hashes)."""
        body = {
            "seq": self.seq,
            "at": self.at,
            "event": self.event,
            "actor": self.actor,
            "job": self.job,
            "round": self.round,
            "reason": self.reason,
            "detail": self.detail,
        }
        return canonical_json(body)


def entry_hash(prev_hash: bytes, entry: AuditEntry) -> bytes:
    """``sha256(prev_hash || canonical_json(entry))``."""
    return link_hash(prev_hash, entry.canonical())
