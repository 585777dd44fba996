"""One job's SecAgg+ round at the aggregator: the ``ServerRound`` plus what the wire needs.

``confide.secagg.server`` holds the math (keys, graph, routed shares, ONE running sum mod
2^32); this module adds what only the aggregator knows: each site's signed ``RoundKeys``
envelope and certificate (the only part of its advertisement forwarded to other sites, so
they check the server substituted no key; sample counts, metrics and epsilons stay here),
the consistency signatures it forwards at unmask, the rejected shares it audits, the unmask
replies, and the decoding of the unmasked sum into a mean delta.

Kept in memory only: a killed aggregator restarts the round from its input model (the sites'
secrets are in their memory only too, so nothing could resume it anyway). Nothing here is
ever logged or stored: no site's quantized input or masked input is kept; a masked input is
added into the running sum on arrival and dropped.

Averaging is uniform over the n sites in the sum (DP-FedAvg, McMahan et al. 2018): with
per-site weights the server would learn sample counts and the DP sensitivity would change.
Mean delta = decode(S, n) / n, where S = sum_{u in U3} x_u mod 2^32 and ``decode`` is the
job's encoding (``confide.secagg.encoding``): the discrete Gaussian mechanism's centered
lift, granularity and inverse rotation, or fixed-point dequantization (``confide.secagg.
quantize`` for r, b and the error bound n * 2r / (2^b - 1) on the sum).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError
from numpy.typing import NDArray

from aggregator.guard import check_figures, decode
from confide import secagg
from confide.errors import MalformedMessage, ReplayedMessage
from confide.pki import CertInfo
from confide.secagg.encoding import SecureEncoding
from confide.secagg.encoding import decode as decode_sum
from confide.v1 import common_pb2, federation_pb2
from confide.wire import Binding, canonical_bytes, open_envelope
from confide.wire.blob import NamedArrays

__all__ = [
    "DropoutObserver",
    "Rejection",
    "SecureRound",
    "StageMessage",
    "rules_for",
    "stage_message",
]


def rules_for(spec: common_pb2.JobSpec) -> secagg.RoundRules:
    """The job's SecAgg+ rules, validated for every round size it allows.

    Raises:
        ConfigError: naming the ``secure_aggregation.`` key at fault (see ``RoundRules``).
    """
    rules = secagg.job_rules(spec)
    rules.validate()
    return rules


StageMessage = (
    federation_pb2.AdvertiseKeys
    | federation_pb2.ShareKeys
    | federation_pb2.SharesChecked
    | federation_pb2.ConsistencySignature
    | federation_pb2.UnmaskShares
)
"""A SecAgg+ stage message a site sends with ``SecAgg`` (every stage but the masked input)."""

_STAGE_MESSAGE: dict[int, type[StageMessage]] = {
    common_pb2.STAGE_ADVERTISE_KEYS: federation_pb2.AdvertiseKeys,
    common_pb2.STAGE_SHARE_KEYS: federation_pb2.ShareKeys,
    common_pb2.STAGE_SHARES_CHECKED: federation_pb2.SharesChecked,
    common_pb2.STAGE_CONSISTENCY: federation_pb2.ConsistencySignature,
    common_pb2.STAGE_UNMASK: federation_pb2.UnmaskShares,
}


DropoutObserver = Callable[[secagg.ServerStage, int], None]
"""Told, as each SecAgg+ stage closes, how many of the sites asked for it did not answer it
(``AggregatorMetrics.dropped_out``)."""


@dataclass(frozen=True)
class Rejection:
    """A site reported that ``sender``'s share did not decrypt or verify (``reason``)."""

    site: str
    sender: str
    reason: str


def stage_message(stage: int, payload: bytes) -> StageMessage:
    """Decode a verified SecAgg+ stage payload.

    Raises:
        MalformedMessage: not a SecAgg+ stage, or the payload does not decode.
    """
    cls = _STAGE_MESSAGE.get(stage)
    if cls is None:
        raise MalformedMessage(f"stage {stage} carries no SecAgg+ message")
    return decode(cls, payload)


