"""Site-side safety checks and share binding."""

from __future__ import annotations

import numpy as np
import pytest

from confide import secagg as sa
from confide.errors import BadSignature, MalformedMessage, PolicyRefusal, Reason, ReplayedMessage
from confide.secagg import client


def _three_sites(round_id: str = "r"):
    """Advertise and share keys among a, b, c (complete graph, t = 2)."""
    states, keys = {}, {}
    for s in "abc":
        states[s], keys[s] = sa.advertise(site_id=s, round_id=round_id)
    shares = {}
    for s in "abc":
        nbs = [
            sa.NeighbourKeys(v, keys[v].cipher_public_key, keys[v].mask_public_key)
            for v in "abc"
            if v != s
        ]
        states[s], shares[s] = sa.share_keys(states[s], nbs, threshold=2)
    return states, keys, shares


def _masked(states, shares, site: str = "a"):
    """Run the masked-input stage for ``site`` with everyone's shares."""
    received = {u: shares[u][site] for u in "abc" if u != site}
    return sa.masked_input(states[site], np.arange(8, dtype=np.uint32), received)


def _refused(fn, *args, **kwargs) -> None:
    """Assert the call is refused as UNSAFE_REQUEST."""
    with pytest.raises(PolicyRefusal) as exc:
        fn(*args, **kwargs)
    assert exc.value.reason is Reason.UNSAFE_REQUEST


def test_refuses_seed_and_key_share_of_same_site() -> None:
    """Being asked for both shares of one site is refused."""
    states, _, shares = _three_sites()
    state, _ = _masked(states, shares)
    _refused(sa.unmask, state, survivors=["a", "b", "c"], dropped=["b"])


def test_refuses_being_listed_dropped() -> None:
    """A site told it dropped refuses to reveal anything."""
    states, _, shares = _three_sites()
    state, _ = _masked(states, shares)
    _refused(sa.unmask, state, survivors=["b", "c"], dropped=["a"])


def test_refuses_second_unmask() -> None:
    """A second unmask request in the same round is refused."""
    states, _, shares = _three_sites()
    state, _ = _masked(states, shares)
    state, reply = sa.unmask(state, survivors=["a", "b", "c"], dropped=[])
    assert set(reply.seed_shares) == {"a", "b", "c"} and not reply.key_shares
    _refused(sa.unmask, state, survivors=["a", "b", "c"], dropped=[])


def test_refuses_too_few_survivors_and_ignores_strangers() -> None:
    """Survivors below t (not counting non-neighbours) are refused; strangers get nothing."""
    states, _, shares = _three_sites()
    state, _ = _masked(states, shares)
    _refused(sa.unmask, state, survivors=["a", "x", "y"], dropped=["b"])
    _, reply = sa.unmask(state, survivors=["a", "c", "x"], dropped=["b", "z"])
    assert set(reply.seed_shares) == {"a", "c"} and set(reply.key_shares) == {"b"}


def test_refuses_unmask_before_masking() -> None:
    """Unmask before this site sent its masked input is refused."""
    states, _, _ = _three_sites()
    _refused(sa.unmask, states["a"], survivors=["a", "b", "c"], dropped=[])


def test_refuses_unsafe_threshold() -> None:
    """A threshold at or below half of the holders, or above them, is refused."""
    states, keys = {}, {}
    for s in "abcd":
        states[s], keys[s] = sa.advertise(site_id=s, round_id="r")
    nbs = [sa.NeighbourKeys(v, keys[v].cipher_public_key, keys[v].mask_public_key) for v in "bcd"]
    for t in (1, 2, 5):
        _refused(sa.share_keys, states["a"], nbs, threshold=t)
    sa.share_keys(states["a"], nbs, threshold=3)


def test_refuses_masking_with_too_few_neighbours() -> None:
    """Masking when fewer than t - 1 neighbours shared keys is refused."""
    states, _, _ = _three_sites()
    _refused(sa.masked_input, states["a"], np.zeros(4, np.uint32), {})


def test_rerouted_share_fails_to_decrypt() -> None:
    """A share for b delivered to c does not decrypt or verify at c."""
    states, _, shares = _three_sites()
    with pytest.raises(BadSignature):
        sa.masked_input(
            states["c"], np.zeros(4, np.uint32), {"a": shares["a"]["b"], "b": shares["b"]["c"]}
        )


def test_share_bound_to_another_round_is_refused() -> None:
    """A share made for another round with the same keys is refused as replayed."""
    states, _, shares = _three_sites("r1")
    other = client.ClientState(
        site_id="b",
        round_id="r2",
        stage=sa.ClientStage.SHARED,
        cipher_secret_key=states["b"].cipher_secret_key,
        mask_secret_key=states["b"].mask_secret_key,
        self_seed=states["b"].self_seed,
        threshold=2,
        neighbours=states["b"].neighbours,
    )
    with pytest.raises(ReplayedMessage):
        sa.masked_input(other, np.zeros(4, np.uint32), {"a": shares["a"]["b"]})


def test_share_from_non_neighbour_is_malformed() -> None:
    """A share claimed to come from a site that is not a neighbour is refused."""
    states, _, shares = _three_sites()
    with pytest.raises(MalformedMessage):
        sa.masked_input(states["a"], np.zeros(4, np.uint32), {"z": shares["b"]["a"]})


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
