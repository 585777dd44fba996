"""One active job in memory: its spec, round state, running sum, optimizer and metric sums.

The coordinator owns the ``Job`` objects and calls these methods under its lock; they do the
per-job arithmetic and message building so the coordinator stays glue.

Accepting a plaintext update is one transaction (issue 9.4): ``admit`` checks everything
(bounds, shapes, norm, memory) and allocates the round's accumulator, the coordinator then
stores the update's row and audit entry in one database transaction, and only after that
commits does ``apply`` add the update into the sum (which then cannot fail). A refused update,
or one whose row the database refuses, changes neither the sum nor the metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aggregator import rounds as r
from aggregator.admission import (
    Admitted,
    Bounds,
    Declared,
    admit_update,
    bounds_for,
    check_claims,
    eval_weight,
    rule_of,
)
from aggregator.eval_sums import EvalSums
from aggregator.optimizer import RunningSum, ServerOptimizer, make_optimizer
from aggregator.robust import Accumulator, HeldUpdates, Rule
from aggregator.secure import SecureRound, rules_for
from aggregator.store import BlobStore, SiteRoundRow
from confide.jobspec import attempt_limits, normalize
from confide.lineage import chain_link, chain_of
from confide.models import parameter_shapes
from confide.secagg.encoding import secure_encoding
from confide.v1 import common_pb2, federation_pb2
from confide.wire.blob import NamedArrays

__all__ = ["KIND_OF", "Job", "UploadTarget", "accumulator", "new_job", "resume_point"]

_KIND = {
    r.TaskKind.TRAIN: federation_pb2.TASK_KIND_TRAIN,
    r.TaskKind.EVALUATE: federation_pb2.TASK_KIND_EVALUATE,
    r.TaskKind.JOB_DONE: federation_pb2.TASK_KIND_JOB_DONE,
    r.TaskKind.SHARE_KEYS: federation_pb2.TASK_KIND_SHARE_KEYS,
    r.TaskKind.CHECK_SHARES: federation_pb2.TASK_KIND_CHECK_SHARES,
    r.TaskKind.MASKED_INPUT: federation_pb2.TASK_KIND_MASKED_INPUT,
    r.TaskKind.CONSISTENCY: federation_pb2.TASK_KIND_CONSISTENCY,
    r.TaskKind.UNMASK: federation_pb2.TASK_KIND_UNMASK,
}
KIND_OF = {v: k for k, v in _KIND.items()}
"""``federation.proto`` TaskKind -> ``rounds.TaskKind``."""


@dataclass(frozen=True)
class UploadTarget:
    """What an upload for a job must be bound to and contain right now.

    ``deadline``: unix seconds when the phase the upload belongs to closes (None: no
    deadline); an upload still streaming then is cut off.
    """

    round: int
    stage: int
    shapes: list[tuple[str, tuple[int, ...]]]
    nbytes: int
    dtype: int = common_pb2.DTYPE_FLOAT32
    deadline: float | None = None


@dataclass
class Job:
    """An active job.

    Args:
        running: the round's plaintext updates (a streaming sum, or held for a robust rule).
        bounds: what one site's update and figures may weigh (``aggregator.admission``).
        round_sums: the sites' weighted hold-out figures of the current round's input model
            (``aggregator.eval_sums``; weights are ``admission.eval_weight``).
        final_sums: the same for the final model's evaluation.
        secure: the current SecAgg+ round attempt (memory only), None for plaintext jobs.
        chain: the model-version hash chain, chain_k at index k (``confide.lineage``); tasks
            carry the head's place in it so sites can pin every version to one model.
    """

    job_id: str
    spec: common_pb2.JobSpec
    signed_job: common_pb2.Envelope
    signer_cert: bytes
    shapes: list[tuple[str, tuple[int, ...]]]
    state: r.RoundState
    optimizer: ServerOptimizer
    version_no: int
    running: Accumulator
    bounds: Bounds
    round_sums: EvalSums = field(default_factory=EvalSums)
    final_sums: EvalSums = field(default_factory=EvalSums)
    secure: SecureRound | None = None
    chain: list[bytes] = field(default_factory=list)

    def upload_target(self) -> UploadTarget:
        """The binding and size an update must have now.

        Plaintext: the model's float32 tensors, stage UPDATE. Secure: one uint32 tensor
        ``masked`` of the job's encoded length (d, or d' padded for the discrete Gaussian),
        stage MASKED_INPUT.
        """
        if self.spec.secure_aggregation.enabled:
            d = secure_encoding(self.spec).length
            return UploadTarget(
                self.state.round,
                common_pb2.STAGE_MASKED_INPUT,
                [("masked", (d,))],
                4 * d,
                common_pb2.DTYPE_UINT32,
                self.state.deadline,
            )
        nbytes = 0
        for _, shape in self.shapes:
            n = 4
            for d in shape:
                n *= d
            nbytes += n
        return UploadTarget(
            self.state.round,
            common_pb2.STAGE_UPDATE,
            self.shapes,
            nbytes,
            deadline=self.state.deadline,
        )

    def task(self, a: r.SendTask) -> federation_pb2.Task:
        """The Task message for one ``SendTask`` action (the same for every site)."""
        return federation_pb2.Task(
            task_id=r.task_id(self.job_id, a.round, a.attempt, a.kind),
            job_id=self.job_id,
            round=a.round,
            kind=_KIND[a.kind],
            signed_job=self.signed_job,
            signer_certificate=self.signer_cert,
            model_version=a.model_version,
            deadline_s=a.deadline_s,
            lineage=self.lineage(),
            attempt=a.attempt,
        )

    def lineage(self) -> federation_pb2.ModelLineage:
        """The current model's place in the chain: version k = ``version_no``, and chain_{k-1}.

        Every task is about the current model (the round's input, or the final model).
        """
        k = self.version_no
        return federation_pb2.ModelLineage(
            version=k, parent_chain=self.chain[k - 1] if k > 0 else b""
        )

    def stage_task(self, a: r.CloseStage, payload: federation_pb2.Task) -> federation_pb2.Task:
        """One site's next-stage task: ``payload`` (kind and stage oneof) plus the job fields."""
        kind = KIND_OF[payload.kind]
        task = self.task(
            r.SendTask(kind, (), a.round, a.attempt, self.state.model_version, a.deadline_s)
        )
        task.MergeFrom(payload)
        return task

    def check_claims(
        self,
        figures: federation_pb2.UpdateHeader | federation_pb2.AdvertiseKeys,
        *,
        declared: Declared | None,
    ) -> None:
        """Refuse counts beyond the site's declared dataset, or an accuracy outside [0, 1].

        Raises:
            OversizedMessage, MalformedMessage: see ``admission.check_claims``.
        """
        check_claims(
            num_samples=int(figures.num_samples),
            metrics=figures.metrics,
            declared=declared,
            eval_key="eval_samples",
        )

    def admit(
        self,
        header: federation_pb2.UpdateHeader,
        arrays: NamedArrays,
        *,
        declared: Declared | None,
    ) -> Admitted:
        """Check a plaintext update completely, before anything about it is stored or summed.

        Also allocates the round's accumulator, so that ``apply`` cannot fail afterwards.

        Raises:
            MalformedMessage: wrong shapes, a bad count or accuracy.
            OversizedMessage: a count above the site's declaration.
            InternalError: the round's memory bound reached (reason UNAVAILABLE).
            NonFiniteValue: the update's norm overflows.
        """
        self.check_claims(header, declared=declared)
        self.running.check(arrays)
        admitted = admit_update(self.bounds, arrays, num_samples=int(header.num_samples))
        self.running.prepare()
        return admitted

    def apply(self, admitted: Admitted, header: federation_pb2.UpdateHeader) -> None:
        """Add an admitted update, now on record, into the round's sum and metric sums."""
        self.running.add(admitted.arrays, weight=admitted.weight)
        self.add_update_metrics(header.metrics)

    def accepted_row(
        self,
        site: str,
        rnd: int,
        figures: federation_pb2.UpdateHeader | federation_pb2.AdvertiseKeys,
        admitted: Admitted | None = None,
    ) -> SiteRoundRow:
        """The store row for an accepted update, from the figures its site sent with it: a
        plain update's header and its admission, or for a masked input the site's
        AdvertiseKeys (never the input; its weight is 1: secure sums are uniform).
        """
        return SiteRoundRow(
            job=self.job_id,
            round=rnd,
            site=site,
            outcome="ok",
            reason="",
            num_samples=int(figures.num_samples),
            epsilon=figures.epsilon,
            update_epsilon=figures.update_epsilon,
            metrics=dict(figures.metrics),
            weight=float(admitted.weight) if admitted else 1.0,
            update_norm=admitted.norm if admitted else 0.0,
            clipped=admitted.clipped if admitted else False,
        )

    def left_out_row(self, site: str, rnd: int, reason: str) -> SiteRoundRow:
        """The store row for a site a SecAgg+ stage left out (e.g. its shares were rejected),
        with the figures of its AdvertiseKeys: it trained and spent its epsilon."""
        figures = self.secure.info.get(site) if self.secure is not None else None
        figures = figures or federation_pb2.AdvertiseKeys()
        return SiteRoundRow(
            job=self.job_id,
            round=rnd,
            site=site,
            outcome="failed",
            reason=reason,
            num_samples=int(figures.num_samples),
            epsilon=figures.epsilon,
            update_epsilon=figures.update_epsilon,
            metrics={},
        )

    def report_row(self, site: str, rnd: int, rep: federation_pb2.TaskReport) -> SiteRoundRow:
        """The store row for a task report (``rnd`` 0: the final evaluation)."""
        outcome = common_pb2.Outcome.Name(rep.outcome).removeprefix("OUTCOME_").lower()
        return SiteRoundRow(
            job=self.job_id,
            round=rnd,
            site=site,
            outcome=outcome,
            reason=rep.reason,
            num_samples=int(rep.num_samples),
            epsilon=0.0,
            update_epsilon=0.0,
            metrics=dict(rep.metrics),
        )

    def reset_round(self) -> None:
        """Forget the running sum, the SecAgg+ round and the round's metric sums."""
        self.running.reset()
        self.secure = None
        self.round_sums = EvalSums()

    def add_update_metrics(self, m: Mapping[str, float]) -> None:
        """Add an update's hold-out metrics of the round's input model, by bounded weight."""
        es = float(m.get("eval_samples", 0.0))
        self.round_sums.add(
            accuracy=m.get("eval_accuracy", 0.0),
            loss=m.get("eval_loss", 0.0),
            weight=eval_weight(self.bounds, es),
            samples=self._capped(es),
        )

    def add_final_metrics(self, rep: federation_pb2.TaskReport) -> None:
        """Add one site's evaluation of the final model, by bounded weight."""
        n = float(rep.num_samples)
        self.final_sums.add(
            accuracy=rep.metrics.get("accuracy", 0.0),
            loss=rep.metrics.get("loss", 0.0),
            weight=eval_weight(self.bounds, n),
            samples=self._capped(n),
        )

    def _capped(self, n: float) -> float:
        cap = self.bounds.max_eval_samples
        return min(n, float(cap)) if cap else n

    def round_metrics(self, *, updates: int, now: float) -> dict[str, float]:
        """The round's recorded metrics: sample-weighted accuracy and loss, count, duration."""
        s = self.round_sums
        return {
            "aggregated": float(updates),
            "seconds": now - self.state.started_at,
            "accuracy": s.accuracy,
            "loss": s.loss,
            "eval_samples": s.samples,
        }

    def final_metrics(self) -> dict[str, float]:
        """The final evaluation's weighted accuracy and loss (empty if none reported)."""
        s = self.final_sums
        if not s.weight:
            return {}
        return {"accuracy": s.accuracy, "loss": s.loss, "eval_samples": s.samples}

    def aggregate(self, blobs: BlobStore) -> tuple[str, str]:
        """Apply the optimizer to the running sum; store model and optimizer state durably.

        Returns:
            the new model's hex SHA-256 and its optimizer-state blob's ("" when stateless).

        Raises:
            OSError: the blob could not be written.
            RoundAborted: a secure round could not be unmasked.
        """
        if self.secure is not None:
            mean = self.secure.mean_delta()  # RoundAborted: nothing revealed, nothing stored
            for site in sorted(self.secure.server.survivors):
                self.add_update_metrics(self.secure.info[site].metrics)
        else:
            mean = self.running.mean()
        new = self.optimizer.apply(blobs.load(self.state.model_version), mean)
        sha, _ = blobs.put(new)
        opt = self.optimizer.state()
        opt_sha = blobs.put(opt)[0] if opt else ""
        self.running.reset()
        self.secure = None
        self.version_no += 1
        self.chain.append(chain_link(self.chain[-1], version=self.version_no, model_sha=sha))
        return sha, opt_sha


def new_job(
    job_id: str,
    spec: common_pb2.JobSpec,
    signed: common_pb2.Envelope,
    cert: bytes,
    *,
    model_version: str,
    version_no: int,
    max_retries: int,
    eligible: frozenset[str],
    retry_backoff_s: float = 0.0,
    lineage: Sequence[str] = (),
) -> Job:
    """An active job waiting for its next round, from a validated spec.

    ``max_retries`` and ``retry_backoff_s`` are the aggregator's (``[rounds]``); the signed
    job's attempt limits lower the former and bound retries over the whole job.

    Args:
        lineage: the hex SHA-256 of versions 0..``version_no`` (a restored job's stored
            versions); empty: ``model_version`` is version 0.

    Raises:
        ConfigError: the spec's model does not fit its dataset, its optimizer is unknown, or
            its SecAgg+ settings are invalid.
    """
    # Every default resolved once (confide.jobspec.normalize); the job runs on this copy.
    spec = normalize(spec)
    shapes = parameter_shapes(spec.model, spec.dataset)
    secure = spec.secure_aggregation.enabled
    # Sites refuse attempts past the signed limits (agent/admission/limits.py): never ask for them.
    per_round, job_retries = attempt_limits(spec)
    max_sites = rules_for(spec).max_sites() if secure else 0
    params = r.JobParams(
        job_id,
        int(spec.rounds),
        int(spec.min_sites),
        float(spec.round_timeout_s),
        min(max_retries, per_round - 1),
        secure=secure,
        stage_timeout_s=spec.secure_aggregation.stage_timeout_s if secure else 0.0,
        max_job_retries=job_retries,
        retry_backoff_s=retry_backoff_s,
        max_sites=max_sites,
        dataset=spec.dataset.name,
    )
    state = r.RoundState(params, model_version=model_version, eligible=eligible)
    optimizer = make_optimizer(spec.training)
    dim = sum(_count(s) for _, s in shapes)
    shas = list(lineage) or [model_version]
    if len(shas) != version_no + 1 or shas[-1] != model_version:
        raise ValueError(f"job {job_id}: the lineage does not end at version {version_no}")
    job = Job(
        job_id,
        spec,
        signed,
        cert,
        shapes,
        state,
        optimizer,
        version_no,
        accumulator(spec, shapes),
        bounds_for(spec, dim=dim),
    )
    job.chain = chain_of(job_id=job_id, signed_job=signed, shas=shas)
    return job


def accumulator(spec: common_pb2.JobSpec, shapes: list[tuple[str, tuple[int, ...]]]) -> Accumulator:
    """Where a plaintext round's updates go: held for a robust rule, else a streaming sum."""
    rule = rule_of(spec)
    if rule in (Rule.TRIMMED_MEAN, Rule.MEDIAN):
        return HeldUpdates(shapes, rule=rule, trim_fraction=spec.aggregation.trim_fraction)
    return RunningSum(shapes)


def _count(shape: tuple[int, ...]) -> int:
    """Number of elements of ``shape``."""
    n = 1
    for d in shape:
        n *= d
    return n


def resume_point(job: Job, *, done: int, attempts: dict[int, int]) -> tuple[r.RoundState, r.Event]:
    """Where a restored job resumes: after its last stored model (version ``done``).

    An in-progress round (plaintext or secure: a ``SecureRound`` lives in memory only)
    restarts from its input model as a new attempt: the one after the attempt the store
    recorded for it. Its task ids are then fresh, which sites require: each site's privacy
    ledger reserves budget per task id and refuses a task id it already reserved. The
    interrupted attempt counts towards ``max_retries``, and every recorded attempt beyond a
    round's first towards the job's ``max_job_retries``. (A refused round's backoff is kept
    in memory only: after a restart its retry starts at once, still within those bounds.)

    Args:
        job: the restored job (its state's params are used).
        done: the last stored model version number (= rounds completed).
        attempts: round -> last recorded attempt (absent: the round never started).
    """
    params, sha = job.state.params, job.state.model_version
    if done >= job.spec.rounds:
        # The final evaluation (in memory only) starts over once enough sites reconnect.
        state = r.RoundState(params, round=done, model_version=sha)
        return r.evaluation_pending(state), r.Resume()
    interrupted = attempts.get(done + 1, 0)
    retries = sum(a - 1 for rnd, a in attempts.items() if rnd <= done and a > 1) + interrupted
    state = r.RoundState(
        params,
        round=done + 1,
        attempt=interrupted + 1,
        model_version=sha,
        job_retries=retries,
    )
    return state, r.Resume()
