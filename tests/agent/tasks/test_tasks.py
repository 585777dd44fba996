"""Task execution: TRAIN/EVALUATE/JOB_DONE, refusals and failures answered with reasons."""

from __future__ import annotations

import time

import numpy as np
import pytest
from structlog.testing import capture_logs

from agent.tasks.runner import TaskOutcome
from confide.errors import BadSignature
from confide.v1 import common_pb2, federation_pb2
from confide.wire import Binding, BlobAssembler, open_envelope
from tests.agent.conftest import (
    FEDERATION,
    final_task,
    job_spec,
    make_runner,
    model_weights,
    report_of,
    signed_task,
)
from tests.agent.fakes import FakeTransport


def test_train_uploads_signed_update_with_expected_delta(pki, runner, aggregator, workers):
    """A TRAIN task uploads an UPDATE envelope signed by the site whose blob is the delta."""
    outcome = runner.run(signed_task(pki.alice, round=3), FakeTransport(aggregator))
    assert outcome is TaskOutcome.OK
    [up] = aggregator.uploads
    payload = open_envelope(
        up.header,
        verify_key=pki.site.info.signing_public_key,
        now=time.time(),
        expect=Binding(FEDERATION, "site-1", common_pb2.STAGE_UPDATE, job_id="job-1", round=3),
    )
    header = federation_pb2.UpdateHeader.FromString(payload)
    assert header.task_id == "t1"
    assert header.num_samples == 40  # the daemon's own count (50 records, 20% held out)
    assert dict(header.metrics) == pytest.approx(
        {"eval_accuracy": 0.8, "eval_loss": 0.5, "eval_samples": 5.0, "train_loss": 0.4}
    )
    asm = BlobAssembler(header.blob, max_bytes=1 << 20)
    asm.add(up.data)
    got = asm.finish()
    assert [n for n, _ in got] == [n for n, _ in model_weights()]
    for (_, a), (_, w) in zip(got, model_weights(), strict=True):
        np.testing.assert_array_equal(a, np.full_like(w, 0.25))
    assert workers.started[0].dp == [None]
    assert workers.started[0].rounds == [3]


def test_worker_is_reused_across_rounds_and_stopped_on_job_done(pki, runner, aggregator, workers):
    """One worker serves every round of a job and JOB_DONE stops it."""
    t = FakeTransport(aggregator)
    runner.run(signed_task(pki.alice, task_id="a", round=1), t)
    runner.run(signed_task(pki.alice, task_id="b", round=2), t)
    assert len(workers.started) == 1 and workers.started[0].rounds == [1, 2]
    done = runner.run(signed_task(pki.alice, kind=federation_pb2.TASK_KIND_JOB_DONE), t)
    assert done is TaskOutcome.OK
    assert not workers.started[0].alive
    assert runner.workers.jobs == []


def test_evaluate_reports_metrics(pki, runner, aggregator):
    """The EVALUATE of the final model, after the last round, is answered with a signed OK
    report holding accuracy, loss and samples."""
    t = FakeTransport(aggregator)
    assert runner.run(signed_task(pki.alice, task_id="train", round=3), t) is TaskOutcome.OK
    task = final_task(pki.alice)
    assert runner.run(task, t) is TaskOutcome.OK
    rep = report_of(pki, aggregator.reports[0])
    assert rep.outcome == common_pb2.OUTCOME_OK
    assert rep.kind == federation_pb2.TASK_KIND_EVALUATE
    assert dict(rep.metrics) == {"accuracy": 0.8, "loss": 0.5}
    assert rep.num_samples == 5


@pytest.mark.parametrize("who", ["mallory", "other_site"])
def test_untrusted_signer_is_refused(pki, runner, aggregator, workers, who):
    """A job signed by an operator not in trusted_signers, or by a site, is REFUSED."""
    with capture_logs() as logs:
        out = runner.run(signed_task(getattr(pki, who)), FakeTransport(aggregator))
    assert out is TaskOutcome.REFUSED
    rep = report_of(pki, aggregator.reports[0])
    assert (rep.outcome, rep.reason) == (common_pb2.OUTCOME_REFUSED, "signer_untrusted")
    assert not aggregator.uploads and not workers.started
    assert any(e["event"] == "task_failed" and e["reason"] == "signer_untrusted" for e in logs)


def test_tampered_job_is_refused(pki, runner, aggregator, workers):
    """A signed_job whose payload was altered after signing is REFUSED bad_signature."""
    task = signed_task(pki.alice)
    task.signed_job.payload = job_spec("other").SerializeToString()
    assert runner.run(task, FakeTransport(aggregator)) is TaskOutcome.REFUSED
    rep = report_of(pki, aggregator.reports[0])
    assert (rep.outcome, rep.reason) == (common_pb2.OUTCOME_REFUSED, "bad_signature")
    assert not workers.started


def test_job_signature_from_other_key_is_refused(pki, runner, aggregator):
    """A job envelope signed by a key other than the certificate's is refused."""
    task = signed_task(pki.mallory)
    task.signer_certificate = pki.alice.cert_pem
    assert runner.run(task, FakeTransport(aggregator)) is TaskOutcome.REFUSED
    assert report_of(pki, aggregator.reports[0]).reason in {"bad_signature", "replayed"}


