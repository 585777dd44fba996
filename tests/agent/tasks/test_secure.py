"""The site side of SecAgg+: stage 0 after training, verified keys and signatures, refusals.

site-1 is the agent under test; site-2 and site-3 are played here with the pure client code
and their real certificates and signing keys, so every envelope is genuinely signed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest

from agent.tasks.runner import TaskOutcome, TaskRunner
from agent.tasks.secure import install
from confide import secagg
from confide.pki import Identity
from confide.v1 import common_pb2, federation_pb2
from confide.wire import canonical_bytes, decode_tensors, seal
from tests.agent.conftest import FEDERATION, Pki, job_spec, signed_task
from tests.agent.fakes import FakeAggregator, FakeTransport

K = federation_pb2
RID = f"{FEDERATION}/job-1/1"


class RecordingTransport(FakeTransport):
    """A fake transport that also keeps the SecAgg+ envelopes the site sends."""

    def __init__(self, agg: FakeAggregator) -> None:
        super().__init__(agg)
        self.secagg_sent: list[common_pb2.Envelope] = []

    def secagg(self, envelope):
        self.secagg_sent.append(envelope)
        return K.Ack()


def _spec() -> common_pb2.JobSpec:
    spec = job_spec()
    spec.min_sites = 3  # SecAgg+ needs 3 sites; the aggregator refuses fewer at submit
    spec.secure_aggregation.CopyFrom(
        common_pb2.SecureAggregation(enabled=True, threshold=2, clip_range=1.0, bits=16)
    )
    return spec


PARAMS = secagg.job_params(_spec(), n=3)


def _task(pki: Pki, kind: int, *, attempt: int = 1, **payload) -> K.Task:
    task = signed_task(
        pki.alice, kind=kind, spec=_spec(), task_id=f"job-1/1/{attempt}/{kind}", attempt=attempt
    )
    for k, v in payload.items():
        getattr(task, k).CopyFrom(v)
    return task


def _seal(who: Identity, stage: int, msg, *, signer=None) -> common_pb2.Envelope:
    return seal(
        signing_key=signer or who.signing_key,
        federation=FEDERATION,
        sender=who.info.name,
        stage=stage,
        payload=msg.SerializeToString(),
        now=time.time(),
        job_id="job-1",
        round=1,
    )


@dataclass
class Peer:
    """Another site of the round, run with the pure client code and its real identity."""

    who: Identity
    state: secagg.ClientState
    entry: K.NeighbourKeys

    @classmethod
    def make(cls, who: Identity, *, signer=None, attempt: int = 1) -> Peer:
        state, keys = secagg.advertise(site_id=who.info.name, round_id=RID)
        rk = K.RoundKeys(
            cipher_public_key=keys.cipher_public_key,
            mask_public_key=keys.mask_public_key,
            task_id=f"job-1/1/{attempt}/{K.TASK_KIND_TRAIN}",
            attempt=attempt,
        )
        env = _seal(who, common_pb2.STAGE_SECAGG_KEYS, rk, signer=signer)
        return cls(
            who,
            state,
            K.NeighbourKeys(site_id=who.info.name, advertised=env, certificate=who.cert_pem),
        )

    @property
    def name(self) -> str:
        return self.who.info.name


def _roster_entry(nb: K.NeighbourKeys) -> secagg.NeighbourKeys:
    keys = K.RoundKeys.FromString(nb.advertised.payload)
    env = nb.advertised
    digest = secagg.keys_digest(canonical_bytes(env), env.signature)
    return secagg.NeighbourKeys(nb.site_id, keys.cipher_public_key, keys.mask_public_key, digest)


@pytest.fixture
def secure(runner: TaskRunner, aggregator: FakeAggregator, pki: Pki):
    """A runner with SecAgg+ installed that has trained and advertised round 1."""
    install(runner)
    transport = RecordingTransport(aggregator)
    assert runner.run(_task(pki, K.TASK_KIND_TRAIN), transport) is TaskOutcome.OK
    yield runner, transport
    runner.stop_workers()


def _last_report(agg: FakeAggregator) -> K.TaskReport:
    return K.TaskReport.FromString(agg.reports[-1].payload)


def _own_entry(pki: Pki, transport: RecordingTransport) -> K.NeighbourKeys:
    """site-1's forwarded keys entry, as the server would build it from its AdvertiseKeys."""
    env = transport.secagg_sent[0]
    assert env.stage == common_pb2.STAGE_ADVERTISE_KEYS
    adv = K.AdvertiseKeys.FromString(env.payload)
    return K.NeighbourKeys(site_id="site-1", advertised=adv.keys, certificate=pki.site.cert_pem)


