"""The aggregator's metrics: the endpoint during a job, rounds from the store, SecAgg+ dropouts."""

from __future__ import annotations

import socket
from collections.abc import Callable

import grpc
import pytest
from prometheus_client import CollectorRegistry

from aggregator.config import parse_config
from aggregator.metrics import JOB_STATES, AggregatorMetrics, StateCollector
from aggregator.secure import SecureRound
from aggregator.server import build
from aggregator.store import AuditNote, JobRow, ModelRow, StoreConfig, open_store
from confide import secagg
from confide.errors import ConfigError
from confide.metrics import ADDRESS_FILE, MetricsConfig
from confide.pki import Role, init_ca, issue, renew
from confide.secagg.encoding import Mechanism, SecureEncoding
from confide.v1 import common_pb2, federation_pb2
from tests.aggregator.conftest import make_config
from tests.aggregator.fakes import ACK, FEDERATION, FakeSite, Operator, delta_like, tiny_spec
from tests.support.scrape import Samples, metrics_address, scrape
from tests.support.wait import wait_for

UPLOAD = "/confide.v1.Federation/Upload"
DOWNLOAD = "/confide.v1.Federation/Download"
A = "confide_aggregator"


def _toml(pki, extra: str = "") -> str:
    tls = "\n".join(
        f'{k} = "{pki}/{f}"'
        for k, f in [
            ("ca", "ca.crt"),
            ("cert", "aggregator.crt"),
            ("key", "aggregator.key"),
            ("signing_key", "aggregator.sign.key"),
            ("crl", "crl.pem"),
        ]
    )
    return f'federation = "testfed"\n[tls]\n{tls}\n[state]\ndir = "state"\n{extra}\n'


