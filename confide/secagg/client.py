"""A site's side of one SecAgg+ round: advertise, share keys, mask the input, unmask.

Bonawitz et al. (CCS 2017, Sec. 4, Fig. 4) with the neighbour graph of Bell et al. (CCS 2020).
Each stage is a pure function from the previous ``ClientState`` (frozen) and the server's
decoded request to a new state and the reply payload; the caller persists the state between
stages. The site-side safety checks (Bonawitz et al. Sec. 4 round 4; Bell et al. Sec. 5) raise
``PolicyRefusal(reason=UNSAFE_REQUEST)``: they are what stops a lying server from learning one
site's input.

Shares of u's secrets are held by H(u) = N(u) + {u}, with x-coordinates 1..|H(u)| in site-id
order. A share travels inside NaCl ``Box(c_u^SK, c_v^PK)`` whose plaintext binds the round id,
sender and receiver, so the server cannot re-route or replay it.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from numpy.typing import NDArray

from confide.errors import BadSignature, MalformedMessage, PolicyRefusal, Reason, ReplayedMessage
from confide.secagg import shamir
from confide.secagg.masking import KEY_BYTES, mask_input, mask_terms, pairwise_seed
from confide.secagg.prg import DEFAULT_CIPHER, SEED_BYTES, PrgCipher

__all__ = [
    "AdvertisedKeys",
    "ClientStage",
    "ClientState",
    "NeighbourKeys",
    "UnmaskReply",
    "advertise",
    "masked_input",
    "share_keys",
    "unmask",
]

_MAGIC = b"confide/secagg/v1/share"
_NONCE_BYTES = 24


class ClientStage(enum.Enum):
    """The last stage a site completed in this round."""

    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    UNMASKED = "unmasked"


@dataclass(frozen=True, slots=True)
class AdvertisedKeys:
    """Stage 0 payload (proto ``AdvertiseKeys``): c_u^PK and s_u^PK, 32 bytes each."""

    cipher_public_key: bytes
    mask_public_key: bytes


@dataclass(frozen=True, slots=True)
class NeighbourKeys:
    """A neighbour's advertised keys, after the envelope layer verified its signature."""

    site_id: str
    cipher_public_key: bytes
    mask_public_key: bytes


@dataclass(frozen=True, slots=True)
class UnmaskReply:
    """Stage 3 payload (proto ``UnmaskShares``): site -> serialized share, never both maps."""

    seed_shares: Mapping[str, bytes]
    key_shares: Mapping[str, bytes]


@dataclass(frozen=True, slots=True)
class ClientState:
    """Everything a site keeps between the stages of one round; secrets are kept out of repr.

    Args:
        site_id: u.
        round_id: binds shares and masks to this round.
        stage: the last completed stage.
        cipher_secret_key: c_u^SK.
        mask_secret_key: s_u^SK.
        self_seed: b_u.
        threshold: t announced at share-keys.
        neighbours: N(u) with their advertised keys.
        own_shares: u's own (b_u share, s_u^SK share).
        held: neighbour v -> (share of b_v, share of s_v^SK) received at masked-input.
    """

    site_id: str
    round_id: str
    stage: ClientStage
    cipher_secret_key: bytes = field(repr=False)
    mask_secret_key: bytes = field(repr=False)
    self_seed: bytes = field(repr=False)
    threshold: int = 0
    neighbours: Mapping[str, NeighbourKeys] = field(default_factory=dict)
    own_shares: tuple[bytes, bytes] = field(default=(b"", b""), repr=False)
    held: Mapping[str, tuple[bytes, bytes]] = field(default_factory=dict, repr=False)


def _refuse(why: str) -> PolicyRefusal:
    """Build the refusal every unsafe server request gets."""
    return PolicyRefusal(f"unsafe secure-aggregation request: {why}", reason=Reason.UNSAFE_REQUEST)


def _advertise_from_parts(
    *, site_id: str, round_id: str, cipher_seed: bytes, mask_seed: bytes, self_seed: bytes
) -> tuple[ClientState, AdvertisedKeys]:
    """Build the stage-0 state from given key material; see ``advertise``."""
    if len(cipher_seed) != KEY_BYTES or len(mask_seed) != KEY_BYTES:
        raise ValueError("secret keys must be 32 bytes")
    if len(self_seed) != SEED_BYTES:
        raise ValueError("self-mask seed must be 32 bytes")
    c_sk = PrivateKey(cipher_seed)
    s_sk = PrivateKey(mask_seed)
    state = ClientState(
        site_id=site_id,
        round_id=round_id,
        stage=ClientStage.ADVERTISED,
        cipher_secret_key=bytes(c_sk),
        mask_secret_key=bytes(s_sk),
        self_seed=self_seed,
    )
    keys = AdvertisedKeys(bytes(c_sk.public_key), bytes(s_sk.public_key))
    return state, keys


