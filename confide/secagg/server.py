"""The server's side of one SecAgg+ round: route shares, sum masked inputs, unmask the sum.

Bonawitz et al. (CCS 2017, Sec. 4, Fig. 4) with the neighbour graph of Bell et al. (CCS 2020).
Sets, as in the paper: U1 advertised keys, U2 sent shares (stage 1), checked the shares
addressed to them (stage 2; E = pairs where one rejected the other's share), U3 sent a
masked input (stage 3), U4 signed the view (stage 4), U5 answered unmask (stage 5).

``ServerRound`` keeps only keys, the graph, the encrypted shares it routes (it cannot read
them) and ONE running sum mod 2^32 of the masked inputs, updated in place on arrival: no
individual masked input is ever stored, and memory is O(d) whatever the number of sites.
The stage functions mutate the round in place for that reason (copying a d-sized sum per
arrival would double the memory traffic).

The server derives nothing the sites do not check: the degree and threshold come from
``RoundRules.params(|U1|)``, the graph from the session id over every site's signed keys
(``confide.secagg.view``), and the view it asks the sites to sign is the one it unmasks.

``finish`` unmasks, with N'(u) = N(u) minus the pairs in E:
sum_{u in U3} y_u - sum_{u in U3} PRG(b_u)
+- sum_{u in U2 \\ U3} sum_{v in N'(u) and U3} PRG(s_uv) = sum_{u in U3} x_u mod 2^32.
When any stage ends with too few sites, or a secret cannot be rebuilt from t shares, the
round raises ``RoundAborted`` and nothing is unmasked.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from nacl.public import PrivateKey
from numpy.typing import NDArray

from confide.errors import ConfigError, InternalError, MalformedMessage, Reason, ReplayedMessage
from confide.secagg import shamir
from confide.secagg.client import AdvertisedKeys, UnmaskReply
from confide.secagg.graph import Graph, harary_graph
from confide.secagg.masking import KEY_BYTES, pairwise_seed, unmask_terms
from confide.secagg.params import RoundRules, SecAggParams
from confide.secagg.prg import accumulate
from confide.secagg.view import pair, session_id, view_digest

__all__ = [
    "RoundAborted",
    "ServerRound",
    "ServerStage",
    "add_advertised",
    "add_consistency",
    "add_masked_input",
    "add_share_check",
    "add_shares",
    "check_shares_request",
    "check_unmask_reply",
    "close_advertise",
    "close_check_shares",
    "close_consistency",
    "close_masked_input",
    "close_share_keys",
    "finish",
    "new_round",
    "partners",
]


class RoundAborted(InternalError):
    """Too few sites completed a stage (or shares were inconsistent); nothing is revealed."""

    default_reason = Reason.ROUND_ABORTED


class ServerStage(enum.Enum):
    """The stage whose messages the round currently accepts."""

    ADVERTISE = "advertise"
    SHARE_KEYS = "share_keys"
    CHECK_SHARES = "check_shares"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


@dataclass(slots=True)
class ServerRound:
    """Server state of one round; see the module docstring for what it never holds.

    Args:
        round_id: the round binding, same string the sites use.
        rules: the job's rules; ``params`` is taken from them for |U1| when advertising ends.
        dim: d, the length of every input vector.
        stage: the stage now accepting messages.
        keys: U1, site -> advertised keys.
        digests: site -> ``keys_digest`` of its signed keys envelope.
        params: the round's parameters (set when advertising ends).
        session: the session id (set when advertising ends).
        graph: the neighbour graph over U1 (set when advertising ends).
        routed: receiver -> sender -> ciphertext, the shares being routed.
        shared: U2.
        checked: sites that answered the share check.
        rejected: site -> the senders whose shares it rejected.
        excluded: E, pairs that do not mask with each other.
        masking: sites sent the masked-input task (checked, with >= t - 1 partners).
        survivors: U3 (so far).
        signers: U4 (so far).
        total: running sum of the masked inputs received, mod 2^32.
    """

    round_id: str
    rules: RoundRules
    dim: int
    stage: ServerStage = ServerStage.ADVERTISE
    keys: dict[str, AdvertisedKeys] = field(default_factory=dict)
    digests: dict[str, bytes] = field(default_factory=dict)
    params: SecAggParams | None = None
    session: bytes = b""
    graph: Graph | None = None
    routed: dict[str, dict[str, bytes]] = field(default_factory=dict, repr=False)
    shared: set[str] = field(default_factory=set)
    checked: set[str] = field(default_factory=set)
    rejected: dict[str, frozenset[str]] = field(default_factory=dict)
    excluded: set[tuple[str, str]] = field(default_factory=set)
    masking: set[str] = field(default_factory=set)
    survivors: set[str] = field(default_factory=set)
    signers: set[str] = field(default_factory=set)
    total: NDArray[np.uint32] = field(default_factory=lambda: np.zeros(0, np.uint32), repr=False)

    @property
    def view(self) -> bytes:
        """The view digest the survivors sign (valid from the consistency stage on)."""
        return view_digest(
            self.session, shared=self.shared, excluded=self.excluded, survivors=self.survivors
        )


def new_round(*, round_id: str, rules: RoundRules, dim: int) -> ServerRound:
    """Start a round accepting advertised keys.

    Args:
        round_id: e.g. ``"<federation>/<job>/<round>"``.
        rules: the job's ``RoundRules`` (validated at submit).
        dim: d.
    """
    if dim < 1:
        raise ValueError("dim must be >= 1")
    return ServerRound(
        round_id=round_id, rules=rules, dim=dim, total=np.zeros(dim, dtype=np.uint32)
    )


def _expect(state: ServerRound, stage: ServerStage) -> None:
    """Raise ``ReplayedMessage(WRONG_STAGE)`` unless the round is in ``stage``."""
    if state.stage is not stage:
        raise ReplayedMessage(
            f"round is in stage {state.stage.value}, not {stage.value}", reason=Reason.WRONG_STAGE
        )


def _abort(state: ServerRound, why: str) -> RoundAborted:
    """Mark the round aborted and build the error."""
    state.stage = ServerStage.ABORTED
    return RoundAborted(f"secure aggregation round {state.round_id} aborted: {why}")


def _graph(state: ServerRound) -> Graph:
    """Return the round's graph (set once advertising closed)."""
    if state.graph is None:
        raise ReplayedMessage("graph not decided yet", reason=Reason.WRONG_STAGE)
    return state.graph