def test_unknown_dataset_is_refused(pki, runner, aggregator):
    """A job for a dataset the site does not expose is REFUSED unknown_dataset."""
    task = signed_task(pki.alice, spec=job_spec("secret-records"))
    assert runner.run(task, FakeTransport(aggregator)) is TaskOutcome.REFUSED
    assert report_of(pki, aggregator.reports[0]).reason == "unknown_dataset"


def test_schema_mismatch_is_refused(pki, runner, aggregator):
    """A job expecting other features than the site declared is REFUSED schema_mismatch."""
    spec = job_spec()
    spec.dataset.features[:] = ["a", "c"]
    assert (
        runner.run(signed_task(pki.alice, spec=spec), FakeTransport(aggregator))
        is TaskOutcome.REFUSED
    )
    assert report_of(pki, aggregator.reports[0]).reason == "schema_mismatch"


def test_worker_failure_is_reported_and_next_task_restarts_worker(pki, runner, aggregator, workers):
    """A crashed worker gives FAILED worker_failed; the next task starts a fresh worker."""
    t = FakeTransport(aggregator)
    workers.fail_next = True
    assert runner.run(signed_task(pki.alice, task_id="a"), t) is TaskOutcome.FAILED
    rep = report_of(pki, aggregator.reports[0])
    assert (rep.outcome, rep.reason, rep.task_id) == (
        common_pb2.OUTCOME_FAILED,
        "worker_failed",
        "a",
    )
    assert runner.run(signed_task(pki.alice, task_id="b", round=2), t) is TaskOutcome.OK
    assert len(workers.started) == 2 and len(aggregator.uploads) == 1


def test_non_finite_delta_is_never_sent(pki, runner, aggregator, workers):
    """A delta holding NaN from the (untrusted) worker is FAILED training_failed, not uploaded."""
    orig = workers.__call__

    def nan_worker(**kw):
        w = orig(**kw)
        w.delta_value = float("nan")
        return w

    runner.workers._start = nan_worker
    assert runner.run(signed_task(pki.alice), FakeTransport(aggregator)) is TaskOutcome.FAILED
    assert report_of(pki, aggregator.reports[0]).reason == "training_failed"
    assert not aggregator.uploads


def test_unhandled_kind_is_refused_and_dispatch_is_extensible(pki, runner, aggregator):
    """A kind without a handler is refused; ``register`` adds one (how SecAgg stages plug in)."""
    t = FakeTransport(aggregator)
    task = signed_task(pki.alice, kind=federation_pb2.TASK_KIND_UNMASK)
    assert runner.run(task, t) is TaskOutcome.REFUSED
    seen = []
    runner.register(federation_pb2.TASK_KIND_UNMASK, lambda task, tr: seen.append(task.task_id))
    assert runner.run(task, t) is TaskOutcome.OK and seen == ["t1"]


def test_abandon_answers_round_aborted(pki, runner, aggregator):
    """After abandon (shutdown) a task is answered FAILED round_aborted."""
    runner.abandon()
    assert runner.run(signed_task(pki.alice), FakeTransport(aggregator)) is TaskOutcome.FAILED
    assert report_of(pki, aggregator.reports[0]).reason == "round_aborted"


def test_verify_job_raises_bad_signature_directly(pki):
    """verify_job raises BadSignature for a forged envelope (the runner maps it to REFUSED)."""
    from agent.admission.signed_job import verify_job

    task = signed_task(pki.alice)
    task.signed_job.signature = bytes(64)
    with pytest.raises(BadSignature):
        verify_job(
            task,
            federation=FEDERATION,
            ca_pem=pki.site.ca_pem,
            crl_pem=None,
            trusted_signers=(),
            now=time.time(),
        )


def test_secure_aggregation_job_is_refused_until_secagg_is_plugged_in(pki, runner, aggregator):
    """A SecAgg job is refused unsafe_request without a secure_update; with one it is used."""
    spec = job_spec()
    spec.min_sites = 3
    spec.secure_aggregation.enabled = True
    t = FakeTransport(aggregator)
    assert runner.run(signed_task(pki.alice, spec=spec), t) is TaskOutcome.REFUSED
    assert report_of(pki, aggregator.reports[0]).reason == "unsafe_request"
    sent = []
    runner.secure_update = lambda task, tr, **kw: sent.append(kw)
    assert runner.run(signed_task(pki.alice, spec=spec, task_id="t2"), t) is TaskOutcome.OK
    assert not aggregator.uploads
    assert sent[0]["num_samples"] == 40 and "eval_accuracy" in sent[0]["metrics"]


@pytest.mark.parametrize(("limit", "outcome"), [(23, TaskOutcome.REFUSED), (24, TaskOutcome.OK)])
def test_model_size_is_checked_against_the_site_policy(
    pki, dataset, workers, aggregator, limit, outcome
):
    """A 24-byte model is refused model_too_large under a 23-byte policy (before any download)."""
    runner = make_runner(pki, dataset, workers, max_model_bytes=limit)  # logreg 2x2+2 float32

    class NoDownload(FakeTransport):
        def download(self, job_id, model_version):
            assert outcome is TaskOutcome.OK, "a refused job must not be downloaded"
            return super().download(job_id, model_version)

    assert runner.run(signed_task(pki.alice), NoDownload(aggregator)) is outcome
    if outcome is TaskOutcome.REFUSED:
        assert report_of(pki, aggregator.reports[0]).reason == "model_too_large"
