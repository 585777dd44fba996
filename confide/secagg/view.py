"""What binds one SecAgg+ round together: its session id and the view its sites sign.

Session id (Bell et al., CCS 2020, Sec. 5 assume an honestly drawn graph; here nobody draws
it alone). Every site signs its round keys (``RoundKeys``, envelope stage SECAGG_KEYS); the
server forwards every such envelope of the round U1 to every site, and

    sid = SHA-256("confide/secagg/v1/session" || round_id || for u in sorted(U1): u || D_u)

with D_u = SHA-256(canonical bytes || signature) of u's envelope (``keys_digest``). Each site
verifies every envelope, recomputes sid, the graph (seeded by sid), the degree and the
threshold, and binds its shares and its consistency signature to sid. Two sites that were
shown different sets U1 have different sids: neither accepts the other's shares.

What the server can still choose, stated honestly: which advertisements make up U1 (every
one must be validly signed by a certified site for this job, round and attempt, and
``RoundRules.params(|U1|)`` must hold), and a site colluding with it can choose its own keys.
Both only bias a sparse graph's ring order; against a server without colluding sites the
guarantee below holds for every graph, and up to ``graph.COMPLETE_MAX`` sites the graph is
complete, so there is nothing to bias.

View (the consistency check of Bonawitz et al., CCS 2017, Sec. 4, round 3, extended to the
share stage). After the masked inputs, each survivor signs

    V = SHA-256("confide/secagg/v1/view" || sid || sorted U2 || sorted E || sorted U3)

where U2 = sites whose shares were routed, E = the pairs that do not mask with each other
because one rejected the other's share, U3 = sites whose masked inputs are in the sum. A site
reveals shares only for the view it signed itself, and only once it holds valid signatures
on that same V from ``quorum`` distinct sites of U3 (``SecAggParams.quorum`` > (n + c)/2, so
no two different views of one session can both collect it).

Why that suffices (each site also checks t <= k + 1 < 2t, that U3 is a subset of U2, that its
partners are exactly N(u) in U2 minus E, and that it has at least t - 1 of them): a sum over a
set C of survivors is computable only if every u in C has its self-mask seed b_u rebuilt from
t revealed shares. Every site that reveals holds the one view V that reached quorum, so the
holders that reveal b_u are u's partners under V and are in U3, hence in C; a u in C with
another view still has, since t - 1 partners and t revealers cannot be disjoint among k
neighbours when 2t > k + 1, a partner under V in C. So |C| >= t: the server learns only sums
of at least t inputs, whatever it tells whom.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

__all__ = ["keys_digest", "pair", "session_id", "view_digest"]

_SESSION = b"confide/secagg/v1/session"
_VIEW = b"confide/secagg/v1/view"
_KEYS = b"confide/secagg/v1/keys"


def _field(data: bytes) -> bytes:
    """Length-prefix ``data`` (4 bytes big-endian) so concatenations cannot be ambiguous."""
    return len(data).to_bytes(4, "big") + data


def _names(names: Iterable[str]) -> bytes:
    """Encode a set of site ids in sorted order, with its size first."""
    items = sorted(set(names))
    return len(items).to_bytes(4, "big") + b"".join(_field(s.encode("utf-8")) for s in items)


def keys_digest(canonical: bytes, signature: bytes) -> bytes:
    """D_u: the digest of one signed round-keys envelope (its canonical bytes and signature).

    Args:
        canonical: ``confide.wire.canonical_bytes`` of the envelope.
        signature: its Ed25519 signature.
    """
    return hashlib.sha256(_KEYS + _field(canonical) + _field(signature)).digest()


def session_id(round_id: str, digests: Mapping[str, bytes]) -> bytes:
    """sid over the round id and every site's ``keys_digest`` (see the module docstring)."""
    h = hashlib.sha256(_SESSION + _field(round_id.encode("utf-8")))
    h.update(len(digests).to_bytes(4, "big"))
    for site in sorted(digests):
        h.update(_field(site.encode("utf-8")) + _field(digests[site]))
    return h.digest()


def pair(a: str, b: str) -> tuple[str, str]:
    """An unordered pair of distinct sites, in canonical (sorted) order."""
    if a == b:
        raise ValueError("a pair needs two distinct sites")
    return (a, b) if a < b else (b, a)


def view_digest(
    session: bytes,
    *,
    shared: Iterable[str],
    excluded: Iterable[tuple[str, str]],
    survivors: Iterable[str],
) -> bytes:
    """V over sid, U2, the excluded pairs E and U3 (see the module docstring)."""
    pairs = sorted({pair(a, b) for a, b in excluded})
    h = hashlib.sha256(_VIEW + _field(session) + _names(shared))
    h.update(len(pairs).to_bytes(4, "big"))
    for a, b in pairs:
        h.update(_field(a.encode("utf-8")) + _field(b.encode("utf-8")))
    h.update(_names(survivors))
    return h.digest()