def _params(state: ServerRound) -> SecAggParams:
    """Return the round's parameters (set once advertising closed)."""
    if state.params is None:
        raise ReplayedMessage("parameters not decided yet", reason=Reason.WRONG_STAGE)
    return state.params


def partners(state: ServerRound, site: str) -> frozenset[str]:
    """N'(site) in U2: the neighbours ``site`` masks with (or would have)."""
    nbs = _graph(state).neighbours[site] & state.shared
    return frozenset(v for v in nbs if pair(site, v) not in state.excluded)


def add_advertised(state: ServerRound, site: str, keys: AdvertisedKeys, *, digest: bytes) -> None:
    """Record a site's stage-0 keys (U1) and the digest of its signed keys envelope.

    Raises:
        ReplayedMessage: the site already advertised, or wrong stage.
        MalformedMessage: keys of the wrong length, or a key another site already uses.
    """
    _expect(state, ServerStage.ADVERTISE)
    if site in state.keys:
        raise ReplayedMessage(f"{site} already advertised keys")
    if len(keys.cipher_public_key) != KEY_BYTES or len(keys.mask_public_key) != KEY_BYTES:
        raise MalformedMessage("advertised keys must be 32 bytes")
    used = {k for v in state.keys.values() for k in (v.cipher_public_key, v.mask_public_key)}
    if {keys.cipher_public_key, keys.mask_public_key} & used or (
        keys.cipher_public_key == keys.mask_public_key
    ):
        raise MalformedMessage(f"{site} advertises a key already in use")
    state.keys[site] = keys
    state.digests[site] = bytes(digest)