@dataclass
class SecureRound:
    """The aggregator's state of one SecAgg+ round attempt.

    Args:
        server: the pure SecAgg+ server round.
        shapes: the model's ordered (name, shape) list; the flat vector follows it.
        encoding: the job's encoding of that vector (its length is what each site masks).
        seed: the round attempt's rotation seed (``confide.secagg.rotation.rotation_seed``).
        federation: the federation name (every envelope's binding).
        advertised: site -> (its RoundKeys envelope, its certificate PEM): what is forwarded.
        info: site -> its AdvertiseKeys (num_samples, metrics, epsilons): kept here.
        rejections: the rejected shares reported at the share check.
        signatures: signer -> its consistency signature envelope, forwarded at unmask.
        replies: signer -> its checked unmask reply.
        sites: the sites the round's tasks went to (asked to advertise); empty: not known, and
            the advertise stage's dropouts are not reported.
        on_dropouts: told each stage's dropouts as it closes (``dropouts``); None: nobody.
    """

    server: secagg.ServerRound
    shapes: list[tuple[str, tuple[int, ...]]]
    encoding: SecureEncoding
    seed: bytes
    federation: str = ""
    advertised: dict[str, tuple[common_pb2.Envelope, bytes]] = field(default_factory=dict)
    info: dict[str, federation_pb2.AdvertiseKeys] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)
    signatures: dict[str, common_pb2.Envelope] = field(default_factory=dict)
    replies: dict[str, secagg.UnmaskReply] = field(default_factory=dict)
    sites: frozenset[str] = frozenset()
    on_dropouts: DropoutObserver | None = None

    @classmethod
    def start(
        cls,
        *,
        federation: str,
        job_id: str,
        round: int,
        rules: secagg.RoundRules,
        shapes: list[tuple[str, tuple[int, ...]]],
        encoding: SecureEncoding,
        seed: bytes,
        sites: Iterable[str] = (),
        on_dropouts: DropoutObserver | None = None,
    ) -> SecureRound:
        """A new round accepting advertised keys for a model of ``shapes``, whose sites mask
        ``encoding.length`` words each.

        Args:
            sites: the sites asked to train and advertise (for the advertise stage's dropouts).
            on_dropouts: told each stage's dropouts as it closes (the aggregator's metrics).

        Raises:
            ValueError: the encoding is not of a vector of the model's length.
        """
        dim = sum(int(np.prod(s)) for _, s in shapes)
        if encoding.dim != dim:
            raise ValueError(f"encoding of {encoding.dim} coordinates for a model of {dim}")
        round_id = f"{federation}/{job_id}/{round}"
        server = secagg.new_round(round_id=round_id, rules=rules, dim=encoding.length)
        return cls(
            server,
            shapes,
            encoding,
            seed,
            federation,
            sites=frozenset(sites),
            on_dropouts=on_dropouts,
        )

    @property
    def dim(self) -> int:
        """The length of each masked vector (the encoding's, d' >= d for the discrete one)."""
        return self.server.dim

    # ----- stage messages -----

    def advertise(
        self,
        site: CertInfo,
        env: common_pb2.Envelope,
        keys: federation_pb2.AdvertiseKeys,
        *,
        now: float,
    ) -> None:
        """Stage 0: verify the site's signed RoundKeys and record them and its figures.

        Raises:
            BadSignature, ReplayedMessage, MalformedMessage: the RoundKeys envelope is not
                the sender's, not for this job, round and attempt, or does not decode; see
                also ``confide.secagg.add_advertised``.
            NonFiniteValue, MalformedMessage: a metric or epsilon is not finite and >= 0.
        """
        check_figures(keys.metrics, epsilon=keys.epsilon, update_epsilon=keys.update_epsilon)
        inner = keys.keys
        payload = open_envelope(
            inner,
            verify_key=site.signing_public_key,
            expect=Binding(
                federation=self.federation,
                sender=site.name,
                stage=common_pb2.STAGE_SECAGG_KEYS,
                job_id=env.job_id,
                round=env.round,
            ),
            now=now,
        )
        try:
            rk = federation_pb2.RoundKeys.FromString(payload)
        except DecodeError as exc:
            raise MalformedMessage("round keys do not decode") from exc
        if rk.task_id != keys.task_id:
            raise ReplayedMessage("round keys answer another task than their advertisement")
        secagg.add_advertised(
            self.server,
            site.name,
            secagg.AdvertisedKeys(rk.cipher_public_key, rk.mask_public_key),
            digest=secagg.keys_digest(canonical_bytes(inner), inner.signature),
        )
        self.advertised[site.name] = (inner, site.pem)
        self.info[site.name] = keys

    def take(
        self, site: CertInfo, env: common_pb2.Envelope, msg: StageMessage, *, now: float
    ) -> None:
        """Take a decoded stage message (see ``stage_message``) into the round.

        Raises:
            MalformedMessage, BadSignature: the round refuses it.
            ReplayedMessage: see the stage's ``confide.secagg`` function.
        """
        if isinstance(msg, federation_pb2.AdvertiseKeys):
            self.advertise(site, env, msg, now=now)
        elif isinstance(msg, federation_pb2.ShareKeys):
            self.shares(site.name, msg)
        elif isinstance(msg, federation_pb2.SharesChecked):
            self.checked(site.name, msg)
        elif isinstance(msg, federation_pb2.ConsistencySignature):
            self.consistency(site.name, env, msg)
        else:
            self.unmask(site.name, msg)

    def shares(self, site: str, msg: federation_pb2.ShareKeys) -> None:
        """Stage 1: route a site's encrypted shares.

        Raises:
            ReplayedMessage, MalformedMessage: see ``confide.secagg.add_shares``.
        """
        out: dict[str, bytes] = {}
        for sh in msg.shares:
            if sh.to_site in out:
                raise MalformedMessage(f"{site} sent two shares to {sh.to_site}")
            out[sh.to_site] = sh.ciphertext
        secagg.add_shares(self.server, site, out)

    def checked(self, site: str, msg: federation_pb2.SharesChecked) -> None:
        """Stage 2: record which shares a site rejected (each names its sender).

        Raises:
            ReplayedMessage, MalformedMessage: see ``confide.secagg.add_share_check``.
        """
        found: list[Rejection] = []
        for r in msg.rejected:
            if any(f.sender == r.from_site for f in found):
                raise MalformedMessage(f"{site} rejected {r.from_site}'s share twice")
            found.append(Rejection(site, r.from_site, r.reason[:64]))
        secagg.add_share_check(self.server, site, [f.sender for f in found])
        self.rejections.extend(found)

    def masked(self, site: str, arrays: NamedArrays) -> None:
        """Stage 3: add a site's masked input into the running sum; it is not kept.

        Raises:
            ReplayedMessage, MalformedMessage: see ``confide.secagg.add_masked_input``.
        """
        if len(arrays) != 1 or arrays[0][0] != "masked":
            raise MalformedMessage("a masked input is one uint32 tensor named 'masked'")
        y = np.asarray(arrays[0][1])
        secagg.add_masked_input(self.server, site, y)  # type: ignore[arg-type]

    def consistency(
        self, site: str, env: common_pb2.Envelope, msg: federation_pb2.ConsistencySignature
    ) -> None:
        """Stage 4: keep a survivor's signature on the view (forwarded at unmask).

        Raises:
            ReplayedMessage, MalformedMessage: see ``confide.secagg.add_consistency``.
        """
        secagg.add_consistency(self.server, site, session=msg.session_id, view=msg.view_sha256)
        self.signatures[site] = env

    def unmask(self, site: str, msg: federation_pb2.UnmaskShares) -> None:
        """Stage 5: check and keep a signer's revealed shares.

        Raises:
            MalformedMessage: see ``confide.secagg.check_unmask_reply``.
        """
        reply = secagg.UnmaskReply(
            seed_shares=_shares(msg.seed_shares), key_shares=_shares(msg.key_shares)
        )
        secagg.check_unmask_reply(self.server, site, reply)
        self.replies[site] = reply

    # ----- closing stages -----

    def dropouts(self, stage: secagg.ServerStage) -> int:
        """How many sites asked for ``stage`` have not answered it (at its close: dropped out).

        The sites asked for a stage are those the stage before left in it: U1 for the share
        stage, U2 for the check, the masking sites for the masked input, U3 for the
        consistency stage, U4 for unmasking; the advertise stage's are ``sites`` (0 when not
        known).
        """
        s = self.server
        asked: Iterable[str]
        answered: Iterable[str]
        if stage is secagg.ServerStage.ADVERTISE:
            asked, answered = self.sites, s.keys
        elif stage is secagg.ServerStage.SHARE_KEYS:
            asked, answered = s.keys, s.shared
        elif stage is secagg.ServerStage.CHECK_SHARES:
            asked, answered = s.shared, s.checked
        elif stage is secagg.ServerStage.MASKED_INPUT:
            asked, answered = s.masking, s.survivors
        elif stage is secagg.ServerStage.CONSISTENCY:
            asked, answered = s.survivors, s.signers
        elif stage is secagg.ServerStage.UNMASK:
            asked, answered = s.signers, self.replies
        else:
            return 0
        return len(set(asked) - set(answered))

    def _report_dropouts(self, stage: secagg.ServerStage) -> None:
        """Tell ``on_dropouts`` the stage's dropouts, before its close can abort the round."""
        if self.on_dropouts is not None:
            self.on_dropouts(stage, self.dropouts(stage))

    def close(
        self, closing: secagg.ServerStage
    ) -> tuple[dict[str, federation_pb2.Task], frozenset[str]]:
        """Close ``closing``; build each next-stage site's task payload (kind and oneof).

        Returns:
            The tasks, and the sites that answered ``closing`` but get no next task (at the
            share check: too few partners left to mask with).

        Raises:
            RoundAborted: too few sites completed the stage.
        """
        s = self.server
        if s.stage is closing:  # a stage is closed once; a stray second close raises below
            self._report_dropouts(closing)
        tasks: dict[str, federation_pb2.Task] = {}
        left: frozenset[str] = frozenset()
        K = federation_pb2
        if closing is secagg.ServerStage.ADVERTISE:
            secagg.close_advertise(s)
            if s.params is None:  # close_advertise sets them or raises
                raise RuntimeError("round parameters missing after advertising")
            req = K.ShareKeysRequest(threshold=s.params.threshold, num_selected=len(s.keys))
            for site in sorted(s.keys):
                env, pem = self.advertised[site]
                req.sites.add(site_id=site, advertised=env, certificate=pem)
            for site in sorted(s.keys):
                tasks[site] = K.Task(kind=K.TASK_KIND_SHARE_KEYS, share_keys=req)
        elif closing is secagg.ServerStage.SHARE_KEYS:
            secagg.close_share_keys(s)
            for site in sorted(s.shared):
                t = K.Task(kind=K.TASK_KIND_CHECK_SHARES)
                for frm, ct in sorted(secagg.check_shares_request(s, site).items()):
                    t.check_shares.shares.add(from_site=frm, ciphertext=ct)
                t.check_shares.shared.extend(sorted(s.shared))
                tasks[site] = t
        elif closing is secagg.ServerStage.CHECK_SHARES:
            left = secagg.close_check_shares(s)
            excluded = [K.SitePair(a=a, b=b) for a, b in sorted(s.excluded)]
            for site in sorted(s.masking):
                tasks[site] = K.Task(
                    kind=K.TASK_KIND_MASKED_INPUT,
                    masked_input=K.MaskedInputRequest(excluded=excluded),
                )
        elif closing is secagg.ServerStage.MASKED_INPUT:
            secagg.close_masked_input(s)
            survivors = sorted(s.survivors)
            for site in survivors:
                tasks[site] = K.Task(
                    kind=K.TASK_KIND_CONSISTENCY,
                    consistency=K.ConsistencyRequest(survivors=survivors),
                )
        elif closing is secagg.ServerStage.CONSISTENCY:
            secagg.close_consistency(s)
            sigs = [self.signatures[site] for site in sorted(s.signers)]
            for site in sorted(s.signers):
                tasks[site] = K.Task(
                    kind=K.TASK_KIND_UNMASK, unmask=K.UnmaskRequest(signatures=sigs)
                )
        else:
            raise ValueError(f"cannot close stage {closing.value}")
        return tasks, left

    def mean_delta(self) -> NamedArrays:
        """Unmask the sum and decode it to the uniform mean delta over the n sites in it.

        Raises:
            RoundAborted: too few unmask replies, or shares that do not rebuild a secret.
        """
        if self.server.stage is secagg.ServerStage.UNMASK:
            self._report_dropouts(secagg.ServerStage.UNMASK)
        total = secagg.finish(self.server, self.replies)
        n = len(self.server.survivors)
        mean: NDArray[np.float64] = decode_sum(total, self.encoding, n=n, seed=self.seed) / n
        out: NamedArrays = []
        off = 0
        for name, shape in self.shapes:
            size = int(np.prod(shape))
            out.append((name, mean[off : off + size].reshape(shape)))
            off += size
        return out


def _shares(items: object) -> dict[str, bytes]:
    """``RevealedShare`` list -> site -> share bytes, refusing a site named twice.

    Raises:
        MalformedMessage: a site appears twice.
    """
    out: dict[str, bytes] = {}
    for it in items:  # type: ignore[attr-defined]
        if it.site_id in out:
            raise MalformedMessage(f"share of {it.site_id} revealed twice")
        out[it.site_id] = bytes(it.share)
    return out
