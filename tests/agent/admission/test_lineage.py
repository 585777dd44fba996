"""A lying aggregator cannot make a site touch models it cannot tie to the job's versions."""

from __future__ import annotations

import pytest

from agent.admission.lineage import ModelVersions, Purpose
from agent.tasks.runner import TaskOutcome
from confide.errors import PolicyRefusal, Reason
from confide.lineage import chain_link
from confide.v1 import federation_pb2
from tests.agent.conftest import (
    FINAL_SHA,
    MODEL_SHA,
    NO_PARENT,
    final_task,
    final_weights,
    job_spec,
    report_of,
    signed_task,
)
from tests.agent.fakes import FakeTransport

OTHER_SHA = "c" * 64

EVALUATE = federation_pb2.TASK_KIND_EVALUATE


def _refused(versions: ModelVersions, task: federation_pb2.Task, purpose: Purpose) -> str:
    with pytest.raises(PolicyRefusal) as info:
        versions.pin(task, spec=job_spec(), purpose=purpose)
    assert info.value.reason is Reason.UNTIED_MODEL
    return info.value.message


def test_version_0_must_be_the_signed_jobs_initial_model(pki):
    """Round 1 on any model but the one the signed seed defines is refused untied_model."""
    versions = ModelVersions()
    assert "initial model" in _refused(
        versions, signed_task(pki.alice, model_version=FINAL_SHA), Purpose.TRAIN
    )
    pinned = versions.pin(signed_task(pki.alice), spec=job_spec(), purpose=Purpose.TRAIN)
    assert (pinned.version, pinned.sha256, pinned.final) == (0, MODEL_SHA, False)


def test_a_version_is_pinned_to_one_model_for_good(pki, tmp_path):
    """Another model shown as a version already seen is a fork, also after a restart."""
    path = tmp_path / "ledger.db"
    ModelVersions(path).pin(signed_task(pki.alice, round=2), spec=job_spec(), purpose=Purpose.TRAIN)
    again = ModelVersions(path)
    fork = signed_task(pki.alice, task_id="t2", round=2, model_version=OTHER_SHA)
    assert "another model" in _refused(again, fork, Purpose.TRAIN)
    assert again.versions("job-1") == [(1, MODEL_SHA, True)]


def test_a_parent_other_than_the_version_held_is_a_fork(pki):
    """Version k whose parent is not the chain value held for k - 1 is refused."""
    versions = ModelVersions()
    versions.pin(signed_task(pki.alice, round=1), spec=job_spec(), purpose=Purpose.TRAIN)
    forked = signed_task(pki.alice, round=2, parent_chain=NO_PARENT)
    assert "parent" in _refused(versions, forked, Purpose.TRAIN)


def test_a_version_held_after_must_link_to_the_one_shown(pki):
    """Shown version k + 1 first, the site refuses a version k it does not link to."""
    versions = ModelVersions()
    versions.pin(signed_task(pki.alice, round=3), spec=job_spec(), purpose=Purpose.TRAIN)
    earlier = signed_task(pki.alice, round=2, model_version=OTHER_SHA)
    assert "does not follow" in _refused(versions, earlier, Purpose.TRAIN)
    honest = signed_task(pki.alice, round=2)
    assert versions.pin(honest, spec=job_spec(), purpose=Purpose.TRAIN).version == 1


@pytest.mark.parametrize(
    ("task_kwargs", "why"),
    [
        ({"round": 2, "version": 0}, "trains version 1"),
        ({"round": 3, "version": 3}, "trains version 2"),
        ({"round": 5}, "past the job's 3 rounds"),
    ],
)
def test_train_takes_the_version_of_its_round_within_the_job(pki, task_kwargs, why):
    """Round r trains version r - 1, and no version lies past the job's signed rounds."""
    assert why in _refused(ModelVersions(), signed_task(pki.alice, **task_kwargs), Purpose.TRAIN)


def test_a_task_without_lineage_is_refused(pki):
    """A task that does not say where its model sits is refused."""
    task = signed_task(pki.alice)
    task.ClearField("lineage")
    assert "does not say" in _refused(ModelVersions(), task, Purpose.TRAIN)


def test_evaluate_only_models_trained_on_or_the_final_one_after_them(pki):
    """EVALUATE of an unseen version, or of a final model that does not follow a version the
    site trained on, is refused; after training round 3 the final model is accepted."""
    versions = ModelVersions()
    unseen = signed_task(pki.alice, kind=EVALUATE, round=2, version=1)
    assert "neither" in _refused(versions, unseen, Purpose.EVALUATE)
    assert "neither" in _refused(versions, final_task(pki.alice), Purpose.EVALUATE)
    versions.pin(signed_task(pki.alice, round=3), spec=job_spec(), purpose=Purpose.TRAIN)
    stray = final_task(pki.alice)
    stray.lineage.parent_chain = chain_link(NO_PARENT, version=2, model_sha=OTHER_SHA)
    assert "parent" in _refused(versions, stray, Purpose.EVALUATE)
    pinned = versions.pin(final_task(pki.alice), spec=job_spec(), purpose=Purpose.EVALUATE)
    assert pinned.final and pinned.sha256 == FINAL_SHA
    trained = signed_task(pki.alice, kind=EVALUATE, round=3, version=2)
    assert versions.pin(trained, spec=job_spec(), purpose=Purpose.EVALUATE).version == 2


def test_served_bytes_must_be_the_named_version(pki, runner, aggregator, workers):
    """A download whose bytes are not the model the task names is refused before any use."""
    aggregator.models[("job-1", MODEL_SHA)] = final_weights()
    t = FakeTransport(aggregator)
    assert runner.run(signed_task(pki.alice), t) is TaskOutcome.REFUSED
    assert report_of(pki, aggregator.reports[-1]).reason == "untied_model"
    assert not aggregator.uploads and not workers.started