def advertise(*, site_id: str, round_id: str) -> tuple[ClientState, AdvertisedKeys]:
    """Stage 0: make two fresh X25519 key pairs (c for share encryption, s for masks) and b_u.

    Args:
        site_id: this site's id (its certificate common name).
        round_id: the round binding, e.g. ``"<federation>/<job>/<round>"``.
    """
    return _advertise_from_parts(
        site_id=site_id,
        round_id=round_id,
        cipher_seed=os.urandom(KEY_BYTES),
        mask_seed=os.urandom(KEY_BYTES),
        self_seed=os.urandom(SEED_BYTES),
    )


def _field(data: bytes) -> bytes:
    """Length-prefix ``data`` with 4 bytes big-endian."""
    return len(data).to_bytes(4, "big") + data


def _share_plaintext(round_id: str, sender: str, receiver: str, b: bytes, sk: bytes) -> bytes:
    """Encode the plaintext of an encrypted share: binding fields, then the two shares."""
    return (
        _field(_MAGIC)
        + _field(round_id.encode("utf-8"))
        + _field(sender.encode("utf-8"))
        + _field(receiver.encode("utf-8"))
        + b
        + sk
    )


def _share_keys_from_parts(
    state: ClientState,
    neighbours: Sequence[NeighbourKeys],
    *,
    threshold: int,
    rng: Callable[[int], bytes],
) -> tuple[ClientState, dict[str, bytes]]:
    """Stage 1 with randomness from ``rng``; see ``share_keys``."""
    if state.stage is not ClientStage.ADVERTISED:
        raise _refuse("share-keys requested twice or out of order")
    by_id = {nb.site_id: nb for nb in neighbours}
    if len(by_id) != len(neighbours) or state.site_id in by_id:
        raise MalformedMessage("neighbour list repeats a site or names this site")
    own_keys = {bytes(PrivateKey(state.cipher_secret_key).public_key)}
    own_keys.add(bytes(PrivateKey(state.mask_secret_key).public_key))
    for nb in neighbours:
        if len(nb.cipher_public_key) != KEY_BYTES or len(nb.mask_public_key) != KEY_BYTES:
            raise MalformedMessage(f"neighbour {nb.site_id} keys must be 32 bytes")
        if {nb.cipher_public_key, nb.mask_public_key} & own_keys:
            raise _refuse(f"neighbour {nb.site_id} advertises this site's own key")
    holders = sorted([*by_id, state.site_id])
    if threshold < 2 or threshold > len(holders) or 2 * threshold <= len(holders):
        raise _refuse(f"threshold {threshold} unsafe or unreachable for {len(holders)} holders")
    xs = list(range(1, len(holders) + 1))
    b_shares = shamir._share_from_parts(state.self_seed, threshold=threshold, xs=xs, rng=rng)
    k_shares = shamir._share_from_parts(state.mask_secret_key, threshold=threshold, xs=xs, rng=rng)
    me = PrivateKey(state.cipher_secret_key)
    out: dict[str, bytes] = {}
    own: tuple[bytes, bytes] = (b"", b"")
    for holder, b_sh, k_sh in zip(holders, b_shares, k_shares, strict=True):
        pair = (b_sh.to_bytes(), k_sh.to_bytes())
        if holder == state.site_id:
            own = pair
            continue
        box = Box(me, PublicKey(by_id[holder].cipher_public_key))
        plain = _share_plaintext(state.round_id, state.site_id, holder, *pair)
        out[holder] = bytes(box.encrypt(plain, rng(_NONCE_BYTES)))
    new = replace(
        state, stage=ClientStage.SHARED, threshold=threshold, neighbours=by_id, own_shares=own
    )
    return new, out


def share_keys(
    state: ClientState, neighbours: Sequence[NeighbourKeys], *, threshold: int
) -> tuple[ClientState, dict[str, bytes]]:
    """Stage 1: Shamir-share b_u and s_u^SK among N(u) + {u}; encrypt each neighbour's pair.

    Args:
        state: from ``advertise``.
        neighbours: N(u) with their verified advertised keys (proto ``ShareKeysRequest``).
        threshold: t.

    Returns:
        The new state and ``to_site -> ciphertext`` (proto ``EncryptedShare``); u's own share
        stays in the state.

    Raises:
        PolicyRefusal: UNSAFE_REQUEST when t < 2, 2t <= |H(u)|, t > |H(u)|, a neighbour
            reuses this site's key, or the stage is repeated.
        MalformedMessage: duplicate neighbours, this site listed, or bad key lengths.
    """
    return _share_keys_from_parts(state, neighbours, threshold=threshold, rng=os.urandom)


