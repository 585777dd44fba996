"""A whole SecAgg+ round in memory, with dropouts injected at any stage, for the tests.

Signatures are not modelled here (``confide.secagg`` takes verified keys and attestations);
``tests/agent/test_secure.py`` and the attack tests cover the signed layer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np

from confide import secagg as sa

ROUND_ID = "fed/job/1"


@dataclass
class Outcome:
    """What a simulated round produced."""

    server: sa.ServerRound
    clients: dict[str, sa.ClientState]
    inputs: dict[str, np.ndarray]
    result: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    rejected: dict[str, dict[str, object]] = field(default_factory=dict)
    replies: dict[str, sa.UnmaskReply] = field(default_factory=dict)


def digest(site: str, keys: sa.AdvertisedKeys) -> bytes:
    """A stand-in for the digest of a site's signed keys envelope."""
    return hashlib.sha256(site.encode() + keys.cipher_public_key + keys.mask_public_key).digest()


def roster(server: sa.ServerRound) -> list[sa.NeighbourKeys]:
    """Every advertised site's keys, as the server forwards them at share-keys."""
    return [
        sa.NeighbourKeys(s, k.cipher_public_key, k.mask_public_key, server.digests[s])
        for s, k in sorted(server.keys.items())
    ]


def run_round(
    *,
    n: int,
    d: int,
    rules: sa.RoundRules | None = None,
    no_advertise: Collection[str] = (),
    no_shares: Collection[str] = (),
    no_check: Collection[str] = (),
    no_input: Collection[str] = (),
    no_sign: Collection[str] = (),
    no_unmask: Collection[str] = (),
    junk_from: Collection[str] = (),
    junk_pairs: Collection[tuple[str, str]] = (),
    seed: int = 0,
    on_add: Callable[[sa.ServerRound, str, np.ndarray, np.ndarray], None] | None = None,
) -> Outcome:
    """Run one round with sites ``s00..``; sites in each set drop just before that stage.

    Sites in ``junk_from`` send random bytes instead of their encrypted shares; for each
    (sender, receiver) in ``junk_pairs`` only that one share is junk.
    """
    rules = rules or sa.RoundRules(min_sites=n)
    server = sa.new_round(round_id=ROUND_ID, rules=rules, dim=d)
    names = [f"s{i:02d}" for i in range(n)]
    rng = np.random.default_rng(seed)
    clients: dict[str, sa.ClientState] = {}
    inputs: dict[str, np.ndarray] = {}
    out = Outcome(server, clients, inputs)
    for name in names:
        clients[name], keys = sa.advertise(site_id=name, round_id=ROUND_ID)
        if name not in no_advertise:
            sa.add_advertised(server, name, keys, digest=digest(name, keys))
    sa.close_advertise(server)
    assert server.params is not None
    for name in sorted(server.keys):
        if name in no_shares:
            continue
        clients[name], shares = sa.share_keys(clients[name], roster(server), params=server.params)
        shares = {
            to: rng.bytes(len(ct)) if name in junk_from or (name, to) in junk_pairs else ct
            for to, ct in shares.items()
        }
        sa.add_shares(server, name, shares)
    sa.close_share_keys(server)
    for name in sorted(server.shared):
        if name in no_check:
            continue
        got = sa.check_shares_request(server, name)
        clients[name], bad = sa.check_shares(clients[name], got, shared=server.shared)
        out.rejected[name] = dict(bad)
        sa.add_share_check(server, name, bad)
    sa.close_check_shares(server)
    for name in sorted(server.masking):
        if name in no_input:
            continue
        x = rng.integers(0, 1 << rules.bits, d, dtype=np.uint32)
        clients[name], y = sa.masked_input(clients[name], x, excluded=server.excluded)
        sa.add_masked_input(server, name, y)
        inputs[name] = x
        if on_add is not None:
            on_add(server, name, x, y)
    sa.close_masked_input(server)
    views: list[sa.Attestation] = []
    for name in sorted(server.survivors):
        if name in no_sign:
            continue
        clients[name], view = sa.consistency(clients[name], survivors=server.survivors)
        sa.add_consistency(server, name, session=clients[name].session, view=view)
        views.append(sa.Attestation(name, clients[name].session, view))
    sa.close_consistency(server)
    replies = out.replies
    for name in sorted(server.signers):
        if name in no_unmask:
            continue
        clients[name], replies[name] = sa.unmask(clients[name], attestations=views)
    out.result = sa.finish(server, replies)
    return out


def plain_sum(inputs: dict[str, np.ndarray], d: int) -> np.ndarray:
    """The plaintext modular sum of the survivors' inputs."""
    total = np.zeros(d, dtype=np.uint32)
    for x in inputs.values():
        total += x
    return total