def _share_keys(pki: Pki, transport, peers, *, threshold=None, drop_self=False) -> K.Task:
    sites = [] if drop_self else [_own_entry(pki, transport)]
    sites += [p.entry for p in peers]
    req = K.ShareKeysRequest(
        sites=sites,
        threshold=PARAMS.threshold if threshold is None else threshold,
        num_selected=len(sites),
    )
    return _task(pki, K.TASK_KIND_SHARE_KEYS, share_keys=req)


def _refused(runner, task, transport, agg, reason: str) -> None:
    sent = len(transport.secagg_sent)
    assert runner.run(task, transport) is TaskOutcome.REFUSED
    assert _last_report(agg).reason == reason
    assert len(transport.secagg_sent) == sent  # nothing left the site


def test_training_a_secure_job_advertises_keys_instead_of_uploading(secure, aggregator):
    """A secure TRAIN ends in a signed AdvertiseKeys with metrics, and no plaintext upload;
    the part forwarded to other sites is a separately signed RoundKeys with keys only."""
    _, transport = secure
    (env,) = transport.secagg_sent
    adv = K.AdvertiseKeys.FromString(env.payload)
    assert adv.metrics["eval_samples"] == 5.0
    assert adv.keys.stage == common_pb2.STAGE_SECAGG_KEYS and adv.keys.sender == "site-1"
    forwarded = K.RoundKeys.FromString(adv.keys.payload)
    assert len(forwarded.cipher_public_key) == 32 and forwarded.task_id == adv.task_id
    assert {f.name for f, _ in forwarded.ListFields()} == {
        "cipher_public_key",
        "mask_public_key",
        "task_id",
        "attempt",
    }
    assert forwarded.attempt == 1
    assert aggregator.uploads == []


def test_keys_signed_by_another_key_are_refused(secure, pki, aggregator):
    """A site's keys signed by another key than its certificate's are refused."""
    runner, transport = secure
    forged = Peer.make(pki.other_site, signer=pki.alice.signing_key)
    task = _share_keys(pki, transport, [forged, Peer.make(pki.third_site)])
    _refused(runner, task, transport, aggregator, "bad_signature")


def test_keys_with_a_certificate_for_another_site_are_refused(secure, pki, aggregator):
    """A site presented with some other site's certificate is refused."""
    runner, transport = secure
    peer = Peer.make(pki.other_site)
    peer.entry.certificate = pki.third_site.cert_pem
    task = _share_keys(pki, transport, [peer, Peer.make(pki.third_site)])
    _refused(runner, task, transport, aggregator, "bad_certificate")


def test_keys_of_another_attempt_are_refused(secure, pki, aggregator):
    """Keys a site signed for attempt 2 cannot enter this site's attempt-1 round."""
    runner, transport = secure
    task = _share_keys(
        pki, transport, [Peer.make(pki.other_site, attempt=2), Peer.make(pki.third_site)]
    )
    _refused(runner, task, transport, aggregator, "replayed")


def test_a_threshold_other_than_the_jobs_is_refused(secure, pki, aggregator):
    """The server may not pick t, not even a higher one: it is the job's function of n."""
    runner, transport = secure
    peers = [Peer.make(pki.other_site), Peer.make(pki.third_site)]
    _refused(
        runner,
        _share_keys(pki, transport, peers, threshold=3),
        transport,
        aggregator,
        "unsafe_request",
    )


def test_a_roster_without_this_sites_keys_or_too_small_is_refused(secure, pki, aggregator):
    """A key list that leaves this site out, or a two-site round, is refused."""
    runner, transport = secure
    peers = [Peer.make(pki.other_site), Peer.make(pki.third_site)]
    _refused(
        runner,
        _share_keys(pki, transport, peers, drop_self=True),
        transport,
        aggregator,
        "unsafe_request",
    )
    _refused(
        runner, _share_keys(pki, transport, peers[:1]), transport, aggregator, "unsafe_request"
    )


