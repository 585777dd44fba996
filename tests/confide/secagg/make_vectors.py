"""Regenerate tests/vectors/secagg_*.json: ``python -m tests.confide.secagg.make_vectors``.

PRG vectors are computed from the cipher specs directly (AES-256-CTR counter blocks encrypted
in ECB; ChaCha20 by a pure-Python RFC 7539 block function), not through
``confide.secagg.prg``, so the test checks the module against an independent construction.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from confide.secagg import shamir

VECTORS = Path(__file__).resolve().parents[2] / "vectors"


def _aes_ctr_reference(key: bytes, nbytes: int, first_block: int) -> bytes:
    """AES-256-CTR keystream by encrypting big-endian counter blocks with AES-ECB."""
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    blocks = b"".join((first_block + i).to_bytes(16, "big") for i in range(-(-nbytes // 16)))
    return ecb.update(blocks)[:nbytes]


_ROUNDS = [
    (0, 4, 8, 12),
    (1, 5, 9, 13),
    (2, 6, 10, 14),
    (3, 7, 11, 15),
    (0, 5, 10, 15),
    (1, 6, 11, 12),
    (2, 7, 8, 13),
    (3, 4, 9, 14),
]


def _rotl(v: int, c: int) -> int:
    """32-bit left rotation."""
    return ((v << c) | (v >> (32 - c))) & 0xFFFFFFFF


def chacha_block(key: bytes, counter: int, nonce: bytes) -> bytes:
    """RFC 7539 section 2.3 ChaCha20 block function, in pure Python."""
    consts = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    words = consts + [int.from_bytes(key[i : i + 4], "little") for i in range(0, 32, 4)]
    words += [counter] + [int.from_bytes(nonce[i : i + 4], "little") for i in range(0, 12, 4)]
    x = list(words)

    def qr(a: int, b: int, c: int, d: int) -> None:
        x[a] = (x[a] + x[b]) & 0xFFFFFFFF
        x[d] = _rotl(x[d] ^ x[a], 16)
        x[c] = (x[c] + x[d]) & 0xFFFFFFFF
        x[b] = _rotl(x[b] ^ x[c], 12)
        x[a] = (x[a] + x[b]) & 0xFFFFFFFF
        x[d] = _rotl(x[d] ^ x[a], 8)
        x[c] = (x[c] + x[d]) & 0xFFFFFFFF
        x[b] = _rotl(x[b] ^ x[c], 7)

    for _ in range(10):
        for a, b, c, d in _ROUNDS:
            qr(a, b, c, d)
    return b"".join(
        ((a + b) & 0xFFFFFFFF).to_bytes(4, "little") for a, b in zip(x, words, strict=True)
    )


def _chacha_reference(key: bytes, nbytes: int, first_block: int) -> bytes:
    """ChaCha20 keystream with a zero nonce from block ``first_block``, pure Python."""
    blocks = -(-nbytes // 64)
    return b"".join(chacha_block(key, first_block + i, bytes(12)) for i in range(blocks))[:nbytes]


def prg_vectors() -> dict[str, object]:
    """Known-answer PRG streams: seed, cipher, word offset, words (little-endian uint32)."""
    cases = []
    for i, (cipher, start, n) in enumerate(
        [
            ("aes-256-ctr", 0, 16),
            ("aes-256-ctr", 8, 12),
            ("aes-256-ctr", 70000, 8),
            ("chacha20", 0, 16),
            ("chacha20", 16, 12),
            ("chacha20", 70001, 8),
        ]
    ):
        seed = hashlib.sha256(b"confide secagg prg vector %d" % i).digest()
        block_bytes = 16 if cipher == "aes-256-ctr" else 64
        first_block, skip = divmod(4 * start, block_bytes)
        ref = _aes_ctr_reference if cipher == "aes-256-ctr" else _chacha_reference
        stream = ref(seed, skip + 4 * n, first_block)[skip:]
        words = [int.from_bytes(stream[4 * j : 4 * j + 4], "little") for j in range(n)]
        cases.append({"cipher": cipher, "seed": seed.hex(), "start": start, "words": words})
    note = "words are keystream bytes [4*start, 4*(start+len)) read as little-endian uint32"
    return {"note": note, "prg": cases}


def shamir_vectors() -> dict[str, object]:
    """Shamir sharings with a deterministic coefficient stream; field 2^521 - 1."""
    cases = []
    for i, (t, n) in enumerate([(2, 3), (3, 5), (5, 9)]):
        secret = hashlib.sha256(b"confide secagg shamir secret %d" % i).digest()
        counter = iter(range(1 << 30))

        def rng(k: int, i: int = i, counter=counter) -> bytes:
            block = b""
            while len(block) < k:
                block += hashlib.sha512(b"coef %d %d" % (i, next(counter))).digest()
            return block[:k]

        shares = shamir._share_from_parts(secret, threshold=t, xs=list(range(1, n + 1)), rng=rng)
        cases.append(
            {
                "secret": secret.hex(),
                "threshold": t,
                "shares": [s.to_bytes().hex() for s in shares],
            }
        )
    invalid = [
        {"share": "00" * (shamir.SHARE_BYTES - 1), "why": "73 bytes"},
        {"share": "00" * (shamir.SHARE_BYTES + 1), "why": "75 bytes"},
        {"share": "00" * 8 + "01" * 66, "why": "x = 0"},
        {"share": "00" * 7 + "01" + "ff" * 66, "why": "y >= p"},
    ]
    return {
        "prime": "2^521 - 1",
        "share_bytes": shamir.SHARE_BYTES,
        "shamir": cases,
        "invalid": invalid,
    }


def main() -> None:
    """Write both vector files."""
    for name, data in (
        ("secagg_prg.json", prg_vectors()),
        ("secagg_shamir.json", shamir_vectors()),
    ):
        (VECTORS / name).write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
