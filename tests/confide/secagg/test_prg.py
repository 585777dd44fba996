"""PRG known answers and the streamed accumulator against the plain expansion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.secagg import prg
from confide.secagg.prg import PrgCipher
from tests.confide.secagg.make_vectors import chacha_block

VECTORS = json.loads((Path(__file__).parents[2] / "vectors" / "secagg_prg.json").read_text())


def test_chacha_reference_matches_rfc7539() -> None:
    """The pure-Python block function used to make the vectors reproduces RFC 7539 2.3.2."""
    block = chacha_block(bytes(range(32)), 1, bytes.fromhex("000000090000004a00000000"))
    assert block[:16].hex() == "10f1e7e4d13b5915500fdd1fa32071c4"


@pytest.mark.parametrize("case", VECTORS["prg"], ids=lambda c: f"{c['cipher']}@{c['start']}")
def test_stream_matches_vector(case: dict[str, Any]) -> None:
    """Expanding and accumulating from an offset both reproduce the known-answer words."""
    cipher = PrgCipher(case["cipher"])
    seed = bytes.fromhex(case["seed"])
    start, want = case["start"], np.array(case["words"], dtype=np.uint32)
    full = prg.expand(seed, start + len(want), cipher=cipher)
    assert np.array_equal(full[start:], want)
    acc = np.zeros(start + len(want), dtype=np.uint32)
    prg.accumulate(acc, [(seed, 1)], cipher=cipher)
    assert np.array_equal(acc[start:], want)


@pytest.mark.parametrize("length", [31, 33, 0])
def test_seed_length_is_exactly_32(length: int) -> None:
    """Seeds of 31, 33 or 0 bytes are refused."""
    with pytest.raises(ValueError):
        prg.expand(bytes(length), 4)
    with pytest.raises(ValueError):
        prg.accumulate(np.zeros(4, np.uint32), [(bytes(length), 1)])


def test_accumulate_rejects_bad_sign_and_dtype() -> None:
    """A sign other than +-1 or a non-uint32 accumulator is refused."""
    with pytest.raises(ValueError):
        prg.accumulate(np.zeros(4, np.uint32), [(bytes(32), 2)])
    with pytest.raises(ValueError):
        prg.accumulate(np.zeros(4, np.int64), [(bytes(32), 1)])  # type: ignore[arg-type]


def test_ciphers_differ() -> None:
    """The two ciphers give different streams for the same seed."""
    seed = bytes(range(32))
    assert not np.array_equal(
        prg.expand(seed, 8, cipher=PrgCipher.AES256_CTR),
        prg.expand(seed, 8, cipher=PrgCipher.CHACHA20),
    )


@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(1, 3 * (1 << 16) + 37),
    signs=st.lists(st.sampled_from([1, -1]), min_size=1, max_size=4),
    workers=st.integers(1, 3),
    cipher=st.sampled_from(list(PrgCipher)),
)
def test_accumulate_equals_slow_reference(
    d: int, signs: list[int], workers: int, cipher: PrgCipher
) -> None:
    """Chunked, sliced, threaded accumulation equals summing full expansions mod 2^32."""
    terms = [(bytes([i + 1]) * 32, s) for i, s in enumerate(signs)]
    acc = np.arange(d, dtype=np.uint32)
    want = acc.copy()
    for seed, sign in terms:
        stream = prg.expand(seed, d, cipher=cipher)
        want = want + stream if sign > 0 else want - stream
    prg.accumulate(acc, terms, cipher=cipher, workers=workers)
    assert np.array_equal(acc, want)
