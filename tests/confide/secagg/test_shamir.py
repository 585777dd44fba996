"""Shamir sharing over GF(2^521 - 1): vectors, thresholds, serialization limits."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import MalformedMessage
from confide.secagg import shamir

VECTORS = json.loads((Path(__file__).parents[2] / "vectors" / "secagg_shamir.json").read_text())


def test_prime_is_m521() -> None:
    """The field is 2^521 - 1, larger than any 32-byte secret."""
    assert shamir.PRIME == 2**521 - 1
    assert shamir.PRIME > 2**256


@pytest.mark.parametrize("case", VECTORS["shamir"], ids=lambda c: f"t{c['threshold']}")
def test_vectors_reconstruct(case: dict[str, Any]) -> None:
    """Every threshold-sized window of the vector shares rebuilds the vector secret."""
    shares = [shamir.Share.from_bytes(bytes.fromhex(h)) for h in case["shares"]]
    t = case["threshold"]
    for i in range(len(shares) - t + 1):
        got = shamir.reconstruct(shares[i : i + t], threshold=t)
        assert got.hex() == case["secret"]


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["why"])
def test_invalid_share_bytes(case: dict[str, Any]) -> None:
    """Wrong lengths, x = 0 and y outside the field are malformed."""
    with pytest.raises(MalformedMessage):
        shamir.Share.from_bytes(bytes.fromhex(case["share"]))


def test_share_roundtrips_fixed_length() -> None:
    """A share serializes to exactly SHARE_BYTES and parses back to itself."""
    for s in shamir.share(os.urandom(32), threshold=3, xs=[1, 2, 2**64 - 1]):
        data = s.to_bytes()
        assert len(data) == shamir.SHARE_BYTES == 74
        assert shamir.Share.from_bytes(data) == s


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(2, 12), secret=st.binary(min_size=32, max_size=32))
def test_any_t_of_n_reconstruct(data: st.DataObject, n: int, secret: bytes) -> None:
    """Any t of the n shares, in any order, rebuild the secret."""
    t = data.draw(st.integers(1, n))
    shares = shamir.share(secret, threshold=t, xs=list(range(1, n + 1)))
    subset = data.draw(st.permutations(shares)).copy()[:t]
    assert shamir.reconstruct(subset, threshold=t) == secret


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 10), secret=st.binary(min_size=32, max_size=32))
def test_t_minus_one_do_not_reconstruct(n: int, secret: bytes) -> None:
    """Interpolating only t - 1 shares does not yield the secret."""
    t = n - 1
    shares = shamir.share(secret, threshold=t, xs=list(range(1, n + 1)))
    try:
        got = shamir.reconstruct(shares[: t - 1], threshold=t - 1)
    except MalformedMessage:
        return
    assert got != secret


def test_fewer_than_threshold_is_refused() -> None:
    """Asking to reconstruct with fewer shares than the threshold raises."""
    shares = shamir.share(os.urandom(32), threshold=3, xs=[1, 2, 3])
    with pytest.raises(MalformedMessage):
        shamir.reconstruct(shares[:2], threshold=3)


def test_duplicate_points_are_refused() -> None:
    """Two shares at the same x are refused."""
    shares = shamir.share(os.urandom(32), threshold=2, xs=[1, 2])
    with pytest.raises(MalformedMessage):
        shamir.reconstruct([shares[0], shares[0]], threshold=2)


def test_corrupted_share_is_detected() -> None:
    """A share replaced by a random field element interpolates outside 32-byte secrets."""
    shares = shamir.share(os.urandom(32), threshold=3, xs=[1, 2, 3])
    bad = shamir.Share(x=shares[0].x, y=int.from_bytes(os.urandom(64)) % shamir.PRIME)
    with pytest.raises(MalformedMessage):
        shamir.reconstruct([bad, *shares[1:]], threshold=3)


@pytest.mark.parametrize("length", [31, 33])
def test_secret_length_limits(length: int) -> None:
    """Secrets of 31 or 33 bytes are refused."""
    with pytest.raises(ValueError):
        shamir.share(bytes(length), threshold=2, xs=[1, 2])


def test_bad_points_are_refused() -> None:
    """Point 0, repeated points and fewer points than t are refused when sharing."""
    for xs, t in (([0, 1], 2), ([1, 1], 2), ([1], 2), ([1, 2**64], 2)):
        with pytest.raises(ValueError):
            shamir.share(bytes(32), threshold=t, xs=xs)
