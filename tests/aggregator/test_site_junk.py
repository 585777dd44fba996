"""What a site sends cannot break the operator's tools: bounded fields, short refusals, pages."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from aggregator.pages import REPLY_BUDGET
from aggregator.store import AuditNote, JobRow, ModelRow, SiteRoundRow
from confide.cli.main import main as confide_main
from confide.v1 import admin_pb2, common_pb2, federation_pb2
from confide.wire.bounds import MAX_NAME_BYTES
from tests.aggregator.fakes import ACK, FEDERATION, delta_like, tiny_spec

SIX_MB = 6 * 1024 * 1024


def _refused(call: Any, reason: str = "oversized") -> None:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.details() == reason


def _db_bytes(state: Path) -> int:
    return sum(os.path.getsize(p) for p in state.glob("aggregator.db*"))


@pytest.fixture
def round1(clients):
    """Two connected sites holding round 1's TRAIN task of a running job."""
    site, operator = clients
    op, s1, s2 = operator(), site("site-1"), site("site-2")
    s1.connect()
    s2.connect()
    job = op.submit(tiny_spec(round_timeout_s=30.0))
    t1 = s1.next_task(federation_pb2.TASK_KIND_TRAIN)
    return op, job, s1, s2, t1, s1.download(job, t1.model_version)


def test_a_220k_key_metrics_map_is_refused_and_job_listings_stay_small(round1):
    """A failure report or update with 220k metrics is refused; GetJob and ListJobs stay tiny."""
    op, job, s1, _s2, t1, model = round1
    junk = {f"m{i}": 1.0 for i in range(220_000)}
    _refused(lambda: s1.report(t1, outcome=common_pb2.OUTCOME_FAILED, metrics=junk))
    _refused(lambda: s1.upload(t1, delta_like(model, 0.1), metrics=junk))
    st = op.admin.GetJob(admin_pb2.JobRef(job_id=job))
    listed = op.admin.ListJobs(admin_pb2.ListJobsRequest())
    assert st.ByteSize() < 4096 and listed.ByteSize() < 4096
    assert s1.upload(t1, delta_like(model, 0.1)) == ACK  # the site itself goes on


def test_190k_dataset_names_are_refused_and_the_site_listing_stays_small(clients):
    """A registration with 190k dataset names is refused; one at the limits is accepted."""
    site, operator = clients
    op, s1 = operator(), site("site-1")
    _refused(lambda: s1.register([f"d{i:06d}" for i in range(190_000)]))
    assert op.admin.ListSites(admin_pb2.ListSitesRequest()).sites == []
    s1.register([f"{i:03d}".ljust(MAX_NAME_BYTES, "x") for i in range(256)])
    _refused(lambda: s1.register(["x" * (MAX_NAME_BYTES + 1)]))
    assert op.admin.ListSites(admin_pb2.ListSitesRequest()).ByteSize() < 64 * 1024


def test_refused_6mb_messages_leave_short_records(round1, tmp_path):
    """Each refused 6 MB message adds a short audit record (reason, sizes, digest), not itself."""
    op, job, s1, _s2, t1, model = round1
    state = tmp_path / "state"
    before = _db_bytes(state)
    big = "x" * SIX_MB
    rep = federation_pb2.TaskReport(task_id=t1.task_id, kind=t1.kind, message=big)
    _refused(
        lambda: s1.fed.Report(
            s1.seal(
                common_pb2.STAGE_TASK_REPORT, rep.SerializeToString(), job_id=job, round=t1.round
            )
        )
    )
    # A 6 MB task id: once quoted whole in the refusal's error text.
    rep = federation_pb2.TaskReport(task_id=big, kind=t1.kind)
    _refused(
        lambda: s1.fed.Report(
            s1.seal(
                common_pb2.STAGE_TASK_REPORT, rep.SerializeToString(), job_id=job, round=t1.round
            )
        )
    )
    reg = federation_pb2.RegisterRequest(agent_version=big, datasets=["tab"])
    _refused(lambda: s1.fed.Register(s1.seal(common_pb2.STAGE_REGISTER, reg.SerializeToString())))
    _refused(lambda: s1.upload(t1, delta_like(model, 0.1), metrics={big: 1.0}))
    # A 6 MB job id in the envelope: refused before it reaches a log line or the audit.
    env = s1.seal(common_pb2.STAGE_TASK_REPORT, b"", job_id=big, round=1)
    with pytest.raises(grpc.RpcError):
        s1.fed.Report(env)
    assert _db_bytes(state) - before < 256 * 1024
    tail = op.admin.ListAudit(admin_pb2.AuditRequest(after_seq=0)).entries[-5:]
    assert all(len(e.detail) < 400 and len(e.job_id) < 400 for e in tail)
    assert all("bytes sha256 " in e.detail for e in tail)


