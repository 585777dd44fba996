"""SecAgg+ rounds at the aggregator with fake sites over real mTLS (confide.secagg client math)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from structlog.testing import capture_logs

from aggregator.server import build
from confide import secagg
from confide.cli.jobs import format_job, job_summary
from confide.pki import Role, init_ca, issue
from confide.v1 import admin_pb2, common_pb2, federation_pb2
from confide.wire import canonical_bytes
from tests.aggregator.conftest import make_config
from tests.aggregator.fakes import ACK, FEDERATION, FakeSite, Operator
from tests.support.wait import wait_for

SITES = [f"site-{i}" for i in range(1, 6)]
D = 256
R, B = 1.0, 16
K = federation_pb2


@pytest.fixture(scope="module")
def pki5(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki5")
    init_ca(d, federation=FEDERATION)
    issue(d, "aggregator", role=Role.AGGREGATOR, dns=["localhost"], ips=["127.0.0.1"])
    for s in [*SITES, "site-x"]:
        issue(d, s, role=Role.SITE)
    issue(d, "alice", role=Role.OPERATOR)
    return d


@pytest.fixture
def fed(pki5, tmp_path):
    state = tmp_path / "state"
    agg, port = build(make_config(pki5, state))
    made: list = []

    def site(name: str, **kw) -> SecSite:
        made.append(SecSite(pki5, name, port, **kw))
        return made[-1]

    op = Operator(pki5, "alice", port)
    yield site, op, state
    for c in made:
        c.disconnect()
        c.close()
    op.close()
    agg.stop(grace=0)


def secure_spec(*, min_sites: int = 5, threshold: float = 3, neighbours: int = 4, **kw):
    spec = common_pb2.JobSpec(
        name="sec",
        rounds=1,
        min_sites=min_sites,
        round_timeout_s=20.0,
        model=common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_FIXED_DELTA, fixed_delta_params=D),
        dataset=common_pb2.DatasetSpec(name="tab", features=["a"], label="y", num_classes=2),
        training=common_pb2.TrainingSpec(
            local_epochs=1, batch_size=8, learning_rate=0.1, server_learning_rate=1.0, seed=3
        ),
        secure_aggregation=common_pb2.SecureAggregation(
            enabled=True,
            threshold=threshold,
            neighbours=neighbours,
            clip_range=R,
            bits=B,
            stage_timeout_s=kw.pop("stage_timeout_s", 1.5),
        ),
    )
    for k, v in kw.items():
        setattr(spec, k, v)
    return spec


class SecSite(FakeSite):
    """A fake site running the client side of SecAgg+ with a known quantized input."""

    def __init__(self, pki: Path, name: str, port: int, *, junk: bool = False) -> None:
        super().__init__(pki, name, port)
        rng = np.random.default_rng(abs(hash(name)) % 2**32)
        self.x = rng.integers(0, 2**B, size=D, dtype=np.uint32)
        self.junk = junk
        self.state: secagg.ClientState | None = None
        self.sent: dict[str, common_pb2.Envelope] = {}

    def secagg_send(self, task, stage, msg) -> federation_pb2.Ack:
        env = self.seal(stage, msg.SerializeToString(), job_id=task.job_id, round=task.round)
        self.sent[common_pb2.Stage.Name(stage)] = env
        return self.fed.SecAgg(env, timeout=10)

    def advertise(self, task) -> federation_pb2.Ack:
        rid = f"{FEDERATION}/{task.job_id}/{task.round}"
        self.state, keys = secagg.advertise(site_id=self.name, round_id=rid)
        rk = K.RoundKeys(
            cipher_public_key=keys.cipher_public_key,
            mask_public_key=keys.mask_public_key,
            task_id=task.task_id,
        )
        msg = K.AdvertiseKeys(
            num_samples=10,
            metrics={"eval_accuracy": 0.5, "eval_loss": 1.0, "eval_samples": 4.0},
            epsilon=0.25,
            task_id=task.task_id,
            keys=self.seal(
                common_pb2.STAGE_SECAGG_KEYS,
                rk.SerializeToString(),
                job_id=task.job_id,
                round=task.round,
            ),
        )
        return self.secagg_send(task, common_pb2.STAGE_ADVERTISE_KEYS, msg)

    def share(self, task) -> federation_pb2.Ack:
        assert self.state is not None
        roster = []
        for nb in task.share_keys.sites:
            keys = K.RoundKeys.FromString(nb.advertised.payload)
            digest = secagg.keys_digest(canonical_bytes(nb.advertised), nb.advertised.signature)
            roster.append(
                secagg.NeighbourKeys(
                    nb.site_id, keys.cipher_public_key, keys.mask_public_key, digest
                )
            )
        params = RULES.params(len(roster))
        assert task.share_keys.threshold == params.threshold
        self.state, shares = secagg.share_keys(self.state, roster, params=params)
        if self.junk:
            shares = {to: bytes(len(ct)) for to, ct in shares.items()}
        msg = K.ShareKeys(
            shares=[K.EncryptedShare(to_site=s, ciphertext=c) for s, c in shares.items()],
            task_id=task.task_id,
        )
        return self.secagg_send(task, common_pb2.STAGE_SHARE_KEYS, msg)

    def check(self, task) -> federation_pb2.Ack:
        assert self.state is not None
        got = {s.from_site: s.ciphertext for s in task.check_shares.shares}
        self.state, bad = secagg.check_shares(self.state, got, shared=task.check_shares.shared)
        msg = K.SharesChecked(
            task_id=task.task_id,
            rejected=[K.RejectedShare(from_site=s, reason=r.value) for s, r in bad.items()],
        )
        return self.secagg_send(task, common_pb2.STAGE_SHARES_CHECKED, msg)

    def mask(self, task) -> federation_pb2.Ack:
        assert self.state is not None
        excluded = [(p.a, p.b) for p in task.masked_input.excluded]
        self.state, y = secagg.masked_input(self.state, self.x, excluded=excluded)
        self.y = y
        return self.upload(task, [("masked", y)], stage=common_pb2.STAGE_MASKED_INPUT)

    def sign(self, task) -> federation_pb2.Ack:
        assert self.state is not None
        self.state, view = secagg.consistency(self.state, survivors=task.consistency.survivors)
        msg = K.ConsistencySignature(
            task_id=task.task_id, session_id=self.state.session, view_sha256=view
        )
        return self.secagg_send(task, common_pb2.STAGE_CONSISTENCY, msg)

    def unmask(self, task) -> federation_pb2.Ack:
        assert self.state is not None
        attest = []
        for env in task.unmask.signatures:
            sig = K.ConsistencySignature.FromString(env.payload)
            attest.append(secagg.Attestation(env.sender, sig.session_id, sig.view_sha256))
        self.state, rep = secagg.unmask(self.state, attestations=attest)
        msg = K.UnmaskShares(
            seed_shares=[K.RevealedShare(site_id=s, share=b) for s, b in rep.seed_shares.items()],
            key_shares=[K.RevealedShare(site_id=s, share=b) for s, b in rep.key_shares.items()],
            task_id=task.task_id,
        )
        return self.secagg_send(task, common_pb2.STAGE_UNMASK, msg)


STAGES = [
    (K.TASK_KIND_TRAIN, "advertise"),
    (K.TASK_KIND_SHARE_KEYS, "share"),
    (K.TASK_KIND_CHECK_SHARES, "check"),
    (K.TASK_KIND_MASKED_INPUT, "mask"),
    (K.TASK_KIND_CONSISTENCY, "sign"),
    (K.TASK_KIND_UNMASK, "unmask"),
]
RULES = secagg.job_rules(secure_spec())


def run_round(sites, *, drop: dict[str, str] | None = None, skip: dict[str, str] | None = None):
    """Drive every stage; ``drop`` maps site -> the stage it never answers (and after);
    ``skip`` maps site -> the stage whose task it never gets (left out by the server)."""
    drop = drop or {}
    skip = skip or {}
    alive = list(sites)
    for kind, step in STAGES:
        nxt = []
        for s in alive:
            if drop.get(s.name) == step or skip.get(s.name) == step:
                continue
            task = s.next_task(kind)
            assert getattr(s, step)(task) == ACK
            nxt.append(s)
        alive = nxt


def expected_model(model0, in_sum):
    total = np.zeros(D, dtype=np.uint32)
    for s in in_sum:
        total += s.x
    mean = secagg.dequantize(total, n=len(in_sum), clip_range=R, bits=B) / len(in_sum)
    return (model0.astype(np.float64) + mean).astype(np.float32)


def wait_job(op, job_id, timeout=30.0):
    return wait_for(
        lambda: op.admin.GetJob(admin_pb2.JobRef(job_id=job_id)),
        until=lambda st: st.state in (admin_pb2.JOB_STATE_DONE, admin_pb2.JOB_STATE_FAILED),
        timeout=timeout,
        what=f"job {job_id} to finish",
    )


def start(fed, n=5, junk=(), **kw):
    site, op, state = fed
    sites = [site(n_, junk=n_ in junk) for n_ in SITES[:n]]
    for s in sites:
        s.connect()
    job_id = op.submit(secure_spec(**kw))
    first = sites[0].next_task(K.TASK_KIND_TRAIN)
    sites[0].tasks.queue.appendleft(first)
    model0 = sites[0].download(job_id, first.model_version)[0][1]
    return sites, op, job_id, model0, state


def finish(sites, op, job_id):
    for s in sites:
        t = s.next_task(K.TASK_KIND_EVALUATE)
        s.report(t, metrics={"accuracy": 1.0, "loss": 0.0}, num_samples=1)
    st = wait_job(op, job_id)
    assert st.state == admin_pb2.JOB_STATE_DONE, st.error
    return st, sites[0].download(job_id, st.model_version)[0][1]


def test_secure_round_equals_the_plaintext_modular_sum(fed):
    """A secure round's new model is init + dequantize(sum of quantized inputs) / n exactly."""
    sites, op, job_id, model0, _ = start(fed)
    run_round(sites)
    st, model1 = finish(sites, op, job_id)
    np.testing.assert_array_equal(model1, expected_model(model0, sites))
    rnd = st.rounds[0]
    assert rnd.state == "done" and rnd.aggregated == 5
    assert rnd.accuracy == pytest.approx(0.5) and rnd.eval_samples == 20
    assert st.epsilon_by_site["site-1"] == pytest.approx(0.25)


