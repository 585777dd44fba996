"""A site's side of one SecAgg+ round: advertise, share keys, check shares, mask, sign, unmask.

Bonawitz et al. (CCS 2017, Sec. 4, Fig. 4, including the consistency round of the actively
secure protocol) with the neighbour graph of Bell et al. (CCS 2020). Each stage is a pure
function from the previous ``ClientState`` (frozen) and the server's decoded request to a new
state and the reply payload; the caller persists the state between stages and verifies every
signature (certificates, envelopes) before calling. The site-side safety checks raise
``PolicyRefusal(reason=UNSAFE_REQUEST)``: they are what stops a lying server from learning a
sum of fewer than t inputs (the argument is in ``confide.secagg.view``).

- ``share_keys``: the server sends every site's signed keys (U1); the site recomputes the
  session id, the graph, its neighbourhood N(u) and checks t, k and the quorum against
  ``RoundRules.params(|U1|)`` (the caller passes that result). Shares of u's secrets are held
  by H(u) = N(u) + {u}, with x-coordinates 1..|H(u)| in site-id order; each travels sealed
  to its holder and bound to the session id, sender and receiver (``sharebox``).
- ``check_shares``: the shares from exactly N(u) in U2 must arrive; one that does not decrypt
  or verify is rejected (its sender is then dropped for this site only; the caller reports it).
- ``masked_input``: the server sends the excluded pairs E; the site's own rejections must be
  in it, and it masks with its partners N(u) in U2 minus E (at least t - 1 of them).
- ``consistency``: the site checks the survivor set U3 and returns the view digest to sign.
- ``unmask``: only with ``quorum`` signatures on the view this site signed, once, it reveals
  b-shares of its surviving partners (and itself) and s^SK-shares of its dropped partners.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from nacl.public import PrivateKey
from numpy.typing import NDArray

from confide.errors import MalformedMessage, PeerError, PolicyRefusal, Reason
from confide.secagg import shamir
from confide.secagg.graph import harary_graph
from confide.secagg.masking import KEY_BYTES, mask_input, mask_terms, pairwise_seed
from confide.secagg.params import SecAggParams
from confide.secagg.prg import DEFAULT_CIPHER, SEED_BYTES, PrgCipher
from confide.secagg.sharebox import NONCE_BYTES, open_share, seal_share
from confide.secagg.view import pair, session_id, view_digest

__all__ = [
    "AdvertisedKeys",
    "Attestation",
    "ClientStage",
    "ClientState",
    "NeighbourKeys",
    "UnmaskReply",
    "advertise",
    "check_shares",
    "consistency",
    "masked_input",
    "share_keys",
    "unmask",
]


class ClientStage(enum.Enum):
    """The last stage a site completed in this round."""

    ADVERTISED = "advertised"
    SHARED = "shared"
    CHECKED = "checked"
    MASKED = "masked"
    SIGNED = "signed"
    UNMASKED = "unmasked"


@dataclass(frozen=True, slots=True)
class AdvertisedKeys:
    """Stage 0 payload (proto ``RoundKeys``): c_u^PK and s_u^PK, 32 bytes each."""

    cipher_public_key: bytes
    mask_public_key: bytes


@dataclass(frozen=True, slots=True)
class NeighbourKeys:
    """A site's advertised keys, after the caller verified its certificate and signature.

    Args:
        site_id: the site.
        cipher_public_key: c^PK.
        mask_public_key: s^PK.
        digest: ``confide.secagg.view.keys_digest`` of its signed envelope (enters the
            session id).
    """

    site_id: str
    cipher_public_key: bytes
    mask_public_key: bytes
    digest: bytes = b""


@dataclass(frozen=True, slots=True)
class Attestation:
    """A consistency signature, after the caller verified it against the signer's certificate.

    Args:
        signer: the site that signed.
        session: the session id it signed.
        view: the view digest it signed.
    """

    signer: str
    session: bytes
    view: bytes


@dataclass(frozen=True, slots=True)
class UnmaskReply:
    """Stage 5 payload (proto ``UnmaskShares``): site -> serialized share, never both maps."""

    seed_shares: Mapping[str, bytes]
    key_shares: Mapping[str, bytes]


@dataclass(frozen=True, slots=True)
class ClientState:
    """Everything a site keeps between the stages of one round; secrets are kept out of repr.

    Args:
        site_id: u.
        round_id: binds the session id and the pairwise masks to this round.
        stage: the last completed stage.
        cipher_secret_key: c_u^SK.
        mask_secret_key: s_u^SK.
        self_seed: b_u.
        threshold: t, from the round's parameters.
        quorum: Q, matching consistency signatures needed before unmasking.
        session: the session id (hash of every site's signed keys).
        roster: U1, every site whose keys were advertised.
        neighbours: N(u) with their advertised keys.
        own_shares: u's own (b_u share, s_u^SK share).
        held: neighbour v -> (share of b_v, share of s_v^SK) that decrypted and verified.
        rejected: neighbours whose share did not.
        shared: U2, the sites whose shares were routed.
        excluded: E, the pairs that do not mask with each other.
        partners: the neighbours u masked with: N(u) in U2, minus E.
        survivors: U3, as shown at the consistency stage.
        view: the view digest this site signed.
    """

    site_id: str
    round_id: str
    stage: ClientStage
    cipher_secret_key: bytes = field(repr=False)
    mask_secret_key: bytes = field(repr=False)
    self_seed: bytes = field(repr=False)
    threshold: int = 0
    quorum: int = 0
    session: bytes = b""
    roster: frozenset[str] = frozenset()
    neighbours: Mapping[str, NeighbourKeys] = field(default_factory=dict)
    own_shares: tuple[bytes, bytes] = field(default=(b"", b""), repr=False)
    held: Mapping[str, tuple[bytes, bytes]] = field(default_factory=dict, repr=False)
    rejected: frozenset[str] = frozenset()
    shared: frozenset[str] = frozenset()
    excluded: frozenset[tuple[str, str]] = frozenset()
    partners: frozenset[str] = frozenset()
    survivors: frozenset[str] = frozenset()
    view: bytes = b""


def _refuse(why: str) -> PolicyRefusal:
    """Build the refusal every unsafe server request gets."""
    return PolicyRefusal(f"unsafe secure-aggregation request: {why}", reason=Reason.UNSAFE_REQUEST)


def _expect(state: ClientState, stage: ClientStage, what: str) -> None:
    """Refuse a request that does not follow ``stage`` (repeated or out of order)."""
    if state.stage is not stage:
        raise _refuse(f"{what} requested twice or out of order (after {state.stage.value})")


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


def _check_roster(state: ClientState, roster: Sequence[NeighbourKeys]) -> dict[str, NeighbourKeys]:
    """The roster by site id, once it is well formed and lists this site's own keys unchanged."""
    by_id = {e.site_id: e for e in roster}
    if len(by_id) != len(roster):
        raise MalformedMessage("the round's key list repeats a site")
    own = by_id.get(state.site_id)
    c_pk = bytes(PrivateKey(state.cipher_secret_key).public_key)
    s_pk = bytes(PrivateKey(state.mask_secret_key).public_key)
    if own is None or (own.cipher_public_key, own.mask_public_key) != (c_pk, s_pk):
        raise _refuse("the round's key list leaves out or alters this site's own keys")
    seen: set[bytes] = set()
    for e in roster:
        if len(e.cipher_public_key) != KEY_BYTES or len(e.mask_public_key) != KEY_BYTES:
            raise MalformedMessage(f"site {e.site_id} keys must be 32 bytes")
        keys = {e.cipher_public_key, e.mask_public_key}
        if len(keys) != 2 or keys & seen:
            raise _refuse(f"site {e.site_id} advertises a key another site (or it) also uses")
        seen |= keys
    return by_id


def _check_params(params: SecAggParams, n: int) -> None:
    """Re-check the parameters' safety conditions (never trust a caller's arithmetic)."""
    t, k, q = params.threshold, params.neighbours, params.quorum
    if params.n != n:
        raise _refuse(f"parameters are for {params.n} sites, the round has {n}")
    if not (2 <= t <= k + 1 < 2 * t and k <= n - 1):
        raise _refuse(f"threshold {t} unsafe or unreachable for {k + 1} holders")
    if not (t <= q <= n and 2 * q > n):
        raise _refuse(f"quorum {q} must be at least t and more than half of {n} sites")


def _share_keys_from_parts(
    state: ClientState,
    roster: Sequence[NeighbourKeys],
    *,
    params: SecAggParams,
    rng: Callable[[int], bytes],
) -> tuple[ClientState, dict[str, bytes]]:
    """Stage 1 with randomness from ``rng``; see ``share_keys``."""
    _expect(state, ClientStage.ADVERTISED, "share-keys")
    by_id = _check_roster(state, roster)
    _check_params(params, len(by_id))
    session = session_id(state.round_id, {s: e.digest for s, e in by_id.items()})
    graph = harary_graph(sorted(by_id), degree=params.neighbours, seed=session)
    neighbours = {v: by_id[v] for v in graph.neighbours[state.site_id]}
    holders = sorted([*neighbours, state.site_id])
    t = params.threshold
    xs = list(range(1, len(holders) + 1))
    b_shares = shamir._share_from_parts(state.self_seed, threshold=t, xs=xs, rng=rng)
    k_shares = shamir._share_from_parts(state.mask_secret_key, threshold=t, xs=xs, rng=rng)
    out: dict[str, bytes] = {}
    own: tuple[bytes, bytes] = (b"", b"")
    for holder, b_sh, k_sh in zip(holders, b_shares, k_shares, strict=True):
        share_pair = (b_sh.to_bytes(), k_sh.to_bytes())
        if holder == state.site_id:
            own = share_pair
            continue
        out[holder] = seal_share(
            secret_key=state.cipher_secret_key,
            public_key=neighbours[holder].cipher_public_key,
            session=session,
            sender=state.site_id,
            receiver=holder,
            shares=share_pair,
            nonce=rng(NONCE_BYTES),
        )
    new = replace(
        state,
        stage=ClientStage.SHARED,
        threshold=t,
        quorum=params.quorum,
        session=session,
        roster=frozenset(by_id),
        neighbours=neighbours,
        own_shares=own,
    )
    return new, out


def share_keys(
    state: ClientState, roster: Sequence[NeighbourKeys], *, params: SecAggParams
) -> tuple[ClientState, dict[str, bytes]]:
    """Stage 1: derive the session and graph, then Shamir-share b_u and s_u^SK among H(u).

    Args:
        state: from ``advertise``.
        roster: every site of the round (U1) with its verified keys and envelope digest,
            this site included (proto ``ShareKeysRequest.sites``).
        params: ``RoundRules.params(len(roster))``, computed by the caller from the signed job.

    Returns:
        The new state and ``to_site -> ciphertext`` (proto ``EncryptedShare``); u's own share
        stays in the state.

    Raises:
        PolicyRefusal: UNSAFE_REQUEST when the roster leaves out or alters this site's keys,
            two sites share a key, the parameters are unsafe or for another n, or the stage
            is repeated.
        MalformedMessage: a site listed twice, or bad key lengths.
    """
    return _share_keys_from_parts(state, roster, params=params, rng=os.urandom)


def check_shares(
    state: ClientState, received: Mapping[str, bytes], *, shared: Iterable[str]
) -> tuple[ClientState, dict[str, Reason]]:
    """Stage 2: open the shares addressed to this site; keep the good ones, name the bad.

    Args:
        state: from ``share_keys``.
        received: ``from_site -> ciphertext`` (proto ``CheckSharesRequest.shares``).
        shared: U2, every site whose shares the server routes (proto ``.shared``).

    Returns:
        The new state and the rejected senders with why (bad_signature: does not decrypt;
        replayed: bound to another session or receiver; malformed: not a share). A rejected
        sender is dropped for this site only: the caller reports it to the server.

    Raises:
        PolicyRefusal: UNSAFE_REQUEST when U2 is not within the round, leaves this site out or
            is below t, or the shares are not exactly those of this site's neighbours in U2
            (the server withheld or invented one), or the stage is out of order.
    """
    _expect(state, ClientStage.SHARED, "share check")
    u2 = frozenset(shared)
    if not u2 <= state.roster or state.site_id not in u2:
        raise _refuse("the shared set is not within the round or leaves this site out")
    if len(u2) < state.threshold:
        raise _refuse(f"only {len(u2)} sites shared keys; threshold is {state.threshold}")
    expected = set(state.neighbours) & u2
    if set(received) != expected:
        raise _refuse("the shares are not exactly those of this site's neighbours that shared")
    held: dict[str, tuple[bytes, bytes]] = {}
    rejected: dict[str, Reason] = {}
    for sender in sorted(received):
        try:
            held[sender] = open_share(
                secret_key=state.cipher_secret_key,
                public_key=state.neighbours[sender].cipher_public_key,
                session=state.session,
                sender=sender,
                receiver=state.site_id,
                ciphertext=received[sender],
            )
        except PeerError as exc:
            rejected[sender] = exc.reason
    new = replace(
        state, stage=ClientStage.CHECKED, held=held, rejected=frozenset(rejected), shared=u2
    )
    return new, rejected


def masked_input(
    state: ClientState,
    x: NDArray[np.uint32],
    *,
    excluded: Iterable[tuple[str, str]] = (),
    cipher: PrgCipher = DEFAULT_CIPHER,
    workers: int = 1,
) -> tuple[ClientState, NDArray[np.uint32]]:
    """Stage 3: mask x_u with the partners and return y_u (see ``confide.secagg.masking``).

    Args:
        state: from ``check_shares``.
        x: the quantized input x_u, 1-D uint32.
        excluded: E, pairs of sites that do not mask with each other (proto
            ``MaskedInputRequest.excluded``); must contain every sender this site rejected.
        cipher: PRG cipher (as agreed for the round).
        workers: threads for the PRG expansion.

    Raises:
        PolicyRefusal: UNSAFE_REQUEST when a pair is outside the round, this site's rejections
            are not all in E, fewer than t - 1 partners remain (x_u would be masked by too
            few pairs), or the stage is out of order.
        MalformedMessage: a bad input array.
    """
    _expect(state, ClientStage.CHECKED, "masked input")
    pairs = frozenset(pair(a, b) for a, b in excluded)
    if any(a not in state.roster or b not in state.roster for a, b in pairs):
        raise _refuse("an excluded pair names a site outside the round")
    me = state.site_id
    if any(pair(me, v) not in pairs for v in state.rejected):
        raise _refuse("a share this site rejected is not excluded")
    partners = frozenset(
        v for v in set(state.neighbours) & state.shared if pair(me, v) not in pairs
    )
    if not partners <= set(state.held):
        raise _refuse("a partner's share was not accepted")  # unreachable by construction
    if len(partners) + 1 < state.threshold:
        raise _refuse(f"only {len(partners)} partners remain; threshold is {state.threshold}")
    seeds = {
        v: pairwise_seed(
            secret_key=state.mask_secret_key,
            public_key=state.neighbours[v].mask_public_key,
            me=me,
            peer=v,
            round_id=state.round_id,
        )
        for v in partners
    }
    terms = mask_terms(me=me, self_seed=state.self_seed, pairwise=seeds)
    y = mask_input(x, terms, cipher=cipher, workers=workers)
    new = replace(state, stage=ClientStage.MASKED, excluded=pairs, partners=partners)
    return new, y


def consistency(state: ClientState, *, survivors: Iterable[str]) -> tuple[ClientState, bytes]:
    """Stage 4: check the survivor set U3 and return the view digest V to sign.

    Args:
        state: from ``masked_input``.
        survivors: U3, the sites whose masked inputs are in the sum (proto
            ``ConsistencyRequest``).

    Raises:
        PolicyRefusal: UNSAFE_REQUEST when U3 is not within U2, leaves this site out, is below
            the quorum, or the stage is out of order.
    """
    _expect(state, ClientStage.MASKED, "consistency check")
    u3 = frozenset(survivors)
    if not u3 <= state.shared:
        raise _refuse("a survivor is not among the sites that shared keys")
    if state.site_id not in u3:
        raise _refuse("this site is not listed as a survivor")
    if len(u3) < state.quorum:
        raise _refuse(f"only {len(u3)} survivors; the quorum is {state.quorum}")
    view = view_digest(state.session, shared=state.shared, excluded=state.excluded, survivors=u3)
    return replace(state, stage=ClientStage.SIGNED, survivors=u3, view=view), view


def unmask(
    state: ClientState, *, attestations: Iterable[Attestation]
) -> tuple[ClientState, UnmaskReply]:
    """Stage 5: with a quorum on this site's own view, reveal its partners' shares, once.

    b-shares of the surviving partners and of itself, s^SK-shares of the dropped partners;
    nothing for a site it rejected, excluded, or does not neighbour.

    Args:
        state: from ``consistency``.
        attestations: consistency signatures the caller verified against their signers'
            certificates (proto ``UnmaskRequest.signatures``).

    Raises:
        PolicyRefusal: UNSAFE_REQUEST when fewer than ``quorum`` distinct survivors signed
            this site's session and view, or this round was already unmasked (or never
            signed).
    """
    if state.stage is ClientStage.UNMASKED:
        raise _refuse("unmask already answered in this round")
    _expect(state, ClientStage.SIGNED, "unmask")
    signers = {
        a.signer
        for a in attestations
        if a.signer in state.survivors and (a.session, a.view) == (state.session, state.view)
    }
    if len(signers) < state.quorum:
        raise _refuse(f"{len(signers)} matching signatures; the quorum is {state.quorum}")
    alive = state.partners & state.survivors
    gone = state.partners - state.survivors
    seed_shares = {v: state.held[v][0] for v in alive}
    seed_shares[state.site_id] = state.own_shares[0]
    key_shares = {v: state.held[v][1] for v in gone}
    reply = UnmaskReply(seed_shares=seed_shares, key_shares=key_shares)
    return replace(state, stage=ClientStage.UNMASKED), reply
