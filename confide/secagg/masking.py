"""Pairwise and self masks of SecAgg+ (Bonawitz et al., CCS 2017, Sec. 4; Bell et al., CCS 2020).

Symbols, for one round:

* x_u: site u's quantized input, a vector in Z_{2^32}^d.
* b_u: u's self-mask seed, 32 fresh random bytes.
* (s_u^SK, s_u^PK): u's X25519 mask key pair, fresh per round.
* s_uv = HKDF-SHA256(X25519(s_u^SK, s_v^PK), info = label || round || min(u,v) || max(u,v)):
  the pairwise seed; u and v derive the same value, and the label, round id and the ordered
  pair of site ids separate it from every other use.
* PRG: ``confide.secagg.prg`` (a stream cipher keyed by the seed).
* N(u): u's neighbours that completed the share-keys stage (U2 in the paper).

Masked input (Bonawitz et al., Sec. 4, "MaskedInputCollection"), with site ids ordered as
strings:

    y_u = x_u + PRG(b_u) + sum_{v in N(u), v > u} PRG(s_uv) - sum_{v in N(u), v < u} PRG(s_uv)
          mod 2^32

Summed over the survivors U3, every pairwise term of two survivors cancels; the server removes
PRG(b_u) for survivors and the uncancelled PRG(s_uv) of dropped neighbours (``unmask_terms``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.bindings import crypto_scalarmult
from numpy.typing import NDArray

from confide.errors import MalformedMessage
from confide.secagg.prg import DEFAULT_CIPHER, SEED_BYTES, PrgCipher, accumulate

__all__ = ["KEY_BYTES", "mask_input", "mask_terms", "pairwise_seed", "unmask_terms"]

KEY_BYTES = 32
"""Length of an X25519 public or secret key."""

_LABEL = b"confide/secagg/v1/pairwise-mask"


def _field(data: bytes) -> bytes:
    """Length-prefix ``data`` (4 bytes big-endian) so concatenations cannot be ambiguous."""
    return len(data).to_bytes(4, "big") + data


def pairwise_seed(
    *, secret_key: bytes, public_key: bytes, me: str, peer: str, round_id: str
) -> bytes:
    """Derive s_uv, the PRG seed u and v share, from u's secret key and v's public key.

    Args:
        secret_key: s_u^SK, 32 bytes.
        public_key: s_v^PK, 32 bytes.
        me: u's site id.
        peer: v's site id (must differ from u).
        round_id: the round binding, e.g. ``"<federation>/<job>/<round>"``.

    Raises:
        MalformedMessage: a key of the wrong length or a low-order public key (all-zero
            shared secret).
        ValueError: ``me == peer``.
    """
    if me == peer:
        raise ValueError("a site has no pairwise mask with itself")
    if len(secret_key) != KEY_BYTES or len(public_key) != KEY_BYTES:
        raise MalformedMessage("X25519 keys must be 32 bytes")
    try:
        shared = crypto_scalarmult(secret_key, public_key)
    except Exception as exc:  # PyNaCl raises on a low-order point
        raise MalformedMessage("mask public key is a low-order point") from exc
    if shared == bytes(KEY_BYTES):
        raise MalformedMessage("mask public key is a low-order point")
    lo, hi = sorted((me, peer))
    info = (
        _LABEL
        + _field(round_id.encode("utf-8"))
        + _field(lo.encode("utf-8"))
        + _field(hi.encode("utf-8"))
    )
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=info).derive(shared)


def mask_terms(
    *, me: str, self_seed: bytes, pairwise: Mapping[str, bytes]
) -> list[tuple[bytes, int]]:
    """List the (seed, sign) terms u adds to x_u: +PRG(b_u), +-PRG(s_uv) by id order.

    Args:
        me: u.
        self_seed: b_u.
        pairwise: neighbour v -> s_uv, for v in N(u).
    """
    terms = [(self_seed, 1)]
    terms += [(seed, 1 if v > me else -1) for v, seed in sorted(pairwise.items())]
    return terms


def unmask_terms(
    *, survivor_seeds: Iterable[bytes], dropped_pairs: Iterable[tuple[str, str, bytes]]
) -> list[tuple[bytes, int]]:
    """List the (seed, sign) terms the server adds to the sum of masked inputs to unmask it.

    Args:
        survivor_seeds: b_v for every survivor v; each is subtracted.
        dropped_pairs: (u, v, s_uv) for each dropped u and each surviving neighbour v of u.
            Survivor v added +PRG(s_uv) if u > v, else -PRG(s_uv); the server undoes it.
    """
    terms = [(seed, -1) for seed in survivor_seeds]
    terms += [(seed, -1 if u > v else 1) for u, v, seed in dropped_pairs]
    return terms


def mask_input(
    x: NDArray[np.uint32],
    terms: list[tuple[bytes, int]],
    *,
    cipher: PrgCipher = DEFAULT_CIPHER,
    workers: int = 1,
) -> NDArray[np.uint32]:
    """Return y = x + sum(sign * PRG(seed)) mod 2^32 as a new array; ``x`` is not modified.

    Args:
        x: the quantized input, 1-D uint32.
        terms: from ``mask_terms``.
        cipher: PRG cipher.
        workers: threads for the PRG expansion.

    Raises:
        MalformedMessage: ``x`` is not a 1-D uint32 array.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.uint32 or x.ndim != 1:
        raise MalformedMessage("quantized input must be a 1-D uint32 array")
    y = np.array(x, dtype=np.uint32, copy=True, order="C")
    accumulate(y, terms, cipher=cipher, workers=workers)
    return y
