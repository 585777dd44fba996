"""The worker process end to end, driven from the daemon side through ``Worker``."""

from __future__ import annotations

import dataclasses
import os
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest

from agent.privacy.plan import dpsgd_schedule
from agent.workers.handle import Worker, WorkerFailed
from agent.workers.sandbox import Limits
from confide.errors import MalformedMessage, PolicyRefusal, Reason
from confide.models import initial_weights, parameter_shapes
from confide.v1 import common_pb2
from confide.wire.worker import DpSgdParams
from tests.confide_worker.conftest import add, make_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlp_worker(bc_dataset):
    """One MLP worker on breast_cancer, shared by the tests that only send ops."""
    job = make_job()
    worker = Worker.start(job=job, job_id="job-mlp", dataset=bc_dataset, device="cpu")
    yield job, worker
    worker.stop()


def test_trains_two_rounds_in_one_process_and_reduces_loss(mlp_worker):
    """Two rounds reuse the same process, deltas follow parameter_shapes, and loss falls."""
    job, worker = mlp_worker
    assert worker.info is not None
    assert (worker.info.num_train, worker.info.num_holdout) == (455, 114)
    assert worker.info.num_features == 30 and worker.info.device == "cpu"
    weights = initial_weights(job.model, job.dataset, seed=1)
    before = worker.evaluate(weights)
    assert before.num_samples == 114
    pid = worker.ping()["pid"]
    for rnd in (1, 2):
        result = worker.train(weights, dp=None, round=rnd)
        want = parameter_shapes(job.model, job.dataset)
        assert [(n, a.shape) for n, a in result.delta] == want
        assert all(a.dtype == np.float32 for _, a in result.delta)
        assert result.num_samples == 455 and result.steps == 2 * 15
        weights = add(weights, result.delta)
        assert worker.ping()["pid"] == pid == worker.info.pid
    after = worker.evaluate(weights)
    assert after.loss < before.loss
    assert after.accuracy > 0.9


def test_dp_sgd_runs_exact_steps_and_differs_from_plain(mlp_worker):
    """DP-SGD runs exactly the daemon's step count and gives another delta than plain SGD."""
    job, worker = mlp_worker
    weights = initial_weights(job.model, job.dataset, seed=2)
    plain = worker.train(weights, dp=None, round=3)
    q, steps = dpsgd_schedule(job.training, num_train=455)
    dp = DpSgdParams(
        noise_multiplier=1.1,
        max_grad_norm=job.record_privacy.max_grad_norm,
        sample_rate=q,
        steps=steps,
    )
    assert dp.steps == 2 * round(455 / 32)
    private = worker.train(weights, dp=dp, round=3)
    assert private.steps == dp.steps
    assert [n for n, _ in private.delta] == [n for n, _ in plain.delta]
    assert not np.allclose(private.delta[0][1], plain.delta[0][1])
    assert set(private.metrics) == {"train_loss", "train_accuracy"}


def test_failed_op_answers_an_error_and_keeps_serving(mlp_worker):
    """Weights of the wrong shape fail that op with a reason; the next op still works."""
    job, worker = mlp_worker
    weights = initial_weights(job.model, job.dataset, seed=3)
    bad = [(n, np.zeros((3,), np.float32)) for n, _ in weights]
    with pytest.raises(WorkerFailed) as info:
        worker.train(bad, dp=None, round=1)
    assert info.value.reason is Reason.MALFORMED
    assert worker.alive
    assert worker.evaluate(weights).num_samples == 114


def test_missing_dataset_file_is_a_reasoned_failure(bc_dataset, tmp_path):
    """A dataset file that is gone makes start raise WorkerFailed(unavailable), no traceback."""
    cfg = dataclasses.replace(bc_dataset, path=tmp_path / "gone.csv")
    with pytest.raises(WorkerFailed) as info:
        Worker.start(job=make_job(), job_id="job-gone", dataset=cfg, device="cpu")
    assert info.value.reason is Reason.UNAVAILABLE
    assert "Traceback" not in str(info.value)


def test_schema_mismatch_in_the_file_is_a_policy_refusal(bc_dataset, tmp_path):
    """A declared column that the file lacks refuses the job with schema_mismatch."""
    path = tmp_path / "short.csv"
    lines = bc_dataset.path.read_text().splitlines()
    path.write_text("\n".join(",".join(ln.split(",")[1:]) for ln in lines) + "\n")
    cfg = dataclasses.replace(bc_dataset, path=path)
    with pytest.raises(PolicyRefusal) as info:
        Worker.start(job=make_job(), job_id="job-short", dataset=cfg, device="cpu")
    assert info.value.reason is Reason.SCHEMA_MISMATCH
    assert "f0" in str(info.value)


