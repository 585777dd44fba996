"""Site-side safety checks and share binding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from confide import secagg as sa
from confide.errors import MalformedMessage, PolicyRefusal, Reason
from confide.secagg import client
from tests.confide.secagg._round import digest

SITES = "abcd"


def _advertised(round_id: str = "r", sites: str = SITES):
    """Advertise for every site; return states and the roster the server would forward."""
    states, roster = {}, []
    for s in sites:
        states[s], keys = sa.advertise(site_id=s, round_id=round_id)
        entry = sa.NeighbourKeys(s, keys.cipher_public_key, keys.mask_public_key, digest(s, keys))
        roster.append(entry)
    return states, roster


def _shared(round_id: str = "r"):
    """Advertise and share keys among a..d (complete graph, t = 3, quorum 3)."""
    states, roster = _advertised(round_id)
    params = sa.choose_params(n=4)
    assert (params.threshold, params.neighbours, params.quorum) == (3, 3, 3)
    shares = {}
    for s in SITES:
        states[s], shares[s] = sa.share_keys(states[s], roster, params=params)
    return states, shares, params


def _to(shares, site: str) -> dict[str, bytes]:
    """The shares addressed to ``site``."""
    return {u: shares[u][site] for u in SITES if u != site}


def _checked(states, shares, site: str = "a"):
    """Run the share check for ``site`` with everyone's shares."""
    return sa.check_shares(states[site], _to(shares, site), shared=SITES)


def _signed(site: str = "a"):
    """Every site up to a signed view with all four surviving; returns states and views."""
    states, shares, _ = _shared()
    views = []
    for s in SITES:
        states[s], _ = _checked(states, shares, s)
        states[s], _ = sa.masked_input(states[s], np.arange(8, dtype=np.uint32))
        states[s], v = sa.consistency(states[s], survivors=SITES)
        views.append(sa.Attestation(s, states[s].session, v))
    return states, views


def _refused(fn, *args, **kwargs) -> None:
    """Assert the call is refused as UNSAFE_REQUEST."""
    with pytest.raises(PolicyRefusal) as exc:
        fn(*args, **kwargs)
    assert exc.value.reason is Reason.UNSAFE_REQUEST


def test_roster_must_carry_this_sites_own_keys_unchanged() -> None:
    """A roster that leaves out or replaces this site's keys is refused."""
    states, roster = _advertised()
    params = sa.choose_params(n=4)
    _refused(sa.share_keys, states["a"], roster[1:] + roster[:0], params=params)
    swapped = dataclasses.replace(roster[0], mask_public_key=roster[1].mask_public_key)
    forged = [swapped, *roster[1:]]
    _refused(sa.share_keys, states["a"], forged, params=sa.choose_params(n=4))


def test_roster_with_a_reused_key_or_repeated_site_is_refused() -> None:
    """Two sites advertising one key, or a site listed twice, are refused."""
    states, roster = _advertised()
    params = sa.choose_params(n=4)
    twin = dataclasses.replace(roster[2], cipher_public_key=roster[1].cipher_public_key)
    _refused(sa.share_keys, states["a"], [roster[0], roster[1], twin, roster[3]], params=params)
    with pytest.raises(MalformedMessage):
        sa.share_keys(states["a"], [*roster[:3], roster[1]], params=params)


def test_parameters_for_another_n_or_unsafe_are_refused() -> None:
    """Parameters for another round size, t at half the holders, or a low quorum are refused."""
    states, roster = _advertised()
    good = sa.choose_params(n=4)
    _refused(sa.share_keys, states["a"], roster, params=sa.choose_params(n=3))
    for bad in (
        dataclasses.replace(good, threshold=2),
        dataclasses.replace(good, threshold=5),
        dataclasses.replace(good, quorum=2),
        dataclasses.replace(good, neighbours=4),
    ):
        _refused(sa.share_keys, states["a"], roster, params=bad)


def test_withheld_or_invented_shares_are_refused() -> None:
    """The share check needs exactly the shares of this site's neighbours in U2."""
    states, shares, _ = _shared()
    got = _to(shares, "a")
    _refused(sa.check_shares, states["a"], {u: c for u, c in got.items() if u != "b"}, shared=SITES)
    _refused(sa.check_shares, states["a"], got, shared="acd")
    _refused(sa.check_shares, states["a"], got, shared="bcd")  # leaves this site out
    _refused(sa.check_shares, states["a"], got, shared="abcdz")


def test_rerouted_or_junk_share_is_rejected_not_fatal() -> None:
    """A share for another site, or junk, is rejected with its reason; the rest are kept."""
    states, shares, _ = _shared()
    got = _to(shares, "a")
    got["b"] = shares["c"]["d"]
    got["c"] = b"\x00" * 5
    state, bad = sa.check_shares(states["a"], got, shared=SITES)
    assert bad == {"b": Reason.BAD_SIGNATURE, "c": Reason.BAD_SIGNATURE}
    assert set(state.held) == {"d"} and state.rejected == {"b", "c"}


