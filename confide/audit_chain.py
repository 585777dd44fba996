"""The audit hash chain shared by the aggregator's and the site's audit logs.

``hash_n = sha256(hash_{n-1} || canonical_json(entry_n))`` with ``hash_0 = 32 zero bytes``,
where the canonical JSON has sorted keys, no spaces and UTF-8 text. Changing, removing or
reordering any stored entry changes every later hash, which ``verify_chain`` detects.

Pure: the stores that keep the entries (``aggregator.store``, ``agent.local.audit``) own the
files; this module only hashes and checks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from confide.errors import InternalError

__all__ = ["GENESIS", "AuditTampered", "Linked", "canonical_json", "link_hash", "verify_chain"]

GENESIS = bytes(32)
"""The ``prev_hash`` of the first entry."""


class AuditTampered(InternalError):
    """A stored audit entry does not match the hash chain."""


class Linked(Protocol):
    """An entry of a chain: its position, its links and its canonical content."""

    @property
    def seq(self) -> int: ...

    @property
    def prev_hash(self) -> bytes: ...

    @property
    def hash(self) -> bytes: ...

    def canonical(self) -> bytes: ...


def canonical_json(body: Mapping[str, Any]) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes an entry's hash covers."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def link_hash(prev_hash: bytes, canonical: bytes) -> bytes:
    """``sha256(prev_hash || canonical)``."""
    return hashlib.sha256(prev_hash + canonical).digest()


def verify_chain(entries: Iterable[Linked]) -> int:
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
        if link_hash(prev, e.canonical()) != e.hash:
            raise AuditTampered(f"audit entry {e.seq} was altered")
        prev = e.hash
    return n
