"""The site's side of SecAgg+ (Bell et al., CCS 2020): stages 0-3 over the agent's transport.

``SecureSite`` is the ``TaskRunner.secure_update`` seam (stage 0, after training and the
daemon's clip + noise) and the handler of the SHARE_KEYS, MASKED_INPUT and UNMASK tasks
(stages 1-3); ``install`` wires both into a runner. The math is ``confide.secagg.client``;
this module flattens, quantizes, verifies, signs and sends.

- stage 0: flatten the protected delta in parameter order, quantize it to b bits in
  [-r, r] (``confide.secagg.quantize``), make fresh keys, send ``AdvertiseKeys``.
- stage 1: check every neighbour's certificate (federation CA, role site, CN = site id)
  and that its forwarded AdvertiseKeys envelope is signed by that certificate's key and
  bound to (ADVERTISE_KEYS, job, round, that site): the aggregator cannot substitute keys.
  Any failure refuses the task. Then Shamir-share and send ``ShareKeys``.
- stage 2: mask x with the received shares and upload y as one uint32 tensor ``masked``.
- stage 3: reveal shares as ``confide.secagg.unmask`` allows (it refuses a site listed as
  both survivor and dropped, and every other unsafe request), then forget the round.

The ``ClientState`` and the quantized vector live in memory only, keyed by (job, round): a
site that crashes is simply a dropout, and no secret ever reaches the disk. Each state also
remembers its round attempt (its TRAIN task id without the kind: ``job/round/attempt``);
a stage task of another attempt is refused, and every stage message names the task it
answers (``task_id``), so the aggregator refuses one that reaches a later attempt: keys of
two attempts never mix, or the masks would not cancel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import structlog
from google.protobuf.message import DecodeError
from numpy.typing import NDArray

from agent.jobs import VerifiedJob
from agent.privacy import planned_survivors
from agent.tasks import TaskRunner
from agent.transport import Transport
from confide import secagg
from confide.errors import PeerError, PolicyRefusal, Reason
from confide.pki import Role, verify_certificate
from confide.secagg.quantize import DEFAULT_BITS, DEFAULT_CLIP_RANGE
from confide.v1 import common_pb2, federation_pb2
from confide.wire import Binding, encode_tensors, open_envelope
from confide.wire.blob import NamedArrays

__all__ = ["SecureSite", "install"]

log = structlog.get_logger("confide.agent")

_NEIGHBOUR_SKEW_S = 24 * 3600.0
"""Forwarded AdvertiseKeys are checked for binding, not freshness: training may be slow."""


@dataclass
class _Round:
    """One round's secrets: the SecAgg+ state and x (dropped once masked)."""

    state: secagg.ClientState
    x: NDArray[np.uint32] | None
    out_of_range: int
    num_samples: int
    planned_survivors: int
    attempt: str