@pytest.mark.parametrize("stage", ["advertise", "share", "check", "mask", "sign", "unmask"])
def test_a_dropout_at_each_stage_still_completes_with_the_survivors_sum(fed, stage):
    """One site never answering a stage is dropped at its deadline; the sum is the survivors'."""
    sites, op, job_id, model0, _ = start(fed, round_timeout_s=3.0)
    run_round(sites, drop={"site-5": stage})
    st, model1 = finish(sites, op, job_id)
    in_sum = sites if stage in ("sign", "unmask") else sites[:4]  # its masked input is in
    np.testing.assert_array_equal(model1, expected_model(model0, in_sum))
    assert st.rounds[0].aggregated == len(in_sum)


def test_a_dropped_task_stream_counts_as_a_dropout_without_waiting(fed):
    """A site whose stream ends during a stage is dropped at once, not at the stage deadline."""
    sites, op, job_id, model0, _ = start(fed, stage_timeout_s=30.0)
    for s in sites[:4]:
        assert s.advertise(s.next_task(K.TASK_KIND_TRAIN)) == ACK
    sites[4].next_task(K.TASK_KIND_TRAIN)
    sites[4].disconnect()
    t0 = time.monotonic()
    for kind, step in STAGES[1:]:
        for s in sites[:4]:
            assert getattr(s, step)(s.next_task(kind)) == ACK
    assert time.monotonic() - t0 < 10
    _, model1 = finish(sites[:4], op, job_id)
    np.testing.assert_array_equal(model1, expected_model(model0, sites[:4]))


