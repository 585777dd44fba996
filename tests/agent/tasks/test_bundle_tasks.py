"""Bundle jobs at the site: the signed archive is fetched once, checked first, copied per worker."""

from __future__ import annotations

import dataclasses
import io
import tarfile

import pytest

from agent.tasks.runner import TaskOutcome
from agent.workers.bundles import SiteBundles
from confide import bundle
from confide.v1 import common_pb2, federation_pb2
from confide.wire import encode_tensors
from tests.agent.conftest import job_spec, make_runner, model_weights, report_of, signed_task
from tests.agent.fakes import FakeTransport

_CODE = {"model.py": b"def build_model(spec): ...\n"}


def _bundle_spec(archive: bytes) -> common_pb2.JobSpec:
    """job_spec() as a bundle job: its signed parameters and version 0 are the logreg's."""
    spec = job_spec()
    header, _ = encode_tensors(model_weights())
    spec.model.Clear()
    spec.model.kind = common_pb2.MODEL_KIND_BUNDLE
    spec.model.code_sha256 = bundle.digest(archive)
    spec.model.parameters.extend(header.tensors)
    spec.model.initial_sha256 = header.sha256
    return spec


def _runner(pki, dataset, workers, tmp_path, *, bundles: bool = True):
    runner = make_runner(pki, dataset, workers)
    runner.site = dataclasses.replace(runner.site, allowed_bundles=frozenset({"trusted-signers"}))
    runner.bundles = SiteBundles(tmp_path / "bundles") if bundles else None
    return runner


def _symlink_archive() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo("model.py")
        info.type, info.linkname = tarfile.SYMTYPE, "/home/agent/state/identity.key"
        tf.addfile(info)
    return out.getvalue()


def test_a_bundle_job_runs_from_one_download_and_its_copy_goes_with_the_worker(
    pki, dataset, workers, aggregator, tmp_path
):
    """Two rounds, one download; the worker gets the checked copy, removed at JOB_DONE."""
    archive = bundle.pack(_CODE)
    spec = _bundle_spec(archive)
    aggregator.bundles["job-1"] = archive
    runner = _runner(pki, dataset, workers, tmp_path)
    t = FakeTransport(aggregator)
    for i, rnd in enumerate((1, 2)):
        task = signed_task(pki.alice, spec=spec, task_id=f"t{i}", round=rnd)
        assert runner.run(task, t) is TaskOutcome.OK
    assert aggregator.bundle_downloads == 1 and len(workers.started) == 1
    [copy] = workers.bundles
    assert (copy / "model.py").read_bytes() == _CODE["model.py"]
    done = signed_task(pki.alice, spec=spec, kind=federation_pb2.TASK_KIND_JOB_DONE)
    assert runner.run(done, t) is TaskOutcome.OK
    assert not copy.exists()


@pytest.mark.parametrize(
    "served,reason",
    [
        (bundle.pack({"model.py": b"import socket\n"}), "bundle_mismatch"),
        (_symlink_archive(), "bundle_mismatch"),
    ],
    ids=["other-code", "other-and-hostile"],
)
def test_other_bytes_than_the_signed_archive_are_refused_before_any_worker(
    pki, dataset, workers, aggregator, tmp_path, served, reason
):
    """A lying aggregator's archive is refused bundle_mismatch, said to the aggregator."""
    spec = _bundle_spec(bundle.pack(_CODE))
    aggregator.bundles["job-1"] = served
    runner = _runner(pki, dataset, workers, tmp_path)
    outcome = runner.run(signed_task(pki.alice, spec=spec), FakeTransport(aggregator))
    assert outcome is TaskOutcome.REFUSED and not workers.started
    rep = report_of(pki, aggregator.reports[-1])
    assert rep.reason == reason and "code bundle refused" in rep.message
    assert not aggregator.uploads


def test_a_signed_hostile_archive_and_an_agent_without_bundles_are_refused(
    pki, dataset, workers, aggregator, tmp_path
):
    """The operator signed an archive with a link: refused by its reason; so is any bundle
    at a runner that has no place to check them."""
    hostile = _symlink_archive()
    spec = _bundle_spec(hostile)
    aggregator.bundles["job-1"] = hostile
    runner = _runner(pki, dataset, workers, tmp_path)
    assert runner.run(signed_task(pki.alice, spec=spec), FakeTransport(aggregator)) is (
        TaskOutcome.REFUSED
    )
    assert report_of(pki, aggregator.reports[-1]).reason == "bundle_special_file"
    bare = _runner(pki, dataset, workers, tmp_path / "bare", bundles=False)
    task = signed_task(pki.alice, spec=_bundle_spec(bundle.pack(_CODE)), task_id="t2")
    assert bare.run(task, FakeTransport(aggregator)) is TaskOutcome.REFUSED
    assert report_of(pki, aggregator.reports[-1]).reason == "code_not_allowed"
    assert not workers.started