def _open_share(state: ClientState, sender: str, ciphertext: bytes) -> tuple[bytes, bytes]:
    """Decrypt and check one received share pair; see ``masked_input``."""
    nb = state.neighbours.get(sender)
    if nb is None:
        raise MalformedMessage(f"share from {sender}, which is not a neighbour")
    box = Box(PrivateKey(state.cipher_secret_key), PublicKey(nb.cipher_public_key))
    try:
        plain = box.decrypt(ciphertext)
    except CryptoError as exc:
        raise BadSignature(f"share from {sender} does not decrypt") from exc
    expected = _share_plaintext(state.round_id, sender, state.site_id, b"", b"")
    n = shamir.SHARE_BYTES
    if len(plain) != len(expected) + 2 * n or plain[: len(expected)] != expected:
        raise ReplayedMessage(f"share from {sender} is bound to another round or site")
    b_sh, k_sh = plain[len(expected) : len(expected) + n], plain[len(expected) + n :]
    shamir.Share.from_bytes(b_sh)
    shamir.Share.from_bytes(k_sh)
    return b_sh, k_sh


def masked_input(
    state: ClientState,
    x: NDArray[np.uint32],
    received: Mapping[str, bytes],
    *,
    cipher: PrgCipher = DEFAULT_CIPHER,
    workers: int = 1,
) -> tuple[ClientState, NDArray[np.uint32]]:
    """Stage 2: keep the received shares and return y_u (see ``confide.secagg.masking``).

    Pairwise masks are made only with the neighbours whose shares arrived (U2 in the paper).

    Args:
        state: from ``share_keys``.
        x: the quantized input x_u, 1-D uint32.
        received: ``from_site -> ciphertext`` (proto ``MaskedInputRequest``).
        cipher: PRG cipher (as agreed for the round).
        workers: threads for the PRG expansion.

    Raises:
        PolicyRefusal: UNSAFE_REQUEST when fewer than t - 1 neighbours' shares arrived (x_u
            would be masked by too few pairs), or the stage is out of order.
        BadSignature: a share does not decrypt (forged or re-routed).
        ReplayedMessage: a share is bound to another round, sender or receiver.
        MalformedMessage: a share from a non-neighbour, or a bad input array.
    """
    if state.stage is not ClientStage.SHARED:
        raise _refuse("masked input requested twice or out of order")
    held = {sender: _open_share(state, sender, ct) for sender, ct in received.items()}
    if len(held) + 1 < state.threshold:
        raise _refuse(f"only {len(held)} neighbours shared keys; threshold is {state.threshold}")
    seeds = {
        v: pairwise_seed(
            secret_key=state.mask_secret_key,
            public_key=state.neighbours[v].mask_public_key,
            me=state.site_id,
            peer=v,
            round_id=state.round_id,
        )
        for v in held
    }
    terms = mask_terms(me=state.site_id, self_seed=state.self_seed, pairwise=seeds)
    y = mask_input(x, terms, cipher=cipher, workers=workers)
    return replace(state, stage=ClientStage.MASKED, held=held), y


def unmask(
    state: ClientState, *, survivors: Iterable[str], dropped: Iterable[str]
) -> tuple[ClientState, UnmaskReply]:
    """Stage 3: reveal b-shares of surviving and s^SK-shares of dropped neighbours, once.

    Sites this site holds no shares of are ignored (nothing is revealed for them).

    Args:
        state: from ``masked_input``.
        survivors: sites the server says sent a masked input (proto ``UnmaskRequest``).
        dropped: sites the server says shared keys but sent no masked input.

    Raises:
        PolicyRefusal: UNSAFE_REQUEST when a site is in both lists, this site is listed as
            dropped or not as a survivor, fewer than t known survivors are listed, or this
            round was already unmasked (or never masked).
    """
    if state.stage is ClientStage.UNMASKED:
        raise _refuse("unmask already answered in this round")
    if state.stage is not ClientStage.MASKED:
        raise _refuse("unmask before this site sent its masked input")
    alive, gone = set(survivors), set(dropped)
    if alive & gone:
        raise _refuse("a site is listed both as survivor and as dropped")
    if state.site_id in gone:
        raise _refuse("this site is listed as dropped")
    if state.site_id not in alive:
        raise _refuse("this site is not listed as a survivor")
    known = {*state.held, state.site_id}
    alive &= known
    gone &= known
    if len(alive) < state.threshold:
        raise _refuse(f"only {len(alive)} known survivors; threshold is {state.threshold}")
    seed_shares = {v: state.held[v][0] for v in alive if v != state.site_id}
    seed_shares[state.site_id] = state.own_shares[0]
    key_shares = {u: state.held[u][1] for u in gone}
    reply = UnmaskReply(seed_shares=seed_shares, key_shares=key_shares)
    return replace(state, stage=ClientStage.UNMASKED), reply