def _through_masking(runner, pki, transport, aggregator, *, junk: bool = False):
    """Run stages 1-3 for site-1 with two peers; returns the peers with their states."""
    peers = [Peer.make(pki.other_site), Peer.make(pki.third_site)]
    assert runner.run(_share_keys(pki, transport, peers), transport) is TaskOutcome.OK
    shares = K.ShareKeys.FromString(transport.secagg_sent[-1].payload)
    assert sorted(s.to_site for s in shares.shares) == ["site-2", "site-3"]
    roster = [_roster_entry(_own_entry(pki, transport)), *(_roster_entry(p.entry) for p in peers)]
    out = {}
    for p in peers:
        p.state, out[p.name] = secagg.share_keys(p.state, roster, params=PARAMS)
    to_me = [
        K.EncryptedShareFrom(
            from_site=p.name,
            ciphertext=b"junk" if junk and p.name == "site-3" else out[p.name]["site-1"],
        )
        for p in peers
    ]
    everyone = ["site-1", "site-2", "site-3"]
    check = K.CheckSharesRequest(shares=to_me, shared=everyone)
    assert runner.run(_task(pki, K.TASK_KIND_CHECK_SHARES, check_shares=check), transport) is (
        TaskOutcome.OK
    )
    checked = K.SharesChecked.FromString(transport.secagg_sent[-1].payload)
    mine = {s.to_site: s.ciphertext for s in shares.shares}
    excluded = []
    for p in peers:
        got = {"site-1": mine[p.name], **{q.name: out[q.name][p.name] for q in peers if q is not p}}
        p.state, _ = secagg.check_shares(p.state, got, shared=everyone)
    if junk:
        excluded = [K.SitePair(a="site-1", b="site-3")]
    for p in peers:
        pairs = [(e.a, e.b) for e in excluded]
        p.state, _ = secagg.masked_input(p.state, np.zeros(6, np.uint32), excluded=pairs)
    req = K.MaskedInputRequest(excluded=excluded)
    assert runner.run(_task(pki, K.TASK_KIND_MASKED_INPUT, masked_input=req), transport) is (
        TaskOutcome.OK
    )
    return peers, checked


def _sign(p: Peer, survivors) -> common_pb2.Envelope:
    p.state, view = secagg.consistency(p.state, survivors=survivors)
    sig = K.ConsistencySignature(
        task_id=f"job-1/1/1/{K.TASK_KIND_CONSISTENCY}",
        session_id=p.state.session,
        view_sha256=view,
        attempt=1,
    )
    return _seal(p.who, common_pb2.STAGE_CONSISTENCY, sig)


def test_full_stages_reveal_only_with_a_quorum_of_valid_signatures(secure, pki, aggregator):
    """After masking and signing, unmask needs Q = 2 valid signatures on site-1's own view:
    forged ones, ones by strangers and ones on another view do not count."""
    runner, transport = secure
    peers, checked = _through_masking(runner, pki, transport, aggregator)
    assert not checked.rejected
    (up,) = aggregator.uploads
    hdr = K.UpdateHeader.FromString(up.header.payload)
    ((name, y),) = decode_tensors(hdr.blob, up.data)
    assert name == "masked" and y.dtype == np.uint32 and y.shape == (6,)
    everyone = ["site-1", "site-2", "site-3"]
    req = K.ConsistencyRequest(survivors=everyone)
    assert runner.run(_task(pki, K.TASK_KIND_CONSISTENCY, consistency=req), transport) is (
        TaskOutcome.OK
    )
    own = transport.secagg_sent[-1]
    assert own.stage == common_pb2.STAGE_CONSISTENCY
    good = _sign(peers[0], everyone)
    forged = _sign(peers[1], everyone)
    forged.signature = bytes(64)
    other_view = _seal(
        peers[1].who,
        common_pb2.STAGE_CONSISTENCY,
        K.ConsistencySignature(
            task_id=f"job-1/1/1/{K.TASK_KIND_CONSISTENCY}",
            session_id=b"s" * 32,
            view_sha256=b"v" * 32,
            attempt=1,
        ),
    )
    late_sig = K.ConsistencySignature.FromString(forged.payload)
    late_sig.attempt = 2  # a valid signature on this view, of another attempt
    late = _seal(peers[1].who, common_pb2.STAGE_CONSISTENCY, late_sig)
    for bad in ([good], [forged, good], [other_view, good], [good, good], [late, good]):
        task = _task(pki, K.TASK_KIND_UNMASK, unmask=K.UnmaskRequest(signatures=bad))
        _refused(runner, task, transport, aggregator, "unsafe_request")
    ok = _task(pki, K.TASK_KIND_UNMASK, unmask=K.UnmaskRequest(signatures=[own, good]))
    assert runner.run(ok, transport) is TaskOutcome.OK
    reply = K.UnmaskShares.FromString(transport.secagg_sent[-1].payload)
    assert {s.site_id for s in reply.seed_shares} == set(everyone) and not reply.key_shares
    again = _task(pki, K.TASK_KIND_UNMASK, unmask=K.UnmaskRequest(signatures=[own, good]))
    _refused(runner, again, transport, aggregator, "unsafe_request")  # state forgotten


