"""One job's SecAgg+ round at the aggregator: the ``ServerRound`` plus what the wire needs.

``confide.secagg.server`` holds the math (keys, graph, routed shares, ONE running sum mod
2^32); this module adds what only the aggregator knows: each site's signed AdvertiseKeys
envelope and certificate (forwarded unchanged so neighbours can check the server substituted
no key), the round's hold-out metrics from the advertisements, the unmask replies, and the
decoding of the unmasked sum into a mean delta.

Kept in memory only: a killed aggregator restarts the round from its input model (the sites'
secrets are in their memory only too, so nothing could resume it anyway). Nothing here is
ever logged or stored: no site's quantized input or masked input is kept; a masked input is
added into the running sum on arrival and dropped.

Averaging is uniform over the n sites in the sum (DP-FedAvg, McMahan et al. 2018): with
per-site weights the server would learn sample counts and the DP sensitivity would change.
Mean delta = dequantize(S, n) / n, where S = sum_{u in U3} x_u mod 2^32 (see
``confide.secagg.quantize`` for r, b and the error bound n * 2r / (2^b - 1) on the sum).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from aggregator.guard import check_figures, decode
from confide import secagg
from confide.errors import MalformedMessage
from confide.secagg.quantize import DEFAULT_BITS, DEFAULT_CLIP_RANGE
from confide.v1 import common_pb2, federation_pb2
from confide.wire.blob import NamedArrays

__all__ = [
    "SecureRound",
    "StageMessage",
    "params_for",
    "quantization",
    "stage_message",
    "stage_timeout",
]

_DEFAULT_STAGE_TIMEOUT_S = 60.0


def quantization(spec: common_pb2.JobSpec) -> tuple[float, int]:
    """The job's clip range r and bits b (``confide.secagg.quantize`` defaults when unset)."""
    sa = spec.secure_aggregation
    return (sa.clip_range or DEFAULT_CLIP_RANGE, sa.bits or DEFAULT_BITS)


def stage_timeout(spec: common_pb2.JobSpec) -> float:
    """Seconds each SecAgg+ stage after ADVERTISE waits (default 60 s when unset)."""
    return spec.secure_aggregation.stage_timeout_s or _DEFAULT_STAGE_TIMEOUT_S


def params_for(spec: common_pb2.JobSpec, *, n: int) -> secagg.SecAggParams:
    """Validate the job's SecAgg+ settings for ``n`` selected sites.

    Raises:
        ConfigError: naming the ``secure_aggregation.`` key at fault (see ``choose_params``).
    """
    return secagg.job_params(spec, n=n)


StageMessage = federation_pb2.AdvertiseKeys | federation_pb2.ShareKeys | federation_pb2.UnmaskShares
"""A SecAgg+ stage message a site sends with ``SecAgg`` (stage 0, 1 or 3)."""

_STAGE_MESSAGE: dict[int, type[StageMessage]] = {
    common_pb2.STAGE_ADVERTISE_KEYS: federation_pb2.AdvertiseKeys,
    common_pb2.STAGE_SHARE_KEYS: federation_pb2.ShareKeys,
    common_pb2.STAGE_UNMASK: federation_pb2.UnmaskShares,
}