def test_share_bound_to_another_session_is_rejected_as_replayed() -> None:
    """A share made under another session (another roster) is rejected as replayed."""
    states, shares, _ = _shared()
    other = dataclasses.replace(states["a"], session=b"\x01" * 32)
    _, bad = sa.check_shares(other, _to(shares, "a"), shared=SITES)
    assert set(bad.values()) == {Reason.REPLAYED}


def test_rejected_share_must_be_excluded_before_masking() -> None:
    """A site masks only if the pairs it rejected are excluded, and with t - 1 partners left."""
    states, shares, _ = _shared()
    got = _to(shares, "a")
    got["b"] = b"junk"
    state, _ = sa.check_shares(states["a"], got, shared=SITES)
    x = np.zeros(4, np.uint32)
    _refused(sa.masked_input, state, x, excluded=[])
    _refused(sa.masked_input, state, x, excluded=[("a", "b"), ("a", "c")])  # 1 partner < t - 1
    state, _ = sa.masked_input(state, x, excluded=[("b", "a")])
    assert state.partners == {"c", "d"}


def test_masking_refused_out_of_order() -> None:
    """Masking before the share check, or twice, is refused."""
    states, shares, _ = _shared()
    _refused(sa.masked_input, states["a"], np.zeros(4, np.uint32))
    state, _ = _checked(states, shares)
    state, _ = sa.masked_input(state, np.zeros(4, np.uint32))
    _refused(sa.masked_input, state, np.zeros(4, np.uint32))


def test_consistency_checks_the_survivor_set() -> None:
    """U3 outside U2, without this site, or below the quorum is refused."""
    states, shares, _ = _shared()
    state, _ = _checked(states, shares)
    state, _ = sa.masked_input(state, np.zeros(4, np.uint32))
    _refused(sa.consistency, state, survivors="abcz")
    _refused(sa.consistency, state, survivors="bcd")
    _refused(sa.consistency, state, survivors="ab")
    signed, view = sa.consistency(state, survivors="abc")
    assert view == sa.view_digest(state.session, shared=SITES, excluded=[], survivors="abc")
    _refused(sa.consistency, signed, survivors="abc")


def test_unmask_needs_a_quorum_on_this_sites_own_view() -> None:
    """Too few signatures, signatures on another view, or by non-survivors reveal nothing."""
    states, views = _signed()
    a = states["a"]
    _refused(sa.unmask, a, attestations=views[:2])
    other = [dataclasses.replace(v, view=b"x" * 32) for v in views]
    _refused(sa.unmask, a, attestations=[views[0], *other[1:]])
    strangers = [sa.Attestation(s, a.session, a.view) for s in "xyz"]
    _refused(sa.unmask, a, attestations=[views[0], *strangers])
    twice = [views[0], views[0], views[0]]
    _refused(sa.unmask, a, attestations=twice)
    state, reply = sa.unmask(a, attestations=views[:3])
    assert set(reply.seed_shares) == set(SITES) and not reply.key_shares
    _refused(sa.unmask, state, attestations=views)


def test_unmask_reveals_key_shares_of_dropped_partners_only() -> None:
    """A partner missing from U3 gets its key share revealed; a rejected one gets nothing."""
    states, shares, _ = _shared()
    got = _to(shares, "a")
    got["b"] = b"junk"
    a, _ = sa.check_shares(states["a"], got, shared=SITES)
    a, _ = sa.masked_input(a, np.zeros(4, np.uint32), excluded=[("a", "b")])
    a, view = sa.consistency(a, survivors="abc")
    attest = [sa.Attestation(s, a.session, view) for s in "abc"]
    _, reply = sa.unmask(a, attestations=attest)
    assert set(reply.seed_shares) == {"a", "c"} and set(reply.key_shares) == {"d"}


def test_unmask_before_signing_is_refused() -> None:
    """Unmask before this site signed a view is refused."""
    states, _, _ = _shared()
    _refused(sa.unmask, states["a"], attestations=[])


def test_secrets_not_in_repr() -> None:
    """The client state's repr does not show its secret keys or seed."""
    state, _ = sa.advertise(site_id="a", round_id="r")
    assert state.mask_secret_key.hex() not in repr(state)
    assert "self_seed" not in repr(state)


def test_vector_advertise_is_deterministic() -> None:
    """The private from-parts form derives the public keys from the given secrets."""
    s1, k1 = client._advertise_from_parts(
        site_id="a",
        round_id="r",
        cipher_seed=b"\x01" * 32,
        mask_seed=b"\x02" * 32,
        self_seed=b"\x03" * 32,
    )
    _, k2 = client._advertise_from_parts(
        site_id="a",
        round_id="r",
        cipher_seed=b"\x01" * 32,
        mask_seed=b"\x02" * 32,
        self_seed=b"\x03" * 32,
    )
    assert k1 == k2 and k1.cipher_public_key != k1.mask_public_key
    assert s1.stage is sa.ClientStage.ADVERTISED