def test_killed_worker_makes_the_next_op_fail(bc_dataset):
    """After the worker process is killed, the next op raises WorkerFailed(worker_failed)."""
    job = make_job(common_pb2.MODEL_KIND_LOGREG)
    worker = Worker.start(job=job, job_id="job-kill", dataset=bc_dataset, device="cpu")
    try:
        os.kill(worker.pid, signal.SIGKILL)
        worker._proc.wait(timeout=10)
        with pytest.raises(WorkerFailed) as info:
            worker.evaluate(initial_weights(job.model, job.dataset, seed=1))
        assert info.value.reason is Reason.WORKER_FAILED
        assert not worker.alive
    finally:
        worker.stop()


def test_fixed_delta_job_never_imports_torch(bc_dataset):
    """A fixed_delta job answers 1e-3 everywhere without torch in the worker."""
    job = make_job(common_pb2.MODEL_KIND_FIXED_DELTA)
    worker = Worker.start(job=job, job_id="job-fixed", dataset=bc_dataset, device="cpu")
    try:
        weights = initial_weights(job.model, job.dataset, seed=1)
        result = worker.train(weights, dp=None, round=1)
        ((name, delta),) = result.delta
        assert name == "delta" and delta.shape == (1000,) and delta.dtype == np.float32
        assert np.all(delta == np.float32(1e-3))
        assert worker.ping()["torch_loaded"] is False
    finally:
        worker.stop()
    assert not worker.alive


def _fake_python(tmp_path, body):
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_worker_that_dies_at_start_reports_its_stderr(bc_dataset, tmp_path):
    """A worker that exits at once raises WorkerFailed with the tail of its stderr."""
    python = _fake_python(tmp_path, "echo 'boom: no torch here' >&2; exit 3")
    with pytest.raises(WorkerFailed) as info:
        Worker.start(job=make_job(), job_id="job-dead", dataset=bc_dataset, python=python)
    assert info.value.reason is Reason.WORKER_FAILED
    assert "boom: no torch here" in str(info.value)


def test_hung_worker_times_out(bc_dataset, tmp_path):
    """A worker that never answers init is killed after init_timeout: a site limit, named."""
    python = _fake_python(tmp_path, "exec sleep 60")
    with pytest.raises(WorkerFailed, match="ran past its wall time") as info:
        Worker.start(
            job=make_job(), job_id="job-hung", dataset=bc_dataset, python=python, init_timeout=1
        )
    assert info.value.reason is Reason.RESOURCE_LIMIT
    assert info.value.public == "the worker ran past its wall time (1 s in init) and was killed"