def stage_message(stage: int, payload: bytes) -> StageMessage:
    """Decode a verified stage-0/1/3 payload.

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
        advertised: site -> (its AdvertiseKeys envelope as received, its certificate PEM).
        info: site -> its AdvertiseKeys (num_samples, metrics, epsilons).
        replies: survivor -> its checked unmask reply.
    """

    server: secagg.ServerRound
    shapes: list[tuple[str, tuple[int, ...]]]
    advertised: dict[str, tuple[common_pb2.Envelope, bytes]] = field(default_factory=dict)
    info: dict[str, federation_pb2.AdvertiseKeys] = field(default_factory=dict)
    replies: dict[str, secagg.UnmaskReply] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        *,
        round_id: str,
        params: secagg.SecAggParams,
        shapes: list[tuple[str, tuple[int, ...]]],
    ) -> SecureRound:
        """A new round accepting advertised keys for a model of ``shapes``."""
        dim = sum(int(np.prod(s)) for _, s in shapes)
        return cls(secagg.new_round(round_id=round_id, params=params, dim=dim), shapes)

    @property
    def dim(self) -> int:
        """d, the length of the flat vector."""
        return self.server.dim

    # ----- stage messages -----

    def advertise(
        self,
        site: str,
        env: common_pb2.Envelope,
        cert_pem: bytes,
        keys: federation_pb2.AdvertiseKeys,
    ) -> None:
        """Stage 0: record a site's keys with its envelope and certificate (to forward).

        Raises:
            ReplayedMessage, MalformedMessage: see ``confide.secagg.add_advertised``.
            NonFiniteValue, MalformedMessage: a metric or epsilon is not finite and >= 0.
        """
        check_figures(keys.metrics, epsilon=keys.epsilon, update_epsilon=keys.update_epsilon)
        secagg.add_advertised(
            self.server, site, secagg.AdvertisedKeys(keys.cipher_public_key, keys.mask_public_key)
        )
        self.advertised[site] = (env, cert_pem)
        self.info[site] = keys

    def take(self, site: str, env: common_pb2.Envelope, cert_pem: bytes, msg: StageMessage) -> None:
        """Take a decoded stage-0/1/3 message (see ``stage_message``) into the round.

        Raises:
            MalformedMessage: the round refuses it.
            ReplayedMessage: see the stage's ``confide.secagg`` function.
        """
        if isinstance(msg, federation_pb2.AdvertiseKeys):
            self.advertise(site, env, cert_pem, msg)
        elif isinstance(msg, federation_pb2.ShareKeys):
            self.shares(site, msg)
        else:
            self.unmask(site, msg)

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

    def masked(self, site: str, arrays: NamedArrays) -> None:
        """Stage 2: add a site's masked input into the running sum; it is not kept.

        Raises:
            ReplayedMessage, MalformedMessage: see ``confide.secagg.add_masked_input``.
        """
        if len(arrays) != 1 or arrays[0][0] != "masked":
            raise MalformedMessage("a masked input is one uint32 tensor named 'masked'")
        y = np.asarray(arrays[0][1])
        secagg.add_masked_input(self.server, site, y)  # type: ignore[arg-type]

    def unmask(self, site: str, msg: federation_pb2.UnmaskShares) -> None:
        """Stage 3: check and keep a survivor's revealed shares.

        Raises:
            MalformedMessage: see ``confide.secagg.check_unmask_reply``.
        """
        reply = secagg.UnmaskReply(
            seed_shares=_shares(msg.seed_shares), key_shares=_shares(msg.key_shares)
        )
        secagg.check_unmask_reply(self.server, site, reply)
        self.replies[site] = reply

    # ----- closing stages -----

    def close(self, closing: secagg.ServerStage) -> dict[str, federation_pb2.Task]:
        """Close ``closing`` and build each next-stage site's task payload (kind and oneof).

        Raises:
            RoundAborted: fewer than t sites completed the stage.
        """
        s = self.server
        tasks: dict[str, federation_pb2.Task] = {}
        if closing is secagg.ServerStage.ADVERTISE:
            secagg.close_advertise(s)
            for site in sorted(s.keys):
                skr = secagg.share_keys_request(s, site)
                t = federation_pb2.Task(kind=federation_pb2.TASK_KIND_SHARE_KEYS)
                t.share_keys.threshold = skr.threshold
                t.share_keys.num_selected = skr.num_selected
                for nb in skr.neighbours:
                    env, pem = self.advertised[nb.site_id]
                    t.share_keys.neighbours.add(site_id=nb.site_id, advertised=env, certificate=pem)
                tasks[site] = t
        elif closing is secagg.ServerStage.SHARE_KEYS:
            secagg.close_share_keys(s)
            for site in sorted(s.shared):
                t = federation_pb2.Task(kind=federation_pb2.TASK_KIND_MASKED_INPUT)
                for frm, ct in sorted(secagg.masked_input_request(s, site).items()):
                    t.masked_input.shares.add(from_site=frm, ciphertext=ct)
                tasks[site] = t
        elif closing is secagg.ServerStage.MASKED_INPUT:
            secagg.close_masked_input(s)
            for site in sorted(s.masked):
                umr = secagg.unmask_request(s, site)
                t = federation_pb2.Task(kind=federation_pb2.TASK_KIND_UNMASK)
                t.unmask.survivors.extend(umr.survivors)
                t.unmask.dropped.extend(umr.dropped)
                tasks[site] = t
        else:
            raise ValueError(f"cannot close stage {closing.value}")
        return tasks

    def mean_delta(self) -> NamedArrays:
        """Unmask the sum and decode it to the uniform mean delta over the n sites in it.

        Raises:
            RoundAborted: too few unmask replies, or shares that do not rebuild a secret.
        """
        total = secagg.finish(self.server, self.replies)
        n = len(self.server.masked)
        r, b = self.server.params.clip_range, self.server.params.bits
        mean: NDArray[np.float64] = secagg.dequantize(total, n=n, clip_range=r, bits=b) / n
        out: NamedArrays = []
        off = 0
        for name, shape in self.shapes:
            size = int(np.prod(shape))
            out.append((name, mean[off : off + size].reshape(shape)))
            off += size
        return out

    def metrics_sums(self) -> dict[str, float]:
        """Hold-out metric sums of the sites in the sum, weighted by their eval_samples."""
        acc = loss = es = 0.0
        for site in self.server.masked:
            m = self.info[site].metrics
            n = float(m.get("eval_samples", 0.0))
            acc += m.get("eval_accuracy", 0.0) * n
            loss += m.get("eval_loss", 0.0) * n
            es += n
        return {"acc": acc, "loss": loss, "es": es}


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