def test_fewer_than_t_aborts_the_attempt_and_the_round_is_retried(fed):
    """Only 2 of 5 sites advertise (t=3): the attempt fails cleanly, the retry completes."""
    sites, op, job_id, model0, _ = start(fed, round_timeout_s=3.0)
    for s in sites[:2]:
        assert s.advertise(s.next_task(K.TASK_KIND_TRAIN)) == ACK
    for s in sites[2:]:
        s.next_task(K.TASK_KIND_TRAIN)  # never answered
    retry = [s.next_task(K.TASK_KIND_TRAIN, timeout=30) for s in sites]
    assert {t.task_id.split("/")[2] for t in retry} == {"2"}
    for s, t in zip(sites, retry, strict=True):
        s.tasks.queue.appendleft(t)
    run_round(sites)
    _st, model1 = finish(sites, op, job_id)
    np.testing.assert_array_equal(model1, expected_model(model0, sites))
    events = [e for e in op.admin.ListAudit(admin_pb2.AuditRequest()).entries]
    assert any(e.event == "round_failed" and e.reason == "round_aborted" for e in events)


def _refused(call, reason: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.details() == reason


def test_replayed_wrong_stage_and_unselected_messages_are_refused(fed):
    """A repeated advertise, a stage-1 message in stage 0, and a non-selected site are refused."""
    site, op, _ = fed
    sites, op, job_id, _, _ = start(fed)
    t = sites[0].next_task(K.TASK_KIND_TRAIN)
    assert sites[0].advertise(t) == ACK
    env = sites[0].sent["STAGE_ADVERTISE_KEYS"]
    _refused(lambda: sites[0].fed.SecAgg(env, timeout=10), "replayed")
    early = sites[1].seal(
        common_pb2.STAGE_SHARE_KEYS, K.ShareKeys().SerializeToString(), job_id=job_id, round=1
    )
    _refused(lambda: sites[1].fed.SecAgg(early, timeout=10), "wrong_stage")
    x = site("site-x")
    x.connect()
    _refused(lambda: x.advertise(t), "not_selected")
    junk = sites[2].seal(common_pb2.STAGE_ADVERTISE_KEYS, b"\xff\xff", job_id=job_id, round=1)
    _refused(lambda: sites[2].fed.SecAgg(junk, timeout=10), "malformed")
    events = {e.event for e in op.admin.ListAudit(admin_pb2.AuditRequest()).entries}
    assert "secagg_refused" in events


def test_no_site_input_or_masked_input_reaches_the_store_blobs_or_logs(fed):
    """After a secure round, no 64-byte window of any x_u or y_u is in SQLite, blobs or logs."""
    with capture_logs() as logs:
        sites, op, job_id, _, state = start(fed)
        run_round(sites)
        finish(sites, op, job_id)
    haystack = [str(logs).encode()]
    for p in state.rglob("*"):
        if p.is_file():
            haystack.append(p.read_bytes())
    data = b"".join(haystack)
    assert data  # the scan saw the database and the blobs
    for s in sites:
        for vec in (s.x, s.y):
            raw = vec.astype("<u4").tobytes()
            for off in range(0, len(raw) - 64, 64):
                assert raw[off : off + 64] not in data, f"{s.name} vector found"


def test_advertised_keys_with_a_non_finite_epsilon_are_refused(fed):
    """AdvertiseKeys carrying a NaN epsilon or a negative metric is refused before it counts."""
    sites, _op, _job_id, _, _ = start(fed)
    t = sites[0].next_task(K.TASK_KIND_TRAIN)
    keys = _round_keys(sites[0], t)
    nan = K.AdvertiseKeys(epsilon=np.nan, task_id=t.task_id, keys=keys)
    _refused(lambda: sites[0].secagg_send(t, common_pb2.STAGE_ADVERTISE_KEYS, nan), "non_finite")
    neg = K.AdvertiseKeys(task_id=t.task_id, keys=keys)
    neg.metrics["eval_samples"] = -1.0
    _refused(lambda: sites[0].secagg_send(t, common_pb2.STAGE_ADVERTISE_KEYS, neg), "malformed")
    assert sites[0].advertise(t) == ACK


def _round_keys(site: SecSite, task, *, task_id=None, signer=None) -> common_pb2.Envelope:
    rk = K.RoundKeys(
        cipher_public_key=b"c" * 32, mask_public_key=b"m" * 32, task_id=task_id or task.task_id
    )
    return site.seal(
        common_pb2.STAGE_SECAGG_KEYS,
        rk.SerializeToString(),
        job_id=task.job_id,
        round=task.round,
        signer=signer,
    )


def test_round_keys_not_signed_by_the_sender_or_for_another_task_are_refused(fed):
    """The RoundKeys inside AdvertiseKeys must be the sender's signature over this task."""
    sites, _op, _job_id, _, _ = start(fed)
    t = sites[0].next_task(K.TASK_KIND_TRAIN)
    forged = _round_keys(sites[0], t, signer=sites[1].identity.signing_key)
    msg = K.AdvertiseKeys(task_id=t.task_id, keys=forged)
    _refused(lambda: sites[0].secagg_send(t, common_pb2.STAGE_ADVERTISE_KEYS, msg), "bad_signature")
    other = K.AdvertiseKeys(task_id=t.task_id, keys=_round_keys(sites[0], t, task_id="x/1/1/t"))
    _refused(lambda: sites[0].secagg_send(t, common_pb2.STAGE_ADVERTISE_KEYS, other), "replayed")
    missing = K.AdvertiseKeys(task_id=t.task_id)
    _refused(lambda: sites[0].secagg_send(t, common_pb2.STAGE_ADVERTISE_KEYS, missing), "malformed")
    assert sites[0].advertise(t) == ACK


def test_advertised_keys_of_an_earlier_attempt_are_refused(fed):
    """A late AdvertiseKeys answering attempt 1's TRAIN task is REPLAYED in attempt 2."""
    sites, op, _job_id, _, _ = start(fed, round_timeout_s=2.0)
    for s in sites[:2]:
        assert s.advertise(s.next_task(K.TASK_KIND_TRAIN)) == ACK
    stale = sites[2].next_task(K.TASK_KIND_TRAIN)  # answered only after the attempt failed
    for s in sites[3:]:
        s.next_task(K.TASK_KIND_TRAIN)
    retry = [s.next_task(K.TASK_KIND_TRAIN, timeout=30) for s in sites]
    assert retry[2].task_id != stale.task_id and retry[2].round == stale.round
    _refused(lambda: sites[2].advertise(stale), "replayed")
    for s, t in zip(sites, retry, strict=True):
        assert s.advertise(t) == ACK
    events = [(e.event, e.reason) for e in op.admin.ListAudit(admin_pb2.AuditRequest()).entries]
    assert ("secagg_refused", "replayed") in events


def test_junk_shares_from_one_site_drop_it_and_the_round_completes(fed):
    """A site whose encrypted shares are junk is left out by the share check: the round
    completes with the honest sites, the audit names the sender and job status shows it
    failed with bad_signature, and nobody else is charged a retry (issue 9.6)."""
    sites, op, job_id, model0, _ = start(fed, junk={"site-5"})
    run_round(sites, skip={"site-5": "mask"})
    st, model1 = finish(sites, op, job_id)
    np.testing.assert_array_equal(model1, expected_model(model0, sites[:4]))
    (rnd,) = st.rounds
    assert rnd.state == "done" and rnd.aggregated == 4
    rows = {s.site_id: s for s in rnd.sites}
    assert rows["site-5"].outcome == common_pb2.OUTCOME_FAILED
    assert rows["site-5"].reason == "bad_signature"
    assert "site-5: bad_signature" in format_job(st)  # what `confide job status` prints
    assert job_summary(st)["rounds"][0]["failed"] == {"site-5": "bad_signature"}
    audit = op.admin.ListAudit(admin_pb2.AuditRequest()).entries
    named = {(e.actor, e.detail) for e in audit if e.event == "secagg_share_rejected"}
    assert named == {(s.name, "share from site-5") for s in sites[:4]}
    assert not any(e.event == "round_failed" for e in audit)


def test_other_sites_get_only_signed_keys_never_the_advertised_figures(fed):
    """The SHARE_KEYS task forwards each site's RoundKeys envelope and certificate only:
    no sample count, metric or epsilon of another site reaches a site (issue 8.5)."""
    sites, _op, _job_id, _, _ = start(fed)
    for s in sites:
        assert s.advertise(s.next_task(K.TASK_KIND_TRAIN)) == ACK
    task = sites[0].next_task(K.TASK_KIND_SHARE_KEYS)
    assert [e.site_id for e in task.share_keys.sites] == SITES
    for e in task.share_keys.sites:
        assert e.advertised.stage == common_pb2.STAGE_SECAGG_KEYS
        keys = K.RoundKeys.FromString(e.advertised.payload)
        assert keys.SerializeToString() == e.advertised.payload  # nothing but RoundKeys
    assert task.share_keys.threshold == RULES.params(5).threshold
    raw = task.SerializeToString()
    for s in sites:
        adv = K.AdvertiseKeys.FromString(s.sent["STAGE_ADVERTISE_KEYS"].payload)
        figures = adv.SerializeToString().replace(adv.keys.SerializeToString(), b"")
        assert figures and figures not in raw
        assert b"eval_accuracy" not in raw


def test_a_consistency_signature_on_another_view_is_refused(fed):
    """A survivor signing a view other than the server's is refused (malformed) and not
    forwarded; the round still completes with the others' signatures."""
    sites, op, job_id, model0, _ = start(fed)
    for kind, step in STAGES[:4]:
        for s in sites:
            assert getattr(s, step)(s.next_task(kind)) == ACK
    t = sites[4].next_task(K.TASK_KIND_CONSISTENCY)
    bad = K.ConsistencySignature(task_id=t.task_id, session_id=b"s" * 32, view_sha256=b"v" * 32)
    _refused(lambda: sites[4].secagg_send(t, common_pb2.STAGE_CONSISTENCY, bad), "malformed")
    for s in sites[:4]:
        assert s.sign(s.next_task(K.TASK_KIND_CONSISTENCY)) == ACK
    for s in sites[:4]:
        task = s.next_task(K.TASK_KIND_UNMASK)
        assert sorted(e.sender for e in task.unmask.signatures) == SITES[:4]
        assert s.unmask(task) == ACK
    _st, model1 = finish(sites, op, job_id)
    np.testing.assert_array_equal(model1, expected_model(model0, sites))


@pytest.mark.parametrize(
    ("threshold", "neighbours", "min_sites"), [(0.51, 0, 5), (1.0, 0, 5), (3, 0, 6)]
)
def test_unsafe_secure_aggregation_settings_are_refused_at_submit(
    fed, threshold, neighbours, min_sites
):
    """A fraction at or below (1 + gamma)/2 or of 1.0, or a count t with 2t <= n on the
    complete graph, is refused at submit naming the threshold key (issue 8.3)."""
    _site, op, _ = fed
    spec = secure_spec(threshold=threshold, neighbours=neighbours, min_sites=min_sites)
    with pytest.raises(grpc.RpcError) as err:
        op.submit(spec)
    assert err.value.details() == "invalid_value"
    audit = op.admin.ListAudit(admin_pb2.AuditRequest()).entries
    assert any("secure_aggregation.threshold" in e.detail for e in audit)