def close_advertise(state: ServerRound) -> None:
    """End stage 0: take ``params(|U1|)``, the session id and the graph over U1.

    Raises:
        RoundAborted: the job's rules allow no round of |U1| sites.
    """
    _expect(state, ServerStage.ADVERTISE)
    sites = sorted(state.keys)
    try:
        params = state.rules.params(len(sites))
    except ConfigError as exc:
        raise _abort(state, f"{len(sites)} sites advertised keys: {exc.problem}") from exc
    state.params = params
    state.session = session_id(state.round_id, state.digests)
    state.graph = harary_graph(sites, degree=params.neighbours, seed=state.session)
    state.stage = ServerStage.SHARE_KEYS


def add_shares(state: ServerRound, site: str, shares: Mapping[str, bytes]) -> None:
    """Record a site's encrypted shares (U2); exactly one per neighbour is required.

    Raises:
        ReplayedMessage: sent twice or wrong stage.
        MalformedMessage: not in U1, or the receivers are not exactly its neighbours.
    """
    _expect(state, ServerStage.SHARE_KEYS)
    graph = _graph(state)
    if site not in graph.neighbours:
        raise MalformedMessage(f"{site} did not advertise keys")
    if site in state.shared:
        raise ReplayedMessage(f"{site} already sent shares")
    if set(shares) != graph.neighbours[site]:
        raise MalformedMessage(f"{site} must send one share to each neighbour")
    for to, ct in shares.items():
        state.routed.setdefault(to, {})[site] = bytes(ct)
    state.shared.add(site)


def close_share_keys(state: ServerRound) -> None:
    """End stage 1 and freeze U2.

    Raises:
        RoundAborted: |U2| < t.
    """
    _expect(state, ServerStage.SHARE_KEYS)
    if len(state.shared) < _params(state).threshold:
        raise _abort(state, f"{len(state.shared)} sites shared keys")
    state.stage = ServerStage.CHECK_SHARES


def check_shares_request(state: ServerRound, site: str) -> dict[str, bytes]:
    """Return ``from_site -> ciphertext`` for ``site`` (proto ``CheckSharesRequest``)."""
    _expect(state, ServerStage.CHECK_SHARES)
    if site not in state.shared:
        raise MalformedMessage(f"{site} did not share keys")
    return {u: ct for u, ct in state.routed.get(site, {}).items() if u in state.shared}


def add_share_check(state: ServerRound, site: str, rejected: Iterable[str]) -> None:
    """Record which of the shares routed to ``site`` it rejected.

    Raises:
        ReplayedMessage: sent twice or wrong stage.
        MalformedMessage: not in U2, or it names a sender that sent it no share.
    """
    _expect(state, ServerStage.CHECK_SHARES)
    if site not in state.shared:
        raise MalformedMessage(f"{site} did not share keys")
    if site in state.checked:
        raise ReplayedMessage(f"{site} already checked its shares")
    bad = frozenset(rejected)
    if not bad <= _graph(state).neighbours[site] & state.shared:
        raise MalformedMessage(f"{site} rejected a share it was not sent")
    state.checked.add(site)
    state.rejected[site] = bad