def _scraped(address: str, what: str, until: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``until`` holds (a round's last actions may finish after its Ack)."""
    return wait_for(lambda: scrape(address), timeout=10, what=what, until=until)


def _round(sites: list[FakeSite], job_id: str) -> int:
    """Both sites train one round; returns the model's size in bytes."""
    tasks = [s.next_task(federation_pb2.TASK_KIND_TRAIN) for s in sites]
    model = sites[0].download(job_id, tasks[0].model_version)
    for s, t in zip(sites, tasks, strict=True):
        assert s.upload(t, delta_like(model, 0.25)) == ACK
    return sum(a.nbytes for _, a in model)


def test_a_scrape_during_a_job_shows_sites_rounds_bytes_jobs_and_refusals(pki, tmp_path):
    """Over real HTTP, the figures move as a two-round job runs: connected sites, jobs by
    state, rounds and their seconds, bytes in and out by method, and a refused upload."""
    state = tmp_path / "state"
    agg, port = build(make_config(pki, state, metrics=MetricsConfig("127.0.0.1", 0)))
    op = Operator(pki, "alice", port)
    sites = [FakeSite(pki, name, port) for name in ("site-1", "site-2")]
    try:
        address = metrics_address(state)
        assert address == agg.metrics_server.address
        before = scrape(address)
        assert before.get(f"{A}_connected_sites") == 0
        assert all(before.get(f"{A}_jobs", state=s) == 0 for s in JOB_STATES)
        assert before.get(f"{A}_rounds_total", state="done") == 0
        assert before.get(f"{A}_round_seconds_count") == 0
        assert before.get(f"{A}_certificate_expiry_seconds") > 86400
        assert before.get(f"{A}_certificate_validity", **{f"{A}_certificate_validity": "valid"})
        for stage in ("advertise", "share_keys", "masked_input", "unmask"):
            assert before.get(f"{A}_secagg_dropouts_total", stage=stage) == 0

        for s in sites:
            s.connect()
        _scraped(address, "2 connected sites", lambda s: s.get(f"{A}_connected_sites") == 2)
        job_id = op.submit(tiny_spec())
        with pytest.raises(grpc.RpcError):  # an upload that does not start with its header
            sites[0].fed.Upload(iter([federation_pb2.UploadPart(chunk=b"x")]), timeout=10)
        nbytes = _round(sites, job_id)
        mid = _scraped(address, "round 1", lambda s: s.get(f"{A}_round_seconds_count") == 1)
        assert mid.get(f"{A}_connected_sites") == 2
        assert mid.get(f"{A}_jobs", state="running") == 1
        assert mid.get(f"{A}_rounds_total", state="done") == 1
        assert mid.get(f"{A}_refusals_total", event="update_refused", reason="malformed") == 1
        assert mid.get(f"{A}_received_bytes_total", method=UPLOAD) >= 2 * nbytes
        assert mid.get(f"{A}_sent_bytes_total", method=DOWNLOAD) >= nbytes

        _round(sites, job_id)
        for s in sites:
            t = s.next_task(federation_pb2.TASK_KIND_EVALUATE)
            s.report(t, metrics={"accuracy": 0.5, "loss": 0.1}, num_samples=10)
        done = _scraped(address, "the job done", lambda s: s.get(f"{A}_jobs", state="done") == 1)
        assert done.get(f"{A}_jobs", state="done") == 1
        assert done.get(f"{A}_jobs", state="running") == 0
        assert done.get(f"{A}_rounds_total", state="done") == 2
        assert done.get(f"{A}_round_seconds_count") == 2
        assert done.get(f"{A}_round_seconds_bucket", le="+Inf") == 2
        assert done.get(f"{A}_received_bytes_total", method=UPLOAD) > mid.get(
            f"{A}_received_bytes_total", method=UPLOAD
        )
        assert scrape(address).get(f"{A}_rounds_total", state="done") == 2  # counted once
    finally:
        for s in sites:
            s.disconnect()
            s.close()
        op.close()
        agg.stop(grace=0)


def test_a_metrics_address_that_cannot_be_bound_stops_the_start(pki, tmp_path):
    """A taken metrics port refuses the start naming metrics.listen, before anything serves;
    the state is closed and can be opened again at once."""
    state = tmp_path / "state"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = make_config(pki, state, metrics=MetricsConfig("127.0.0.1", taken.getsockname()[1]))
        with pytest.raises(ConfigError) as err:
            build(cfg)
    assert err.value.key == "metrics.listen"
    assert not (state / "address").exists() and not (state / ADDRESS_FILE).exists()
    agg, _ = build(make_config(pki, state))
    agg.stop(grace=0)


def test_config_reads_the_metrics_table(pki):
    """[metrics] is off when absent, read when set, and a wider address needs saying so."""
    assert parse_config(_toml(pki)).metrics is None
    cfg = parse_config(_toml(pki, '[metrics]\nlisten = "127.0.0.1:9464"'))
    assert cfg.metrics == MetricsConfig("127.0.0.1", 9464)
    with pytest.raises(ConfigError) as err:
        parse_config(_toml(pki, '[metrics]\nlisten = "0.0.0.0:9464"'))
    assert err.value.key == "metrics.listen"
    with pytest.raises(ConfigError) as err:
        parse_config(_toml(pki, '[metrics]\nlisen = "127.0.0.1:9464"'))
    assert err.value.key == "metrics.lisen"


def test_two_aggregators_in_one_process_keep_their_own_registries():
    """Each AggregatorMetrics has its own registry: counts in one never show in another."""
    one, two = AggregatorMetrics(), AggregatorMetrics()
    one.received(UPLOAD, 10)
    assert one.registry.get_sample_value(f"{A}_received_bytes_total", {"method": UPLOAD}) == 10
    assert two.registry.get_sample_value(f"{A}_received_bytes_total", {"method": UPLOAD}) is None


def _job(job_id: str) -> tuple[JobRow, ModelRow]:
    row = JobRow(
        id=job_id,
        spec=b"",
        signed_job=b"",
        signer_cert=b"",
        state="running",
        error="",
        submitted_by="alice",
        created=1.0,
    )
    return row, ModelRow(job=job_id, version_no=0, sha256="0" * 64, optimizer_state="", created=1)


def _note(event: str) -> AuditNote:
    return AuditNote(event=event, actor="aggregator", at=1.0)


def test_rounds_are_counted_once_and_failed_ones_once_their_job_has_ended(tmp_path):
    """A failed attempt that is retried is no failed round; a done round is counted when it
    completes, with its completed attempt's seconds; a job's last failed round once the job
    has failed; and no round twice however often it is scraped."""
    store = open_store(StoreConfig(), state_dir=tmp_path)
    registry = CollectorRegistry()
    registry.register(StateCollector(store, lambda: 0))

    def rounds(state: str) -> float | None:
        return registry.get_sample_value(f"{A}_rounds_total", {"state": state})

    try:
        store.add_job(*_job("j"), audit=_note("job_submitted"))
        store.start_round("j", 1, attempt=1, model_in="m", at=100.0, audit=_note("r"))
        store.set_round_state("j", 1, "failed", at=105.0)
        assert (rounds("done"), rounds("failed")) == (0, 0)  # the round may be retried
        store.start_round("j", 1, attempt=2, model_in="m", at=110.0, audit=_note("r"))
        model = ModelRow(job="j", version_no=1, sha256="1" * 64, optimizer_state="", created=113)
        store.complete_round("j", 1, model=model, metrics={}, audit=_note("done"))
        for _ in range(2):
            assert (rounds("done"), rounds("failed")) == (1, 0)
            assert registry.get_sample_value(f"{A}_round_seconds_sum") == pytest.approx(3.0)
            assert registry.get_sample_value(f"{A}_round_seconds_bucket", {"le": "2.5"}) == 0
            assert registry.get_sample_value(f"{A}_round_seconds_bucket", {"le": "5.0"}) == 1
        store.start_round("j", 2, attempt=1, model_in="1" * 64, at=120.0, audit=_note("r"))
        store.set_round_state("j", 2, "failed", at=130.0)
        assert rounds("failed") == 0
        store.set_job_state("j", "failed", error="gave up")
        for _ in range(2):
            assert (rounds("done"), rounds("failed"), rounds("cancelled")) == (1, 1, 0)
            assert registry.get_sample_value(f"{A}_round_seconds_count") == 1
        assert registry.get_sample_value(f"{A}_jobs", {"state": "failed"}) == 1
        assert registry.get_sample_value(f"{A}_jobs", {"state": "running"}) == 0
    finally:
        store.close()


def _secure_round(sites: set[str], told: list[tuple[str, int]]) -> SecureRound:
    return SecureRound.start(
        federation="f",
        job_id="j",
        round=1,
        rules=secagg.RoundRules(min_sites=3),
        shapes=[("w", (4,))],
        encoding=SecureEncoding(Mechanism.FIXED_POINT, dim=4, clip_range=1.0, bits=16),
        seed=b"\0" * 32,
        sites=sites,
        on_dropouts=lambda stage, n: told.append((stage.value, n)),
    )


def test_secagg_dropouts_are_told_per_stage_also_when_the_close_aborts():
    """Each stage's close tells how many sites asked for it did not answer, before a close
    with too few answers aborts the round."""
    told: list[tuple[str, int]] = []
    sr = _secure_round({"a", "b", "c", "d"}, told)
    for name in ("a", "b", "c"):  # d never advertises
        sr.server.keys[name] = secagg.AdvertisedKeys(bytes(32), bytes(32))
        sr.advertised[name] = (common_pb2.Envelope(), b"pem")
    tasks, _ = sr.close(secagg.ServerStage.ADVERTISE)
    assert set(tasks) == {"a", "b", "c"} and told == [("advertise", 1)]
    with pytest.raises(secagg.RoundAborted):  # nobody shared keys
        sr.close(secagg.ServerStage.SHARE_KEYS)
    assert told == [("advertise", 1), ("share_keys", 3)]


@pytest.mark.parametrize(
    ("stage", "asked", "answered"),
    [
        (secagg.ServerStage.CHECK_SHARES, "shared", "checked"),
        (secagg.ServerStage.MASKED_INPUT, "masking", "survivors"),
        (secagg.ServerStage.CONSISTENCY, "survivors", "signers"),
    ],
)
def test_each_stages_dropouts_are_its_asked_sites_less_its_answers(stage, asked, answered):
    """A stage's dropouts are the sites the stage before left in it, less those that answered."""
    sr = _secure_round(set(), [])
    getattr(sr.server, asked).update({"a", "b", "c", "d"})
    getattr(sr.server, answered).update({"b", "d"})
    assert sr.dropouts(stage) == 2
    unmask = _secure_round(set(), [])
    unmask.server.signers.update({"a", "b"})
    unmask.replies["a"] = secagg.UnmaskReply(seed_shares={}, key_shares={})
    assert unmask.dropouts(secagg.ServerStage.UNMASK) == 1
    assert unmask.dropouts(secagg.ServerStage.ADVERTISE) == 0  # the round's sites not known


def test_a_site_dropping_out_of_a_secure_round_is_counted_at_its_stage(pki, tmp_path):
    """A site that never answers the share check of a real SecAgg+ round over mTLS shows as
    one check_shares dropout on the aggregator's metrics."""
    from tests.aggregator.test_secagg import SITES, SecSite, finish, run_round, start

    agg, port = build(make_config(pki, tmp_path / "state"))
    made: list[SecSite] = []

    def site(name: str, **kw) -> SecSite:
        made.append(SecSite(pki, name, port, **kw))
        return made[-1]

    op = Operator(pki, "alice", port)
    try:
        sites, op, job_id, _, _ = start((site, op, tmp_path / "state"), round_timeout_s=3.0)
        assert [s.name for s in sites] == SITES
        run_round(sites, drop={"site-5": "check"})
        finish(sites, op, job_id)
        value = agg.metrics.registry.get_sample_value(
            f"{A}_secagg_dropouts_total", {"stage": "check_shares"}
        )
        assert value == 1
    finally:
        for s in made:
            s.disconnect()
            s.close()
        op.close()
        agg.stop(grace=0)


def test_the_certificate_figures_follow_a_sighup_reload(tmp_path):
    """After a TLS reload the endpoint reports the certificate now in force: one renewed for
    five days shows as expiring, with about five days left."""
    d = tmp_path / "pki"
    init_ca(d, federation=FEDERATION)
    issue(d, "aggregator", role=Role.AGGREGATOR, dns=["localhost"], ips=["127.0.0.1"])
    state = tmp_path / "state"
    agg, _ = build(make_config(d, state, metrics=MetricsConfig("127.0.0.1", 0)))
    try:
        address = metrics_address(state)
        validity = {f"{A}_certificate_validity": "expiring"}
        assert scrape(address).get(f"{A}_certificate_validity", **validity) == 0
        renewed = renew(d, (d / "aggregator.crt").read_bytes(), days=5)
        (d / "aggregator.crt").write_bytes(renewed)
        assert agg.reload_tls() is True
        after = scrape(address)
        assert after.get(f"{A}_certificate_validity", **validity) == 1
        assert after.get(f"{A}_certificate_expiry_seconds") == pytest.approx(5 * 86400, abs=120)
    finally:
        agg.stop(grace=0)


def test_without_an_endpoint_no_message_is_sized(pki, tmp_path):
    """With no [metrics], a round's uploads are not serialized again just to count bytes,
    while what the counters exist for (refusals) still counts."""
    agg, port = build(make_config(pki, tmp_path / "state"))
    op = Operator(pki, "alice", port)
    sites = [FakeSite(pki, name, port) for name in ("site-1", "site-2")]
    try:
        for s in sites:
            s.connect()
        job_id = op.submit(tiny_spec())
        assert _round(sites, job_id) > 0
        registry = agg.metrics.registry
        assert not registry.get_sample_value(f"{A}_received_bytes_total", {"method": UPLOAD})
        assert not registry.get_sample_value(f"{A}_sent_bytes_total", {"method": DOWNLOAD})
    finally:
        for s in sites:
            s.close()
        op.close()
        agg.stop(grace=0)