def _add_rounds(store: Any, job: str, *, rounds: int, sites: int) -> None:
    """Store ``rounds`` rounds of ``sites`` sites each with 32 long metric names (~4.5 kB a row)."""
    metrics = {f"{i:02d}".ljust(MAX_NAME_BYTES, "m"): 0.5 for i in range(32)}
    now = time.time()
    for r in range(1, rounds + 1):
        store.start_round(
            job,
            r,
            attempt=1,
            model_in="0" * 64,
            at=now,
            audit=AuditNote(event="round_started", actor="t", at=now),
        )
        for s in range(sites):
            store.record_site(
                SiteRoundRow(
                    job=job,
                    round=r,
                    site=f"site-{s}",
                    outcome="ok",
                    reason="",
                    num_samples=10,
                    epsilon=0.5,
                    update_epsilon=0.0,
                    metrics=metrics,
                )
            )


def test_listings_are_paged_within_the_reply_budget(server, clients, pki, tmp_path, capsys):
    """Jobs, sites, audit and rounds come in bounded pages; GetJob holds the latest rounds;
    ``confide job status`` follows the pages and prints every round."""
    agg, port = server
    site, operator = clients
    op = operator()
    for name in ("site-1", "site-2", "site-3"):
        site(name).register()
    ids = [op.submit(tiny_spec(name=f"j{i}")) for i in range(5)]
    spec = tiny_spec().SerializeToString()
    agg.store.add_job(
        JobRow(
            id="many",
            spec=spec,
            signed_job=b"",
            signer_cert=b"",
            state="done",
            error="",
            submitted_by="alice",
            created=time.time(),
        ),
        ModelRow(
            job="many", version_no=0, sha256="0" * 64, optimizer_state="", created=time.time()
        ),
        audit=AuditNote(event="job_submitted", actor="alice", at=time.time(), job="many"),
    )
    _add_rounds(agg.store, "many", rounds=40, sites=8)

    pages = _pages(
        lambda t: op.admin.ListJobs(admin_pb2.ListJobsRequest(page_size=2, page_token=t))
    )
    assert [len(p.jobs) for p in pages] == [2, 2, 2]
    assert [j.job_id for p in pages for j in p.jobs] == [*ids, "many"]
    pages = _pages(
        lambda t: op.admin.ListSites(admin_pb2.ListSitesRequest(page_size=2, page_token=t))
    )
    assert [s.site_id for p in pages for s in p.sites] == ["site-1", "site-2", "site-3"]
    pages = _pages(lambda t: op.admin.ListAudit(admin_pb2.AuditRequest(page_size=7, page_token=t)))
    seqs = [e.seq for p in pages for e in p.entries]
    assert seqs == list(range(1, len(agg.store.audit_entries()) + 1))
    with pytest.raises(grpc.RpcError) as err:
        op.admin.ListJobs(admin_pb2.ListJobsRequest(page_token="s:site-1"))
    assert err.value.details() == "malformed"

    st = op.admin.GetJob(admin_pb2.JobRef(job_id="many"))
    assert st.rounds_total == 40 and 0 < len(st.rounds) < 40
    assert [r.round for r in st.rounds] == list(range(41 - len(st.rounds), 41))
    assert st.ByteSize() <= REPLY_BUDGET
    pages = _pages(
        lambda t: op.admin.ListRounds(admin_pb2.ListRoundsRequest(job_id="many", page_token=t))
    )
    assert len(pages) > 1 and all(p.ByteSize() <= REPLY_BUDGET + 64 * 1024 for p in pages)
    assert [r.round for p in pages for r in p.rounds] == list(range(1, 41))

    cfg = _operator_config(pki, port, tmp_path)
    assert confide_main(["--config", str(cfg), "job", "status", "many", "--json"]) == 0
    # The server's log lines share stdout with the CLI in this process.
    shown = json.loads(next(x for x in capsys.readouterr().out.splitlines() if x.startswith("{")))
    assert [r["round"] for r in shown["rounds"]] == list(range(1, 41))
    assert confide_main(["--config", str(cfg), "job", "list"]) == 0
    listed = [x for x in capsys.readouterr().out.splitlines() if " rounds  " in x]
    assert [x.split()[0] for x in listed] == [*ids, "many"]


def _pages(fetch: Any) -> list[Any]:
    """Every page of a listing, following next_page_token."""
    out, token = [], ""
    while True:
        out.append(fetch(token))
        token = out[-1].next_page_token
        if not token:
            return out


def _operator_config(pki: Path, port: int, tmp_path: Path) -> Path:
    cfg = tmp_path / "operator.toml"
    cfg.write_text(
        f'federation = "{FEDERATION}"\n[aggregator]\naddress = "127.0.0.1:{port}"\n'
        f'server_name = "localhost"\n[tls]\ncert = "{pki}/alice.crt"\nkey = "{pki}/alice.key"\n'
        f'signing_key = "{pki}/alice.sign.key"\nca = "{pki}/ca.crt"\n'
    )
    return cfg
