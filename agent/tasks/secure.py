"""The site's side of SecAgg+ (Bell et al., CCS 2020): stages 0-5 over the agent's transport.

``SecureSite`` is the ``TaskRunner.secure_update`` seam (stage 0, after training and the
daemon's clip + noise) and the handler of the SHARE_KEYS, CHECK_SHARES, MASKED_INPUT,
CONSISTENCY and UNMASK tasks; ``install`` wires them into a runner. The math and every
protocol check is ``confide.secagg.client``; this module flattens, encodes, verifies
signatures, signs and sends.

- stage 0: flatten the protected delta in parameter order, encode it for masking
  (``confide.secagg.encoding``: by default the distributed discrete Gaussian's rotation,
  rounding and noise; b-bit fixed point in [-r, r] otherwise; nothing about the encoding
  travels in plaintext beside the masked input), make fresh keys, sign them alone as
  ``RoundKeys`` (the only thing other sites ever see of this site) and send them inside
  ``AdvertiseKeys`` with the figures the aggregator records (sample count, metrics, epsilons).
- stage 1: check every site's certificate (federation CA, role site, CN = site id) and that
  its forwarded ``RoundKeys`` envelope is signed by that certificate's key and bound to
  (SECAGG_KEYS, job, round, that site, this attempt); compute the round's parameters from
  the signed job kept at stage 0 (``RoundRules.params(n)``) and refuse a threshold the
  server computed differently; then Shamir-share and send ``ShareKeys``.
- stage 2: open the shares addressed to this site and report the ones that do not decrypt
  or verify (``SharesChecked``): the round goes on without that pair.
- stage 3: mask x with the partners left and upload y as one uint32 tensor ``masked``.
- stage 4: check the survivor set and sign the view (``ConsistencySignature``).
- stage 5: verify the forwarded consistency signatures against the certificates checked at
  stage 1; with a quorum on this site's own view, reveal shares, then forget the round.

The ``ClientState`` and the encoded vector live in memory only, keyed by (job, round): a
site that crashes is simply a dropout, and no secret ever reaches the disk. Each state also
remembers its round attempt (its TRAIN task's ``Task.attempt``); a stage task of another
attempt is refused, the signed ``RoundKeys`` and ``ConsistencySignature`` name their attempt
(other sites refuse another's), and every stage message names the task it answers
(``task_id``), so the aggregator refuses one that reaches a later attempt: keys of two
attempts never mix, or the masks would not cancel. Task ids are compared, never parsed. The
attempt is the aggregator's word, trusted for nothing that costs privacy: which attempts a
job is charged for is the ledger's count (``agent.admission.limits``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import structlog
from google.protobuf.message import DecodeError
from numpy.typing import NDArray

from agent.admission.signed_job import VerifiedJob
from agent.link.transport import Transport
from agent.privacy.plan import planned_survivors
from agent.tasks.runner import TaskRunner
from agent.tasks.types import JobEpsilon
from confide import secagg
from confide.errors import ConfigError, PeerError, PolicyRefusal, Reason, ReplayedMessage
from confide.pki import Role, verify_certificate
from confide.secagg.encoding import encode, secure_encoding
from confide.secagg.rotation import rotation_seed
from confide.v1 import common_pb2, federation_pb2
from confide.wire import Binding, canonical_bytes, encode_tensors, open_envelope
from confide.wire.blob import NamedArrays

__all__ = ["SecureSite", "install"]

log = structlog.get_logger("confide.agent")

_SIGNED_SKEW_S = 24 * 3600.0
"""Forwarded keys and signatures are checked for binding, not freshness: training is slow."""


@dataclass
class _Round:
    """One round's secrets and what the signed job fixed for it."""

    state: secagg.ClientState
    x: NDArray[np.uint32] | None
    num_samples: int
    rules: secagg.RoundRules
    planned_survivors: int
    attempt: int
    verify_keys: dict[str, bytes] = field(default_factory=dict)


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
        spent: JobEpsilon,
    ) -> None:
        """Encode the protected delta, keep it with fresh keys, send ``AdvertiseKeys``.

        Raises:
            ConfigError: the job's secure-aggregation settings or encoding are invalid.
            ConfideError: the aggregator refused the keys (the RPC's status, mapped).
        """
        rules = secagg.job_rules(job.spec)
        rules.validate()
        flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for _, a in delta])
        # The attempt named as the aggregator names it (aggregator/execute.py), from the
        # task's typed fields: job/round/attempt.
        attempt = f"{task.job_id}/{task.round}/{task.attempt}"
        seed = rotation_seed(federation=self.site.federation, attempt=attempt)
        q = encode(flat, secure_encoding(job.spec), seed=seed)
        state, keys = secagg.advertise(site_id=self.site.site, round_id=self.round_id(task))
        with self._lock:
            for key in [k for k in self._rounds if k[0] == task.job_id]:
                del self._rounds[key]  # an older round or attempt of this job is over
            self._rounds[(task.job_id, task.round)] = _Round(
                state,
                q.values,
                num_samples,
                rules,
                planned_survivors(job.spec),
                task.attempt,
            )
        round_keys = federation_pb2.RoundKeys(
            cipher_public_key=keys.cipher_public_key,
            mask_public_key=keys.mask_public_key,
            task_id=task.task_id,
            attempt=task.attempt,
        )
        msg = federation_pb2.AdvertiseKeys(
            num_samples=num_samples,
            metrics=metrics,
            epsilon=spent.epsilon,
            update_epsilon=spent.update_epsilon,
            task_id=task.task_id,
            keys=self.runner.seal(task, common_pb2.STAGE_SECAGG_KEYS, round_keys),
        )
        self._send(task, transport, common_pb2.STAGE_ADVERTISE_KEYS, msg)
        # The count of coordinates clipped to [-r, r] stays here: sent in plaintext it would
        # reveal a per-site figure beside the masked input.
        log.info(
            "secagg_advertised",
            dim=int(flat.size),
            out_of_range=q.out_of_range,
            rounding_tries=q.rounding_tries,
        )

    # ----- stage 1 -----

    def share_keys(self, task: federation_pb2.Task, transport: Transport) -> None:
        """Verify every site's certificate and signed keys, then send encrypted shares.

        Raises:
            PolicyRefusal: no state for this round, a site's certificate or envelope fails
                (its reason kept: bad_certificate, bad_signature, replayed, ...), the round's
                size allows no safe parameters, the server's threshold is not the job's, or
                ``confide.secagg.share_keys`` finds the request unsafe.
        """
        entry = self._entry(task)
        req = task.share_keys
        roster = [self._verified_keys(task, entry, nb) for nb in req.sites]
        try:
            params = entry.rules.params(len(roster))
        except ConfigError as exc:
            raise PolicyRefusal(
                f"no safe parameters for a round of {len(roster)} sites: {exc.problem}",
                reason=Reason.UNSAFE_REQUEST,
            ) from exc
        if req.threshold != params.threshold or params.threshold < entry.planned_survivors:
            # The site's noise share was sized for sums of at least the planned number of
            # sites; the threshold is the job's deterministic function of n, never the
            # server's choice.
            raise PolicyRefusal(
                f"threshold {req.threshold} is not the job's {params.threshold} for "
                f"{len(roster)} sites (planned for {entry.planned_survivors})",
                reason=Reason.UNSAFE_REQUEST,
            )
        state, shares = secagg.share_keys(entry.state, roster, params=params)
        entry.state = state
        msg = federation_pb2.ShareKeys(
            shares=[
                federation_pb2.EncryptedShare(to_site=s, ciphertext=ct)
                for s, ct in sorted(shares.items())
            ],
            task_id=task.task_id,
        )
        self._send(task, transport, common_pb2.STAGE_SHARE_KEYS, msg)
        log.info("secagg_shared", sites=len(roster), neighbours=len(shares))

    def _verified_keys(
        self, task: federation_pb2.Task, entry: _Round, nb: federation_pb2.NeighbourKeys
    ) -> secagg.NeighbourKeys:
        """A site's round keys, once its certificate and signed envelope check out."""
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
                    f"site {nb.site_id!r} certificate is for {info.name!r} ({info.role})",
                    reason=Reason.BAD_CERTIFICATE,
                )
            env = nb.advertised
            payload = open_envelope(
                env,
                verify_key=info.signing_public_key,
                expect=self._binding(task, nb.site_id, common_pb2.STAGE_SECAGG_KEYS),
                now=now,
                max_skew_s=_SIGNED_SKEW_S,
            )
            keys = federation_pb2.RoundKeys.FromString(payload)
            if keys.attempt != entry.attempt:
                raise ReplayedMessage(f"keys of {nb.site_id!r} answer another round attempt")
        except (PeerError, PolicyRefusal) as exc:
            raise PolicyRefusal(
                f"keys of {nb.site_id!r} refused: {exc}", reason=exc.reason
            ) from exc
        except DecodeError as exc:
            raise PolicyRefusal(
                f"keys of {nb.site_id!r} do not decode", reason=Reason.MALFORMED
            ) from exc
        entry.verify_keys[nb.site_id] = info.signing_public_key
        return secagg.NeighbourKeys(
            nb.site_id,
            keys.cipher_public_key,
            keys.mask_public_key,
            secagg.keys_digest(canonical_bytes(env), env.signature),
        )

    # ----- stage 2 -----

    def check_shares(self, task: federation_pb2.Task, transport: Transport) -> None:
        """Open the shares addressed to this site; report the senders whose share is bad.

        Raises:
            PolicyRefusal: no state, two shares from one site, or
                ``confide.secagg.check_shares`` refuses (withheld or invented shares).
        """
        entry = self._entry(task)
        received: dict[str, bytes] = {}
        for sh in task.check_shares.shares:
            if sh.from_site in received:
                raise PolicyRefusal(
                    f"two shares from {sh.from_site!r}", reason=Reason.UNSAFE_REQUEST
                )
            received[sh.from_site] = sh.ciphertext
        state, rejected = secagg.check_shares(
            entry.state, received, shared=list(task.check_shares.shared)
        )
        entry.state = state
        msg = federation_pb2.SharesChecked(
            task_id=task.task_id,
            rejected=[
                federation_pb2.RejectedShare(from_site=s, reason=why.value)
                for s, why in sorted(rejected.items())
            ],
        )
        self._send(task, transport, common_pb2.STAGE_SHARES_CHECKED, msg)
        for sender, why in sorted(rejected.items()):
            log.warning("secagg_share_rejected", sender=sender, reason=why.value)
        log.info("secagg_shares_checked", kept=len(state.held), rejected=len(rejected))

    # ----- stage 3 -----

    def masked_input(self, task: federation_pb2.Task, transport: Transport) -> None:
        """Mask x with the partners left and upload y (uint32, ``masked``, shape [d]).

        Raises:
            PolicyRefusal: no state, or ``confide.secagg.masked_input`` refuses.
        """
        entry = self._entry(task)
        if entry.x is None:
            raise PolicyRefusal("masked input already sent", reason=Reason.UNSAFE_REQUEST)
        excluded = [(p.a, p.b) for p in task.masked_input.excluded]
        state, y = secagg.masked_input(entry.state, entry.x, excluded=excluded)
        entry.state, entry.x = state, None
        blob, buffers = encode_tensors([("masked", y)])
        header = federation_pb2.UpdateHeader(
            task_id=task.task_id,
            blob=blob,
            num_samples=entry.num_samples,
        )
        self.runner.served(
            "masked input",
            lambda: transport.upload(
                self.runner.seal(task, common_pb2.STAGE_MASKED_INPUT, header), buffers
            ),
        )
        log.info("secagg_masked_input_sent", bytes=blob.total_bytes, partners=len(state.partners))

    # ----- stage 4 -----

    def consistency(self, task: federation_pb2.Task, transport: Transport) -> None:
        """Check the survivor set and sign this site's view of the round.

        Raises:
            PolicyRefusal: no state, or ``confide.secagg.consistency`` refuses.
        """
        entry = self._entry(task)
        state, view = secagg.consistency(entry.state, survivors=list(task.consistency.survivors))
        entry.state = state
        msg = federation_pb2.ConsistencySignature(
            task_id=task.task_id, session_id=state.session, view_sha256=view, attempt=task.attempt
        )
        self._send(task, transport, common_pb2.STAGE_CONSISTENCY, msg)
        log.info("secagg_view_signed", survivors=len(state.survivors))

    # ----- stage 5 -----

    def unmask(self, task: federation_pb2.Task, transport: Transport) -> None:
        """Verify the consistency signatures; with a quorum, reveal shares and forget the round.

        Raises:
            PolicyRefusal: no state, or ``confide.secagg.unmask`` refuses (too few valid
                signatures on this site's view, or a second unmask).
        """
        entry = self._entry(task)
        attest = [a for env in task.unmask.signatures if (a := self._attestation(task, entry, env))]
        state, reply = secagg.unmask(entry.state, attestations=attest)
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
        self._send(task, transport, common_pb2.STAGE_UNMASK, msg)
        log.info("secagg_unmasked", seeds=len(reply.seed_shares), keys=len(reply.key_shares))

    def _attestation(
        self, task: federation_pb2.Task, entry: _Round, env: common_pb2.Envelope
    ) -> secagg.Attestation | None:
        """A forwarded consistency signature, or None (logged) when it does not verify."""
        key = entry.verify_keys.get(env.sender)
        try:
            if key is None:
                raise PolicyRefusal(
                    f"signature by {env.sender!r}, not a site of this round",
                    reason=Reason.NOT_SELECTED,
                )
            payload = open_envelope(
                env,
                verify_key=key,
                expect=self._binding(task, env.sender, common_pb2.STAGE_CONSISTENCY),
                now=self._clock(),
                max_skew_s=_SIGNED_SKEW_S,
            )
            sig = federation_pb2.ConsistencySignature.FromString(payload)
            if sig.attempt != entry.attempt:
                raise ReplayedMessage("signature of another round attempt")
        except (PeerError, PolicyRefusal) as exc:
            log.warning("secagg_signature_refused", signer=env.sender, reason=exc.reason.value)
            return None
        except DecodeError:
            log.warning("secagg_signature_refused", signer=env.sender, reason="malformed")
            return None
        return secagg.Attestation(env.sender, sig.session_id, sig.view_sha256)

    # ----- helpers -----

    def forget(self, job_id: str) -> None:
        """Drop every round state of ``job_id`` (after unmask, or when the job ends)."""
        with self._lock:
            for key in [k for k in self._rounds if k[0] == job_id]:
                del self._rounds[key]

    def _binding(self, task: federation_pb2.Task, sender: str, stage: int) -> Binding:
        return Binding(
            federation=self.site.federation,
            sender=sender,
            stage=stage,
            job_id=task.job_id,
            round=task.round,
        )

    def _entry(self, task: federation_pb2.Task) -> _Round:
        with self._lock:
            entry = self._rounds.get((task.job_id, task.round))
        if entry is None:
            raise PolicyRefusal(
                "no secure-aggregation state for this round (not advertised, or forgotten)",
                reason=Reason.UNSAFE_REQUEST,
            )
        if entry.attempt != task.attempt:
            raise PolicyRefusal(
                f"task {task.task_id!r} is of attempt {task.attempt}, not the attempt this "
                f"site advertised in ({entry.attempt})",
                reason=Reason.REPLAYED,
            )
        return entry

    def _send(
        self,
        task: federation_pb2.Task,
        transport: Transport,
        stage: int,
        msg: federation_pb2.AdvertiseKeys
        | federation_pb2.ShareKeys
        | federation_pb2.SharesChecked
        | federation_pb2.ConsistencySignature
        | federation_pb2.UnmaskShares,
    ) -> None:
        transport.secagg(self.runner.seal(task, stage, msg))


def install(runner: TaskRunner, *, clock: Callable[[], float] = time.time) -> SecureSite:
    """Enable SecAgg+ jobs on ``runner``: the stage-0 seam, stage 1-5 handlers, cleanup.

    JOB_DONE also forgets the job's round state before the runner's own handler runs.
    """
    site = SecureSite(runner, clock=clock)
    runner.secure_update = site
    runner.register(federation_pb2.TASK_KIND_SHARE_KEYS, site.share_keys)
    runner.register(federation_pb2.TASK_KIND_CHECK_SHARES, site.check_shares)
    runner.register(federation_pb2.TASK_KIND_MASKED_INPUT, site.masked_input)
    runner.register(federation_pb2.TASK_KIND_CONSISTENCY, site.consistency)
    runner.register(federation_pb2.TASK_KIND_UNMASK, site.unmask)
    done = runner.handlers[federation_pb2.TASK_KIND_JOB_DONE]

    def job_done(task: federation_pb2.Task, transport: Transport) -> None:
        site.forget(task.job_id)
        done(task, transport)

    runner.register(federation_pb2.TASK_KIND_JOB_DONE, job_done)
    return site
