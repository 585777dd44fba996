"""A lying server against the real site code (issue 8.1): every site-side call is the server's.

The attack of the issue, against the previous protocol: with 2T honest sites (T the planned
threshold), give u a neighbourhood A of T - 1 sites and each a in A the neighbourhood
{u} + B (|B| = T); tell u and A that A survived and B that A dropped; rebuild b_u from u and
A and each s_a^SK from B; peel x_u off y_u. Here the server no longer chooses neighbourhoods
(each site derives them from the roster), so it tries every lever it still has: a different
roster (session) for u than for A, different shared sets, excluded pairs and survivor sets
per site, and forwarding every consistency signature it collected to everyone. Whatever it
does, no site reveals a share for a view without a quorum, u's input is never exposed, and
every sum it can compute covers at least T inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from confide import secagg as sa
from confide.errors import PolicyRefusal, Reason
from tests.confide.secagg._adversary import exposed, minimal_sums
from tests.confide.secagg._round import digest

RULES = sa.RoundRules(min_sites=10)
T = RULES.planned_threshold
U = "u"
A = [f"a{i}" for i in range(T - 1)]
B = [f"b{i}" for i in range(T)]
ALL = [U, *A, *B]
D = 16


@dataclass
class Hostile:
    """The server's per-site choices; each maps a site to what it is told (default: truth)."""

    roster: Callable[[str], Iterable[str]] = lambda s: ALL
    shared: Callable[[str], Iterable[str] | None] = lambda s: None
    excluded: Callable[[str], Iterable[tuple[str, str]]] = lambda s: ()
    survivors: Callable[[str, set[str]], Iterable[str] | None] = lambda s, masked: None
    states: dict[str, sa.ClientState] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    masked: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    replies: list[sa.UnmaskReply] = field(default_factory=list)
    thresholds: dict[str, int] = field(default_factory=dict)


def _call(h: Hostile, site: str, fn: Callable[[], object]) -> object | None:
    """Run one site-side call; a refusal takes the site out of the round."""
    if site in h.refused:
        return None
    try:
        return fn()
    except PolicyRefusal as exc:
        assert exc.reason is Reason.UNSAFE_REQUEST
        h.refused[site] = exc.message
        return None


def run(h: Hostile) -> Hostile:
    """Drive every site through every stage with the hostile server's choices."""
    keys: dict[str, sa.NeighbourKeys] = {}
    for s in ALL:
        h.states[s], k = sa.advertise(site_id=s, round_id="fed/job/1")
        keys[s] = sa.NeighbourKeys(s, k.cipher_public_key, k.mask_public_key, digest(s, k))
    shares: dict[str, dict[str, bytes]] = {}
    for s in ALL:
        roster = [keys[v] for v in sorted(h.roster(s))]
        params = RULES.params(len(roster))

        def share(
            s: str = s, roster: list[sa.NeighbourKeys] = roster, params: sa.SecAggParams = params
        ) -> None:
            h.states[s], shares[s] = sa.share_keys(h.states[s], roster, params=params)
            h.thresholds[s] = h.states[s].threshold

        _call(h, s, share)
    senders = set(shares)
    for s in ALL:
        got = {v: shares[v][s] for v in senders if s in shares[v]}
        told = h.shared(s)
        same = {v for v in senders if sorted(h.roster(v)) == sorted(h.roster(s))}
        u2 = set(told) if told is not None else same | {s}
        got = {v: c for v, c in got.items() if v in u2}

        def check(s: str = s, got: Mapping[str, bytes] = got, u2: set[str] = u2) -> None:
            h.states[s], _ = sa.check_shares(h.states[s], got, shared=u2)

        _call(h, s, check)
    rng = np.random.default_rng(1)
    for s in ALL:
        x = rng.integers(0, 1 << 16, D, dtype=np.uint32)

        def mask(s: str = s, x: np.ndarray = x) -> None:
            mine = {(s, v) for v in h.states[s].rejected}
            h.states[s], h.masked[s] = sa.masked_input(
                h.states[s], x, excluded=[*h.excluded(s), *mine]
            )
            h.inputs[s] = x

        _call(h, s, mask)
    attest: list[sa.Attestation] = []
    for s in sorted(h.masked):
        told = h.survivors(s, set(h.masked))
        u3 = set(told) if told is not None else set(h.masked) & set(h.roster(s))

        def sign(s: str = s, u3: set[str] = u3) -> None:
            h.states[s], view = sa.consistency(h.states[s], survivors=u3)
            attest.append(sa.Attestation(s, h.states[s].session, view))

        _call(h, s, sign)
    for s in sorted(h.masked):

        def reveal(s: str = s) -> None:
            h.states[s], reply = sa.unmask(h.states[s], attestations=attest)
            h.replies.append(reply)

        _call(h, s, reveal)
    return h