def close_check_shares(state: ServerRound) -> frozenset[str]:
    """End stage 2: fix E and the sites that mask (each with at least t - 1 partners).

    E holds every rejected pair and every pair of a site that will not mask (it did not
    answer the check, or has too few partners left), so each masking site's partners mask
    too, and a masked input never depends on the key of a site outside the masking stage.

    Returns:
        The sites that checked their shares but are left out of the masking stage.

    Raises:
        RoundAborted: fewer than t sites may mask.
    """
    _expect(state, ServerStage.CHECK_SHARES)
    graph = _graph(state)
    t = _params(state).threshold
    state.excluded = {pair(u, v) for u, bad in state.rejected.items() for v in bad}
    state.masking = set(state.checked)
    # A site that will not mask masks with nobody: excluding all its pairs means nobody
    # masks with it either, so its key is never needed. Leaving one out can leave another
    # with too few partners, hence the loop (it only shrinks, so it ends).
    out = state.shared - state.masking
    while True:
        state.excluded |= {pair(h, v) for h in out for v in graph.neighbours[h] & state.shared}
        state.masking -= out
        out = {u for u in state.masking if len(partners(state, u)) + 1 < t}
        if not out:
            break
    if len(state.masking) < t:
        raise _abort(state, f"{len(state.masking)} sites can mask their input")
    state.stage = ServerStage.MASKED_INPUT
    return frozenset(state.checked - state.masking)


def add_masked_input(state: ServerRound, site: str, y: NDArray[np.uint32]) -> None:
    """Add y_site into the running sum mod 2^32 (U3); y itself is not kept.

    Raises:
        ReplayedMessage: sent twice or wrong stage.
        MalformedMessage: not asked to mask, or y is not a uint32 vector of length d.
    """
    _expect(state, ServerStage.MASKED_INPUT)
    if site not in state.masking:
        raise MalformedMessage(f"{site} was not asked for a masked input")
    if site in state.survivors:
        raise ReplayedMessage(f"{site} already sent its masked input")
    if not isinstance(y, np.ndarray) or y.dtype != np.uint32 or y.shape != (state.dim,):
        raise MalformedMessage(f"masked input must be uint32 of shape ({state.dim},)")
    np.add(state.total, y, out=state.total)
    state.survivors.add(site)


def close_masked_input(state: ServerRound) -> None:
    """End stage 3 and freeze U3, the sum's sites.

    Raises:
        RoundAborted: |U3| below the quorum (no view could be confirmed).
    """
    _expect(state, ServerStage.MASKED_INPUT)
    if len(state.survivors) < _params(state).quorum:
        raise _abort(state, f"{len(state.survivors)} sites sent masked inputs")
    state.stage = ServerStage.CONSISTENCY


def add_consistency(state: ServerRound, site: str, *, session: bytes, view: bytes) -> None:
    """Record a survivor's (verified) signature on the view (U4).

    Raises:
        ReplayedMessage: sent twice or wrong stage.
        MalformedMessage: not a survivor, or it signed another session or view.
    """
    _expect(state, ServerStage.CONSISTENCY)
    if site not in state.survivors:
        raise MalformedMessage(f"{site} is not a survivor")
    if site in state.signers:
        raise ReplayedMessage(f"{site} already signed the view")
    if (session, view) != (state.session, state.view):
        raise MalformedMessage(f"{site} signed another view")
    state.signers.add(site)


def close_consistency(state: ServerRound) -> None:
    """End stage 4: the view is confirmed when a quorum signed it.

    Raises:
        RoundAborted: |U4| below the quorum.
    """
    _expect(state, ServerStage.CONSISTENCY)
    q = _params(state).quorum
    if len(state.signers) < q:
        raise _abort(state, f"{len(state.signers)} sites signed the view; the quorum is {q}")
    state.stage = ServerStage.UNMASK


