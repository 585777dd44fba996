"""The sealed envelope one share pair travels in, from its owner to one holder.

Bonawitz et al. (CCS 2017, Sec. 4, round 1) encrypt each holder's shares with an
authenticated key agreement between the two sites. Here: NaCl ``Box(c_u^SK, c_v^PK)``
(X25519 + XSalsa20-Poly1305) over a plaintext that binds the round's session id, the sender
and the receiver before the two shares, so the server can neither read, re-route, nor replay
a share into another session.

Plaintext: len-prefixed magic || len-prefixed session id || len-prefixed sender || len-prefixed
receiver || share of b_u (74 bytes) || share of s_u^SK (74 bytes).
"""

from __future__ import annotations

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from confide.errors import BadSignature, ReplayedMessage
from confide.secagg import shamir

__all__ = ["NONCE_BYTES", "open_share", "seal_share"]

_MAGIC = b"confide/secagg/v2/share"
NONCE_BYTES = 24
"""Length of a Box nonce."""


def _field(data: bytes) -> bytes:
    """Length-prefix ``data`` with 4 bytes big-endian."""
    return len(data).to_bytes(4, "big") + data


def _header(session: bytes, sender: str, receiver: str) -> bytes:
    """The binding fields that precede the two shares."""
    return (
        _field(_MAGIC)
        + _field(session)
        + _field(sender.encode("utf-8"))
        + _field(receiver.encode("utf-8"))
    )


def seal_share(
    *,
    secret_key: bytes,
    public_key: bytes,
    session: bytes,
    sender: str,
    receiver: str,
    shares: tuple[bytes, bytes],
    nonce: bytes,
) -> bytes:
    """Encrypt (share of b_u, share of s_u^SK) from ``sender`` to ``receiver``.

    Args:
        secret_key: the sender's c^SK.
        public_key: the receiver's c^PK.
        session: the round's session id.
        shares: the two serialized shares.
        nonce: 24 fresh random bytes.
    """
    box = Box(PrivateKey(secret_key), PublicKey(public_key))
    plain = _header(session, sender, receiver) + shares[0] + shares[1]
    return bytes(box.encrypt(plain, nonce))


def open_share(
    *,
    secret_key: bytes,
    public_key: bytes,
    session: bytes,
    sender: str,
    receiver: str,
    ciphertext: bytes,
) -> tuple[bytes, bytes]:
    """Decrypt and check a share pair sealed by ``seal_share``.

    Raises:
        BadSignature: it does not decrypt (forged, junk, or sealed for another receiver).
        ReplayedMessage: it is bound to another session, sender or receiver.
        MalformedMessage: a share does not parse.
    """
    box = Box(PrivateKey(secret_key), PublicKey(public_key))
    try:
        plain = box.decrypt(ciphertext)
    except (CryptoError, ValueError, TypeError) as exc:
        raise BadSignature(f"share from {sender} does not decrypt") from exc
    head = _header(session, sender, receiver)
    n = shamir.SHARE_BYTES
    if len(plain) != len(head) + 2 * n or plain[: len(head)] != head:
        raise ReplayedMessage(f"share from {sender} is bound to another session or site")
    b_sh, k_sh = plain[len(head) : len(head) + n], plain[len(head) + n :]
    shamir.Share.from_bytes(b_sh)
    shamir.Share.from_bytes(k_sh)
    return b_sh, k_sh