def _assert_safe(h: Hostile) -> list[set[str]]:
    """No site's input alone, and no sum of fewer than T inputs, is computable."""
    b, s = exposed(h.replies, h.thresholds)
    assert not b & s, f"both secrets of {b & s} exposed"
    sums = minimal_sums(h.states, h.masked, b, s)
    assert all(len(c) >= T for c in sums), sums
    assert not any(U in c and len(c) < T for c in sums)
    return sums


def test_the_issue_attack_splits_sessions_and_u_never_masks() -> None:
    """u shown only itself and A (its own session): shares cross sessions, so u refuses."""
    h = run(
        Hostile(
            roster=lambda s: [U, *A] if s == U else ALL,
            shared=lambda s: [U, *A] if s == U else None,
        )
    )
    assert U in h.refused and U not in h.masked
    assert h.states[U].rejected == set(A)  # A's shares are bound to the other session
    assert _assert_safe(h)  # the others complete honestly


def test_the_issue_attack_with_split_survivor_views_reveals_nothing() -> None:
    """One session; u and A told A survived, B told A dropped: no view reaches the quorum."""
    h = run(Hostile(survivors=lambda s, m: ALL if s in (U, *A) else [U, *B]))
    assert not h.replies
    assert set(h.refused) == set(ALL)
    assert all("quorum" in why for why in h.refused.values())
    _assert_safe(h)


def test_majority_view_that_drops_u_exposes_only_its_key() -> None:
    """u alone told it survived; everyone else signs u dropped: b_u is never revealed."""
    h = run(Hostile(survivors=lambda s, m: ALL if s == U else [*A, *B]))
    b, s = exposed(h.replies, h.thresholds)
    assert U in s and U not in b
    sums = _assert_safe(h)
    assert any(c == set(A) | set(B) for c in sums)


def test_narrow_shared_set_or_excluded_pairs_cannot_shrink_u_partners() -> None:
    """u told that only A shared, or that it may not mask with B: it refuses to go on."""
    h = run(Hostile(shared=lambda s: [U, *A] if s == U else None))
    assert U in h.refused and U not in h.masked
    _assert_safe(h)
    h = run(Hostile(excluded=lambda s: [(U, b) for b in B] if s == U else ()))
    assert U in h.refused and U not in h.masked
    _assert_safe(h)


def test_a_small_roster_for_everyone_keeps_the_planned_threshold() -> None:
    """A round shown as only u and A (T sites) needs all T of them: the sum has T inputs."""
    h = run(Hostile(roster=lambda s: [U, *A] if s in (U, *A) else B))
    assert all(h.thresholds[s] >= T for s in h.thresholds)
    sums = _assert_safe(h)
    assert {U, *A} in sums


def test_random_lies_never_expose_less_than_t() -> None:
    """Random per-site rosters, exclusions and survivor views (a few candidate views, each
    shown to a random part of the sites, so some reach the quorum) stay safe."""
    unmasked = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        small = sorted({U, *map(str, rng.choice(ALL, 8, replace=False))})
        rosters = {s: small if s in small and rng.random() < 0.3 else ALL for s in ALL}
        cut = {s: [(s, str(v)) for v in rng.choice(ALL, 2) if v != s] for s in ALL}
        gone = set(map(str, rng.choice(ALL, 3)))
        views = [set(ALL), set(ALL) - {U}, set(ALL) - gone]
        shown = {s: views[int(rng.integers(0, 3))] for s in ALL}
        h = run(
            Hostile(
                roster=lambda s, r=rosters: r[s],  # type: ignore[misc]
                excluded=lambda s, c=cut, g=rng: c[s] if g.random() < 0.2 else (),  # type: ignore[misc]
                survivors=lambda s, m, v=shown: v[s] & m,  # type: ignore[misc]
            )
        )
        _assert_safe(h)
        unmasked += bool(h.replies)
    assert unmasked  # not vacuous: some lies still let a view reach the quorum