def check_unmask_reply(state: ServerRound, site: str, reply: UnmaskReply) -> None:
    """Validate one stage-5 reply on arrival; drop the reply when this raises.

    Raises:
        MalformedMessage: not a signer, a share outside what it may reveal, both shares for
            one site, or a share that does not parse.
    """
    if site not in state.signers:
        raise MalformedMessage(f"{site} did not sign the view")
    mine = partners(state, site)
    if set(reply.seed_shares) & set(reply.key_shares):
        raise MalformedMessage(f"{site} revealed both shares of one site")
    if not set(reply.seed_shares) <= (mine & state.survivors) | {site}:
        raise MalformedMessage(f"{site} revealed seed shares it was not asked for")
    if not set(reply.key_shares) <= mine - state.survivors:
        raise MalformedMessage(f"{site} revealed key shares it was not asked for")
    for data in (*reply.seed_shares.values(), *reply.key_shares.values()):
        shamir.Share.from_bytes(data)


def _rebuild(state: ServerRound, owner: str, shares: list[bytes], what: str) -> bytes:
    """Reconstruct one secret of ``owner`` from its revealed shares, or abort the round."""
    t = _params(state).threshold
    if len(shares) < t:
        raise _abort(state, f"{len(shares)} {what} shares of {owner}, threshold is {t}")
    try:
        return shamir.reconstruct([shamir.Share.from_bytes(s) for s in shares], threshold=t)
    except MalformedMessage as exc:
        raise _abort(state, f"{what} shares of {owner} are inconsistent") from exc


def finish(
    state: ServerRound, replies: Mapping[str, UnmaskReply], *, workers: int = 1
) -> NDArray[np.uint32]:
    """Unmask the running sum: returns sum_{u in U3} x_u mod 2^32 (the round's own array).

    Every secret is rebuilt and checked before the sum is touched, so an abort reveals
    nothing. A rebuilt s_u^SK must match u's advertised s_u^PK.

    Args:
        state: a round in stage UNMASK.
        replies: signer -> its ``UnmaskReply`` (U5); replies from others are ignored.
        workers: threads for the PRG expansion. Default 1: ``cryptography`` 48 holds the GIL
            in ``update_into``, and 2 threads on 2 cores measured 0.236 s against 0.225 s
            for 1 thread (378 streams of 1e6 words), so threads only add overhead today.

    Raises:
        RoundAborted: |U5| < t, fewer than t shares for a secret, or inconsistent shares.
        MalformedMessage: a reply fails ``check_unmask_reply``.
    """
    _expect(state, ServerStage.UNMASK)
    answered = {s: r for s, r in replies.items() if s in state.signers}
    for site, reply in answered.items():
        check_unmask_reply(state, site, reply)
    if len(answered) < _params(state).threshold:
        raise _abort(state, f"{len(answered)} sites answered unmask")
    dropped = state.shared - state.survivors
    seed_shares: dict[str, list[bytes]] = {u: [] for u in state.survivors}
    key_shares: dict[str, list[bytes]] = {u: [] for u in dropped}
    for reply in answered.values():
        for u, data in reply.seed_shares.items():
            seed_shares[u].append(data)
        for u, data in reply.key_shares.items():
            key_shares[u].append(data)
    survivor_seeds = [_rebuild(state, u, seed_shares[u], "seed") for u in sorted(state.survivors)]
    pairs: list[tuple[str, str, bytes]] = []
    for u in sorted(dropped):
        masked_with = sorted(partners(state, u) & state.survivors)
        if not masked_with:
            continue  # nobody in the sum masked with u: its key is not needed
        s_sk = _rebuild(state, u, key_shares[u], "mask-key")
        if bytes(PrivateKey(s_sk).public_key) != state.keys[u].mask_public_key:
            raise _abort(state, f"mask-key shares of {u} do not match its public key")
        for v in masked_with:
            seed = pairwise_seed(
                secret_key=s_sk,
                public_key=state.keys[v].mask_public_key,
                me=u,
                peer=v,
                round_id=state.round_id,
            )
            pairs.append((u, v, seed))
    terms = unmask_terms(survivor_seeds=survivor_seeds, dropped_pairs=pairs)
    accumulate(state.total, terms, cipher=_params(state).cipher, workers=workers)
    state.stage = ServerStage.DONE
    return state.total