class SecureSite:
    """Runs SecAgg+ stages for a site, keeping each round's state in memory.

    Args:
        runner: the task runner (its ``site`` context and ``seal``/report helpers).
        clock: unix seconds (certificate and envelope checks).
    """

    def __init__(self, runner: TaskRunner, *, clock: Callable[[], float] = time.time) -> None:
        self.runner = runner
        self.site = runner.site
        self._clock = clock
        self._lock = threading.Lock()
        self._rounds: dict[tuple[str, int], _Round] = {}

    def round_id(self, task: federation_pb2.Task) -> str:
        """The round binding both sides use: ``<federation>/<job>/<round>``."""
        return f"{self.site.federation}/{task.job_id}/{task.round}"

    # ----- stage 0 (the SecureUpdate seam) -----

    def __call__(
        self,
        task: federation_pb2.Task,
        transport: Transport,
        *,
        job: VerifiedJob,
        delta: NamedArrays,
        num_samples: int,
        metrics: dict[str, float],
    ) -> None:
        """Quantize the protected delta, keep it with fresh keys, send ``AdvertiseKeys``.

        Raises:
            ConfigError: the job's clip range or bits are invalid.
            InternalError: the aggregator did not accept the keys.
        """
        sa = job.spec.secure_aggregation
        flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for _, a in delta])
        q = secagg.quantize(
            flat, clip_range=sa.clip_range or DEFAULT_CLIP_RANGE, bits=sa.bits or DEFAULT_BITS
        )
        state, keys = secagg.advertise(site_id=self.site.site, round_id=self.round_id(task))
        metrics = dict(metrics)
        epsilon = metrics.pop("epsilon", 0.0)
        update_epsilon = metrics.pop("update_epsilon", 0.0)
        with self._lock:
            for key in [k for k in self._rounds if k[0] == task.job_id]:
                del self._rounds[key]  # an older round or attempt of this job is over
            self._rounds[(task.job_id, task.round)] = _Round(
                state,
                q.values,
                q.out_of_range,
                num_samples,
                planned_survivors(job.spec),
                _attempt(task),
            )
        msg = federation_pb2.AdvertiseKeys(
            cipher_public_key=keys.cipher_public_key,
            mask_public_key=keys.mask_public_key,
            num_samples=num_samples,
            metrics=metrics,
            epsilon=epsilon,
            update_epsilon=update_epsilon,
            task_id=task.task_id,
        )
        self._send(task, transport, common_pb2.STAGE_ADVERTISE_KEYS, msg, "advertise")
        log.info("secagg_advertised", dim=int(flat.size), out_of_range=q.out_of_range)

    # ----- stage 1 -----

    def share_keys(self, task: federation_pb2.Task, transport: Transport) -> None:
        """Verify each neighbour's certificate and signed keys, then send encrypted shares.

        Raises:
            PolicyRefusal: no state for this round, a neighbour's certificate or envelope
                fails (its reason kept: bad_certificate, bad_signature, replayed, ...), or
                ``confide.secagg.share_keys`` finds the request unsafe.
        """
        entry = self._entry(task)
        req = task.share_keys
        if req.threshold < entry.planned_survivors:
            # The site's noise share was sized for sums of at least this many sites; a lower
            # threshold would let a sum of fewer sites through with too little noise.
            raise PolicyRefusal(
                f"threshold {req.threshold} is below the {entry.planned_survivors} sites this "
                "site's update noise was planned for",
                reason=Reason.UNSAFE_REQUEST,
            )
        neighbours = [self._verified(task, nb) for nb in req.neighbours]
        state, shares = secagg.share_keys(entry.state, neighbours, threshold=int(req.threshold))
        entry.state = state
        msg = federation_pb2.ShareKeys(
            shares=[
                federation_pb2.EncryptedShare(to_site=s, ciphertext=ct)
                for s, ct in sorted(shares.items())
            ],
            task_id=task.task_id,
        )
        self._send(task, transport, common_pb2.STAGE_SHARE_KEYS, msg, "share keys")
        log.info("secagg_shared", neighbours=len(neighbours))

    def _verified(
        self, task: federation_pb2.Task, nb: federation_pb2.NeighbourKeys
    ) -> secagg.NeighbourKeys:
        """A neighbour's keys, once its certificate and signed envelope check out."""
        now = self._clock()
        try:
            info = verify_certificate(
                nb.certificate,
                ca_pem=self.site.ca_pem,
                crl_pem=self.site.crl_pem,
                now=datetime.fromtimestamp(now, UTC),
            )
            if info.role is not Role.SITE or info.name != nb.site_id:
                raise PolicyRefusal(
                    f"neighbour {nb.site_id!r} certificate is for {info.name!r} ({info.role})",
                    reason=Reason.BAD_CERTIFICATE,
                )
            payload = open_envelope(
                nb.advertised,
                verify_key=info.signing_public_key,
                expect=Binding(
                    federation=self.site.federation,
                    sender=nb.site_id,
                    stage=common_pb2.STAGE_ADVERTISE_KEYS,
                    job_id=task.job_id,
                    round=task.round,
                ),
                now=now,
                max_skew_s=_NEIGHBOUR_SKEW_S,
            )
            keys = federation_pb2.AdvertiseKeys.FromString(payload)
        except (PeerError, PolicyRefusal) as exc:
            raise PolicyRefusal(
                f"neighbour {nb.site_id!r} keys refused: {exc}", reason=exc.reason
            ) from exc
        except DecodeError as exc:
            raise PolicyRefusal(
                f"neighbour {nb.site_id!r} keys do not decode", reason=Reason.MALFORMED
            ) from exc
        return secagg.NeighbourKeys(nb.site_id, keys.cipher_public_key, keys.mask_public_key)

    # ----- stage 2 -----

    def masked_input(self, task: federation_pb2.Task, transport: Transport) -> None:
        """Mask x with the received shares and upload y (uint32, ``masked``, shape [d]).

        Raises:
            PolicyRefusal: no state, or ``confide.secagg.masked_input`` refuses.
            BadSignature, ReplayedMessage, MalformedMessage: a received share is bad.
        """
        entry = self._entry(task)
        if entry.x is None:
            raise PolicyRefusal("masked input already sent", reason=Reason.UNSAFE_REQUEST)
        received: dict[str, bytes] = {}
        for sh in task.masked_input.shares:
            if sh.from_site in received:
                raise PolicyRefusal(
                    f"two shares from {sh.from_site!r}", reason=Reason.UNSAFE_REQUEST
                )
            received[sh.from_site] = sh.ciphertext
        state, y = secagg.masked_input(entry.state, entry.x, received)
        entry.state, entry.x = state, None
        blob, buffers = encode_tensors([("masked", y)])
        header = federation_pb2.UpdateHeader(
            task_id=task.task_id,
            blob=blob,
            num_samples=entry.num_samples,
            out_of_range=entry.out_of_range,
        )
        ack = transport.upload(
            self.runner.seal(task, common_pb2.STAGE_MASKED_INPUT, header), buffers
        )
        _check_ack(ack, "masked input")
        log.info("secagg_masked_input_sent", bytes=blob.total_bytes)

    # ----- stage 3 -----

    def unmask(self, task: federation_pb2.Task, transport: Transport) -> None:
        """Reveal the shares the request may have, then forget the round.

        Raises:
            PolicyRefusal: no state, or ``confide.secagg.unmask`` finds the request unsafe
                (a site both survivor and dropped, this site dropped, too few survivors).
        """
        entry = self._entry(task)
        state, reply = secagg.unmask(
            entry.state, survivors=list(task.unmask.survivors), dropped=list(task.unmask.dropped)
        )
        entry.state = state
        msg = federation_pb2.UnmaskShares(
            seed_shares=[
                federation_pb2.RevealedShare(site_id=s, share=b)
                for s, b in sorted(reply.seed_shares.items())
            ],
            key_shares=[
                federation_pb2.RevealedShare(site_id=s, share=b)
                for s, b in sorted(reply.key_shares.items())
            ],
            task_id=task.task_id,
        )
        self.forget(task.job_id)
        self._send(task, transport, common_pb2.STAGE_UNMASK, msg, "unmask shares")
        log.info("secagg_unmasked", seeds=len(reply.seed_shares), keys=len(reply.key_shares))

    # ----- helpers -----

    def forget(self, job_id: str) -> None:
        """Drop every round state of ``job_id`` (after unmask, or when the job ends)."""
        with self._lock:
            for key in [k for k in self._rounds if k[0] == job_id]:
                del self._rounds[key]

    def _entry(self, task: federation_pb2.Task) -> _Round:
        with self._lock:
            entry = self._rounds.get((task.job_id, task.round))
        if entry is None:
            raise PolicyRefusal(
                "no secure-aggregation state for this round (not advertised, or forgotten)",
                reason=Reason.UNSAFE_REQUEST,
            )
        if entry.attempt != _attempt(task):
            raise PolicyRefusal(
                f"task {task.task_id!r} is not of the attempt this site advertised in "
                f"({entry.attempt!r})",
                reason=Reason.REPLAYED,
            )
        return entry

    def _send(
        self,
        task: federation_pb2.Task,
        transport: Transport,
        stage: int,
        msg: federation_pb2.AdvertiseKeys | federation_pb2.ShareKeys | federation_pb2.UnmaskShares,
        what: str,
    ) -> None:
        ack = transport.secagg(self.runner.seal(task, stage, msg))
        _check_ack(ack, what)


