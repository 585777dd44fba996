"""The model out: `confide job status` lists every version, `confide model download` writes one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from confide.cli.main import main as confide
from confide.v1 import federation_pb2
from confide.wire.safetensors import read_safetensors
from confide_dev.localfed.federation import toml_text
from tests.aggregator.fakes import ACK, FEDERATION, delta_like, tiny_spec


@pytest.fixture
def operator_toml(pki, server, tmp_path):
    """An operator.toml for alice pointing at the live aggregator."""
    _, port = server
    path = tmp_path / "operator.toml"
    tls = {
        "ca": str(pki / "ca.crt"),
        "cert": str(pki / "alice.crt"),
        "key": str(pki / "alice.key"),
        "signing_key": str(pki / "alice.sign.key"),
    }
    path.write_text(
        toml_text(
            {"federation": FEDERATION, "aggregator": {"address": f"127.0.0.1:{port}"}, "tls": tls}
        )
    )
    return path


def _finish_job(clients) -> tuple[str, list]:
    """Two sites run a two-round job whose round-2 input scored best, then the evaluation."""
    site, operator = clients
    op = operator()
    s1, s2 = site("site-1"), site("site-2")
    s1.connect()
    s2.connect()
    job_id = op.submit(tiny_spec())
    models = []
    for accuracy in (0.6, 0.9):
        tasks = [s.next_task(federation_pb2.TASK_KIND_TRAIN) for s in (s1, s2)]
        model = s1.download(job_id, tasks[0].model_version)
        models.append(model)
        metrics = {"eval_accuracy": accuracy, "eval_loss": 1 - accuracy, "eval_samples": 10.0}
        for s, t in zip((s1, s2), tasks, strict=True):
            assert s.upload(t, delta_like(model, 0.5), metrics=metrics) == ACK
    for s in (s1, s2):
        t = s.next_task(federation_pb2.TASK_KIND_EVALUATE)
        s.report(t, metrics={"accuracy": 0.7, "loss": 0.4}, num_samples=10)
    s1.next_task(federation_pb2.TASK_KIND_JOB_DONE)
    return job_id, models


def test_status_lists_every_version_and_download_writes_the_chosen_one(
    clients, operator_toml, tmp_path, capsys
):
    """Each version has its hold-out metrics; the best is marked and downloads as safetensors."""
    job_id, models = _finish_job(clients)
    assert confide(["--config", str(operator_toml), "job", "status", job_id, "--json"]) == 0
    out_lines = capsys.readouterr().out.splitlines()  # the in-process server logs there too
    status = json.loads(next(ln for ln in out_lines if ln.startswith('{"job_id"')))
    assert [(v["version"], v["accuracy"], v["eval_samples"]) for v in status["versions"]] == [
        (0, pytest.approx(0.6), 20),
        (1, pytest.approx(0.9), 20),
        (2, pytest.approx(0.7), 20),
    ]
    assert status["best_version"] == 1
    assert confide(["--config", str(operator_toml), "job", "status", job_id]) == 0
    text = capsys.readouterr().out
    assert "<- best" in text and f"confide model download {job_id} --version 1" in text

    out = tmp_path / "model.safetensors"
    args = ["--config", str(operator_toml), "model", "download", job_id, "--version", "1"]
    assert confide([*args, "--out", str(out)]) == 0
    arrays, meta = read_safetensors(out)
    assert (meta["job_id"], meta["version"], meta["format"]) == (job_id, "1", "confide-model/1")
    assert meta["sha256"] == status["versions"][1]["sha256"]
    for (name, got), (want_name, want) in zip(arrays, models[1], strict=True):
        assert name == want_name
        np.testing.assert_array_equal(got, want)
    assert confide([*args, "--out", str(out)]) == 2  # exists: refused without --force
    assert "already exists" in capsys.readouterr().err
    assert confide([*args[:-2], "--version", "7", "--out", str(tmp_path / "x")]) == 1
    assert "has versions 0 to 2, not 7" in capsys.readouterr().err


def test_a_downloaded_model_loads_into_pytorch(clients, operator_toml, tmp_path):
    """load_model rebuilds the built-in model from the file's job spec, with its weights."""
    torch = pytest.importorskip("torch")
    from confide_worker.training.saved import load_model

    job_id, _ = _finish_job(clients)
    out = tmp_path / "model.safetensors"
    args = ["--config", str(operator_toml), "model", "download", job_id, "--out", str(out)]
    assert confide(args) == 0
    model, spec = load_model(out)
    arrays, _ = read_safetensors(out)
    assert spec.dataset.features == ["a", "b", "c"] and not model.training
    for (name, param), (_, arr) in zip(model.named_parameters(), arrays, strict=True):
        np.testing.assert_array_equal(param.detach().numpy(), arr, err_msg=name)
    assert model(torch.zeros(4, 3)).shape == (4, 2)


def test_a_long_jobs_status_lists_the_newest_versions_and_the_best_one():
    """Past MAX_VERSIONS the list keeps the newest versions and the best evaluated one."""
    from aggregator.store import ModelRow, RoundRow
    from aggregator.versions import MAX_VERSIONS, model_versions

    n = MAX_VERSIONS + 500
    models = [
        ModelRow(job="j", version_no=v, sha256=f"{v:064x}", optimizer_state="", created=0.0)
        for v in range(n + 1)
    ]
    acc = {3: 0.99}  # round 3 evaluated version 2 best

    def metrics(r: int) -> dict[str, float]:
        return {"accuracy": acc.get(r, 0.5), "eval_samples": 10}

    rounds = [
        RoundRow(
            job="j",
            round=r,
            state="done",
            attempt=1,
            model_version_in="",
            model_version_out="",
            metrics=metrics(r),
            started=0.0,
            finished=0.0,
        )
        for r in range(1, n + 1)
    ]
    versions = model_versions(models, rounds, {})
    assert len(versions) == MAX_VERSIONS
    assert versions[0].version == 2 and versions[0].accuracy == pytest.approx(0.99)
    assert [v.version for v in versions[1:]] == list(range(n - MAX_VERSIONS + 2, n + 1))
