"""The audit hash chain: each entry's hash covers the previous hash and the entry itself.

``hash_n = sha256(hash_{n-1} || canonical_json(entry_n))`` with ``hash_0 = 32 zero bytes``,
where the canonical JSON has sorted keys, no spaces and UTF-8 text. Changing, removing or
reordering any stored entry changes every later hash, which ``verify_chain`` detects.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from confide.errors import InternalError

__all__ = ["GENESIS", "AuditEntry", "AuditTampered", "entry_hash", "verify_chain"]

GENESIS = bytes(32)
"""The ``prev_hash`` of the first entry."""


class AuditTampered(InternalError):
    """A stored audit entry does not match the hash chain."""


@dataclass(frozen=True)
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
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(prev_hash: bytes, entry: AuditEntry) -> bytes:
    """``sha256(prev_hash || canonical_json(entry))``."""
    return hashlib.sha256(prev_hash + entry.canonical()).digest()


def verify_chain(entries: Iterable[AuditEntry]) -> int:
    """Check a whole chain from its first entry; returns the number of entries.

    Raises:
        AuditTampered: names the first entry whose sequence, link or hash is wrong.
    """
    prev = GENESIS
    n = 0
    for e in entries:
        n += 1
        if e.seq != n:
            raise AuditTampered(f"audit entry {e.seq} is out of sequence (expected {n})")
        if e.prev_hash != prev:
            raise AuditTampered(f"audit entry {e.seq} does not link to entry {e.seq - 1}")
        if entry_hash(prev, e) != e.hash:
            raise AuditTampered(f"audit entry {e.seq} was altered")
        prev = e.hash
    return n