def _attempt(task: federation_pb2.Task) -> str:
    """The round attempt a task belongs to: its id without the kind (``job/round/attempt``).

    The aggregator names every task of an attempt ``job/round/attempt/kind``
    (docs/protocol.md), so a SecAgg+ attempt's TRAIN and stage tasks share this prefix.
    """
    return task.task_id.rpartition("/")[0]


def _check_ack(ack: federation_pb2.Ack, what: str) -> None:
    """Raise when the aggregator answered without accepting (it normally aborts instead)."""
    if not ack.accepted:
        raise PeerError(f"aggregator did not accept the {what}: {ack.reason}")


def install(runner: TaskRunner, *, clock: Callable[[], float] = time.time) -> SecureSite:
    """Enable SecAgg+ jobs on ``runner``: the stage-0 seam, stage 1-3 handlers, cleanup.

    JOB_DONE also forgets the job's round state before the runner's own handler runs.
    """
    site = SecureSite(runner, clock=clock)
    runner.secure_update = site
    runner.register(federation_pb2.TASK_KIND_SHARE_KEYS, site.share_keys)
    runner.register(federation_pb2.TASK_KIND_MASKED_INPUT, site.masked_input)
    runner.register(federation_pb2.TASK_KIND_UNMASK, site.unmask)
    done = runner.handlers[federation_pb2.TASK_KIND_JOB_DONE]

    def job_done(task: federation_pb2.Task, transport: Transport) -> None:
        site.forget(task.job_id)
        done(task, transport)

    runner.register(federation_pb2.TASK_KIND_JOB_DONE, job_done)
    return site