def test_a_junk_share_is_reported_and_the_site_masks_without_that_pair(secure, pki, aggregator):
    """A share that does not decrypt names its sender (bad_signature); the site still masks."""
    runner, transport = secure
    _, checked = _through_masking(runner, pki, transport, aggregator, junk=True)
    assert [(r.from_site, r.reason) for r in checked.rejected] == [("site-3", "bad_signature")]
    assert len(aggregator.uploads) == 1


def test_masking_without_excluding_a_rejected_pair_is_refused(secure, pki, aggregator):
    """If the server hides this site's rejection, the site refuses to mask."""
    runner, transport = secure
    peers = [Peer.make(pki.other_site), Peer.make(pki.third_site)]
    assert runner.run(_share_keys(pki, transport, peers), transport) is TaskOutcome.OK
    check = K.CheckSharesRequest(
        shares=[K.EncryptedShareFrom(from_site=p.name, ciphertext=b"junk") for p in peers],
        shared=["site-1", "site-2", "site-3"],
    )
    assert runner.run(_task(pki, K.TASK_KIND_CHECK_SHARES, check_shares=check), transport) is (
        TaskOutcome.OK
    )
    task = _task(pki, K.TASK_KIND_MASKED_INPUT, masked_input=K.MaskedInputRequest())
    assert runner.run(task, transport) is TaskOutcome.REFUSED
    assert _last_report(aggregator).reason == "unsafe_request"
    assert aggregator.uploads == []


def test_a_stage_task_without_round_state_is_refused(runner, pki, aggregator):
    """SHARE_KEYS for a round this site never advertised in is refused, not crashed."""
    install(runner)
    transport = RecordingTransport(aggregator)
    req = K.ShareKeysRequest(threshold=2)
    outcome = runner.run(_task(pki, K.TASK_KIND_SHARE_KEYS, share_keys=req), transport)
    assert outcome is TaskOutcome.REFUSED
    assert _last_report(aggregator).reason == "unsafe_request"


def test_stage_messages_name_the_task_they_answer(secure, pki, aggregator):
    """AdvertiseKeys and ShareKeys carry the id of the task (round attempt) they answer."""
    runner, transport = secure
    keys = K.AdvertiseKeys.FromString(transport.secagg_sent[0].payload)
    assert keys.task_id == _task(pki, K.TASK_KIND_TRAIN).task_id
    task = _share_keys(pki, transport, [Peer.make(pki.other_site), Peer.make(pki.third_site)])
    assert runner.run(task, transport) is TaskOutcome.OK
    assert K.ShareKeys.FromString(transport.secagg_sent[1].payload).task_id == task.task_id


def test_a_stage_task_of_another_attempt_is_refused(secure, pki, aggregator):
    """A SHARE_KEYS task of attempt 2 is refused by a site that advertised in attempt 1."""
    runner, transport = secure
    req = K.ShareKeysRequest(threshold=2)
    task = _task(pki, K.TASK_KIND_SHARE_KEYS, attempt=2, share_keys=req)
    assert runner.run(task, transport) is TaskOutcome.REFUSED
    assert _last_report(aggregator).reason == "replayed"
    assert len(transport.secagg_sent) == 1  # nothing but the advertisement left the site


def test_the_attempt_field_not_the_task_id_names_a_tasks_attempt(secure, pki, aggregator):
    """A stage task whose id reads like the advertised attempt but whose attempt field says 2
    is refused replayed: the site never parses task ids."""
    runner, transport = secure
    task = _task(pki, K.TASK_KIND_SHARE_KEYS, share_keys=K.ShareKeysRequest(threshold=2))
    task.attempt = 2
    assert task.task_id == _task(pki, K.TASK_KIND_SHARE_KEYS).task_id
    assert runner.run(task, transport) is TaskOutcome.REFUSED
    assert _last_report(aggregator).reason == "replayed"
    assert len(transport.secagg_sent) == 1