def test_daemon_side_imports_leave_torch_unloaded():
    """Importing the worker handle and the dataset module in a fresh process loads no torch."""
    code = (
        "import sys, agent.workers.handle, confide.wire.frames, confide.wire.worker, "
        "confide.data.datasets, agent.data.declared; "
        "print('torch' in sys.modules, 'opacus' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["False", "False"]


_SCRIPTED_WORKER = """
import struct, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
for raw in open(sys.argv[1], encoding="utf-8").read().splitlines():
    first = inp.read(4)
    if len(first) < 4:
        break
    inp.read(struct.unpack(">I", first)[0])
    inp.read(struct.unpack(">Q", inp.read(8))[0])
    head = raw.encode()
    out.write(struct.pack(">I", len(head)) + head + struct.pack(">Q", 0))
    out.flush()
inp.read()
"""

_GOOD_INIT = '{"ok":true,"pid":7,"num_train":4,"num_holdout":2,"num_features":30,"device":"cpu"}'


def _scripted_worker(tmp_path, bc_dataset, *replies):
    """A worker that answers each op with the next raw JSON header (NaN allowed), no body."""
    (tmp_path / "worker.py").write_text(_SCRIPTED_WORKER)
    (tmp_path / "replies.txt").write_text("\n".join(replies) + "\n")
    python = _fake_python(
        tmp_path, f'exec "{sys.executable}" "{tmp_path}/worker.py" "{tmp_path}/replies.txt"'
    )
    return Worker.start(job=make_job(), job_id="job-x", dataset=bc_dataset, python=python)


@pytest.mark.parametrize(
    "init",
    [
        '{"ok":true,"pid":7,"num_holdout":2,"num_features":30,"device":"cpu"}',
        '{"ok":true,"pid":7,"num_train":"4","num_holdout":2,"num_features":30,"device":"cpu"}',
        '{"ok":true,"pid":7,"num_train":NaN,"num_holdout":2,"num_features":30,"device":"cpu"}',
        '{"ok":true,"pid":7,"num_train":-4,"num_holdout":2,"num_features":30,"device":"cpu"}',
        '{"ok":true,"pid":7,"num_train":4.5,"num_holdout":2,"num_features":30,"device":"cpu"}',
        '{"ok":true,"pid":7,"num_train":4,"num_holdout":2,"num_features":30,"device":null}',
    ],
    ids=["missing", "string", "nan", "negative", "fraction", "null-device"],
)
def test_malformed_init_reply_is_worker_failed_malformed(bc_dataset, tmp_path, init):
    """An init reply with a missing, mistyped, NaN or negative field is WorkerFailed(malformed)."""
    with pytest.raises(WorkerFailed) as info:
        _scripted_worker(tmp_path, bc_dataset, init)
    assert info.value.reason is Reason.MALFORMED


@pytest.mark.parametrize(
    "reply",
    [
        '{"ok":true,"tensors":[],"steps":3,"metrics":{}}',
        '{"ok":true,"tensors":[],"num_samples":NaN,"steps":3,"metrics":{}}',
        '{"ok":true,"tensors":[],"num_samples":-4,"steps":3,"metrics":{}}',
        '{"ok":true,"tensors":[],"num_samples":4,"steps":[3],"metrics":{}}',
        '{"ok":true,"tensors":[],"num_samples":4,"steps":3,"metrics":{"train_loss":NaN}}',
        '{"ok":true,"tensors":[],"num_samples":4,"steps":3,"metrics":{"train_loss":-Infinity}}',
        '{"ok":true,"tensors":[],"num_samples":4,"steps":3,"metrics":{"train_loss":-0.5}}',
        '{"ok":true,"tensors":[],"num_samples":4,"steps":3,"metrics":{"train_loss":"low"}}',
        '{"ok":true,"tensors":[],"num_samples":4,"steps":3,"metrics":[1]}',
        '{"ok":true,"num_samples":4,"steps":3,"metrics":{}}',
    ],
    ids=[
        "missing-samples",
        "nan-samples",
        "negative-samples",
        "list-steps",
        "nan-metric",
        "infinite-metric",
        "negative-metric",
        "string-metric",
        "list-metrics",
        "missing-tensors",
    ],
)
def test_malformed_train_reply_is_worker_failed_malformed(bc_dataset, tmp_path, reply):
    """A malformed train reply raises WorkerFailed(malformed) and leaves the worker unusable."""
    worker = _scripted_worker(tmp_path, bc_dataset, _GOOD_INIT, reply)
    try:
        with pytest.raises(WorkerFailed) as info:
            worker.train([], dp=None, round=1)
        assert info.value.reason is Reason.MALFORMED
        assert not worker.alive
    finally:
        worker.stop()


@pytest.mark.parametrize(
    "reply",
    [
        '{"ok":true,"loss":0.5,"num_samples":2}',
        '{"ok":true,"accuracy":"high","loss":0.5,"num_samples":2}',
        '{"ok":true,"accuracy":0.9,"loss":Infinity,"num_samples":2}',
        '{"ok":true,"accuracy":0.9,"loss":0.5,"num_samples":true}',
    ],
    ids=["missing-accuracy", "string-accuracy", "infinite-loss", "bool-samples"],
)
def test_malformed_evaluate_reply_is_worker_failed_malformed(bc_dataset, tmp_path, reply):
    """A malformed evaluate reply raises WorkerFailed(malformed), not KeyError or ValueError."""
    worker = _scripted_worker(tmp_path, bc_dataset, _GOOD_INIT, reply)
    try:
        with pytest.raises(WorkerFailed) as info:
            worker.evaluate([])
        assert info.value.reason is Reason.MALFORMED
    finally:
        worker.stop()


def test_scripted_worker_with_good_replies_is_accepted(bc_dataset, tmp_path):
    """The scripted worker's well-formed replies parse, so the malformed cases test one field."""
    good_train = '{"ok":true,"tensors":[],"num_samples":4,"steps":3,"metrics":{"train_loss":0.5}}'
    good_eval = '{"ok":true,"accuracy":1,"loss":0.5,"num_samples":2}'
    worker = _scripted_worker(tmp_path, bc_dataset, _GOOD_INIT, good_train, good_eval)
    try:
        assert worker.info is not None and worker.info.num_train == 4
        result = worker.train([], dp=None, round=1)
        assert (result.num_samples, result.steps, result.metrics) == (4, 3, {"train_loss": 0.5})
        assert worker.evaluate([]).accuracy == 1.0
        assert worker.alive
    finally:
        worker.stop()


def test_evaluate_clips_each_records_loss_when_asked(mlp_worker):
    """With loss_clip L every record's loss counts at most L; a large L changes nothing."""
    job, worker = mlp_worker
    weights = initial_weights(job.model, job.dataset, seed=4)
    wild = [(n, (a * 200).astype(np.float32)) for n, a in weights]  # confident and often wrong
    plain = worker.evaluate(wild)
    clipped = worker.evaluate(wild, loss_clip=0.5)
    assert plain.loss > 0.5 >= clipped.loss
    assert clipped.accuracy == plain.accuracy and clipped.num_samples == plain.num_samples
    assert worker.evaluate(weights, loss_clip=1e6).loss == pytest.approx(
        worker.evaluate(weights).loss
    )


@pytest.mark.parametrize("clip", [0, -1.0, "5", True])
def test_an_invalid_loss_clip_fails_the_op_and_the_worker_keeps_serving(mlp_worker, clip):
    """A loss_clip that is not a number > 0 fails evaluate as malformed; the worker stays up."""
    job, worker = mlp_worker
    weights = initial_weights(job.model, job.dataset, seed=4)
    with pytest.raises(WorkerFailed) as info:
        worker.evaluate(weights, loss_clip=clip)
    assert info.value.reason is Reason.MALFORMED
    assert worker.alive and worker.evaluate(weights).num_samples == 114


@pytest.mark.parametrize("field", ["batch_size", "learning_rate", "local_epochs"])
def test_the_worker_substitutes_no_training_default(bc_dataset, field):
    """A training block without a batch size, learning rate or epochs (the daemon sends a
    validated job) is refused MALFORMED, never run with a default of the worker's own."""
    pytest.importorskip("torch")
    from confide_worker.training.job import TorchJob

    job = make_job()
    job.training.ClearField(field)
    with pytest.raises(MalformedMessage):
        TorchJob(job, bc_dataset, "cpu")


def _fake_worker(tmp_path, body: str) -> subprocess.Popen[bytes]:
    """A Python child speaking the frame protocol as ``body`` says (a hostile worker)."""
    script = tmp_path / "fake_worker.py"
    script.write_text(
        "import sys\nfrom confide.wire.frames import read_frame, write_frame\n"
        "out = sys.stdout.buffer\n" + body
    )
    return subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def test_an_output_flood_without_newlines_is_cut_at_the_limit(tmp_path):
    """GBs on stderr in one line cost the daemon no memory: past the limit the worker is
    killed and the failure names the limit, not the output."""
    proc = _fake_worker(
        tmp_path,
        "chunk = b'x' * (1 << 20)\nwhile True:\n    sys.stderr.buffer.write(chunk)\n",
    )
    worker = Worker(
        proc, job_id="job-flood", timeout=60, limits=Limits(output_bytes=8 * 1024 * 1024)
    )
    with pytest.raises(WorkerFailed) as info:
        worker.ping()
    assert info.value.reason is Reason.RESOURCE_LIMIT
    assert info.value.public == "the worker wrote more than 8 MiB to its output and was killed"
    assert len(worker.stderr_tail()) <= 8192  # only a tail was ever kept
    worker.stop()


def test_the_workers_stderr_goes_to_its_file_not_into_the_message(tmp_path):
    """With a stderr file the failure names the file (0600) and quotes none of the output."""
    proc = _fake_worker(
        tmp_path, "sys.stderr.write('patient 4711: secret\\n')\nsys.stderr.flush()\nsys.exit(3)\n"
    )
    path = tmp_path / "workers" / "job.stderr"
    worker = Worker(proc, job_id="job-leak", timeout=60, stderr_file=path)
    with pytest.raises(WorkerFailed) as info:
        worker.ping()
    assert "secret" not in str(info.value) and str(path) in str(info.value)
    assert info.value.reason is Reason.WORKER_FAILED
    assert path.read_text() == "patient 4711: secret\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    worker.stop()


@pytest.mark.parametrize(
    ("claimed", "recorded"),
    [
        ("budget_exceeded", Reason.WORKER_FAILED),
        ("signer_untrusted", Reason.WORKER_FAILED),
        ("no_such_reason", Reason.WORKER_FAILED),
        ("training_failed", Reason.TRAINING_FAILED),
    ],
)
def test_a_worker_cannot_pass_its_failure_off_as_a_site_decision(tmp_path, claimed, recorded):
    """Job code in the worker can forge an error frame; only worker reasons are believed."""
    proc = _fake_worker(
        tmp_path,
        "read_frame(sys.stdin.buffer, max_body_bytes=1 << 20)\n"
        f"write_frame(out, {{'ok': False, 'reason': {claimed!r}, 'message': 'x'}})\n"
        "out.flush()\nsys.stdin.read()\n",
    )
    worker = Worker(proc, job_id="job-forge", timeout=60)
    with pytest.raises(WorkerFailed) as info:
        worker.ping()
    assert info.value.reason is recorded
    worker.stop()
