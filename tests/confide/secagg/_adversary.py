"""What a server that kept every message can compute: the exposed secrets and the sums.

A server that saw every unmask reply (whatever view it was given under) holds, for each site,
the shares of its self-mask seed b and of its mask key s^SK that were revealed; with t of one
kind it has that secret. It also saw every masked input y_u on its own. A sum over a set C of
senders is computable iff every u in C has b_u exposed and every pairwise mask u added with a
partner outside C can be removed (the partner's or u's s^SK is exposed). The smallest such
sets are the connected components, over the partner edges that cannot be removed, of the
senders that can be peeled; ``minimal_sums`` returns those the server can compute.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from confide import secagg as sa


def exposed(
    replies: Iterable[sa.UnmaskReply], thresholds: Mapping[str, int]
) -> tuple[set[str], set[str]]:
    """(sites whose b is exposed, sites whose s^SK is exposed) from every reply seen."""
    seeds: dict[str, set[bytes]] = {}
    keys: dict[str, set[bytes]] = {}
    for reply in replies:
        for site, share in reply.seed_shares.items():
            seeds.setdefault(site, set()).add(share[:8])  # the x-coordinate
        for site, share in reply.key_shares.items():
            keys.setdefault(site, set()).add(share[:8])
    b = {s for s, xs in seeds.items() if len(xs) >= thresholds[s]}
    k = {s for s, xs in keys.items() if len(xs) >= thresholds[s]}
    return b, k


def minimal_sums(
    states: Mapping[str, sa.ClientState],
    senders: Iterable[str],
    exposed_b: set[str],
    exposed_s: set[str],
) -> list[set[str]]:
    """The smallest sets of senders whose input sum the server can compute."""
    senders = set(senders)
    blocking: dict[str, set[str]] = {u: set() for u in senders}
    dead: set[str] = set()
    for u in senders:
        for p in states[u].partners:
            if p in exposed_s or u in exposed_s:
                continue  # that pairwise mask can be removed
            if p in senders:
                blocking[u].add(p)
                blocking[p].add(u)
            else:
                dead.add(u)  # a mask with a non-sender that cannot be removed
    seen: set[str] = set()
    out: list[set[str]] = []
    for start in sorted(senders):
        if start in seen:
            continue
        comp, todo = set(), [start]
        while todo:
            v = todo.pop()
            if v in comp:
                continue
            comp.add(v)
            todo.extend(blocking[v] - comp)
        seen |= comp
        if comp <= exposed_b and not comp & dead:
            out.append(comp)
    return out
