"""The site side of SecAgg+: stage 0 after training, verified neighbour keys, unmask refusals."""

from __future__ import annotations

import time

import numpy as np
import pytest

from agent.secure import install
from agent.tasks import TaskOutcome, TaskRunner
from confide import secagg
from confide.pki import Identity
from confide.v1 import common_pb2, federation_pb2
from confide.wire import decode_tensors, seal
from tests.agent.conftest import FEDERATION, Pki, job_spec, signed_task
from tests.agent.fakes import FakeAggregator, FakeTransport

K = federation_pb2


class RecordingTransport(FakeTransport):
    """A fake transport that also keeps the SecAgg+ envelopes the site sends."""

    def __init__(self, agg: FakeAggregator) -> None:
        super().__init__(agg)
        self.secagg_sent: list[common_pb2.Envelope] = []

    def secagg(self, envelope):
        self.secagg_sent.append(envelope)
        return K.Ack(accepted=True)


def _spec() -> common_pb2.JobSpec:
    spec = job_spec()
    spec.min_sites = 3  # SecAgg+ needs 3 sites; the aggregator refuses fewer at submit
    spec.secure_aggregation.CopyFrom(
        common_pb2.SecureAggregation(enabled=True, threshold=2, clip_range=1.0, bits=16)
    )
    return spec


def _task(pki: Pki, kind: int, *, attempt: int = 1, **payload) -> K.Task:
    task = signed_task(pki.alice, kind=kind, spec=_spec(), task_id=f"job-1/1/{attempt}/{kind}")
    for k, v in payload.items():
        getattr(task, k).CopyFrom(v)
    return task


def _advertised(who: Identity, keys: secagg.AdvertisedKeys, *, signer=None) -> common_pb2.Envelope:
    msg = K.AdvertiseKeys(
        cipher_public_key=keys.cipher_public_key, mask_public_key=keys.mask_public_key
    )
    return seal(
        signing_key=signer or who.signing_key,
        federation=FEDERATION,
        sender=who.info.name,
        stage=common_pb2.STAGE_ADVERTISE_KEYS,
        payload=msg.SerializeToString(),
        now=time.time(),
        job_id="job-1",
        round=1,
    )


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


def _site1_keys(transport: RecordingTransport) -> secagg.NeighbourKeys:
    env = transport.secagg_sent[0]
    assert env.stage == common_pb2.STAGE_ADVERTISE_KEYS
    keys = K.AdvertiseKeys.FromString(env.payload)
    return secagg.NeighbourKeys("site-1", keys.cipher_public_key, keys.mask_public_key)


def test_training_a_secure_job_advertises_keys_instead_of_uploading(secure, aggregator):
    """A secure TRAIN ends in a signed AdvertiseKeys with metrics, and no plaintext upload."""
    _, transport = secure
    (env,) = transport.secagg_sent
    keys = K.AdvertiseKeys.FromString(env.payload)
    assert len(keys.cipher_public_key) == 32 and keys.metrics["eval_samples"] == 5.0
    assert aggregator.uploads == []


def test_share_keys_with_a_substituted_neighbour_envelope_is_refused(secure, pki, aggregator):
    """A neighbour's keys signed by another key than its certificate's are refused."""
    runner, transport = secure
    _, keys = secagg.advertise(site_id="site-2", round_id=f"{FEDERATION}/job-1/1")
    forged = _advertised(pki.other_site, keys, signer=pki.alice.signing_key)
    req = K.ShareKeysRequest(
        neighbours=[
            K.NeighbourKeys(
                site_id="site-2", advertised=forged, certificate=pki.other_site.cert_pem
            )
        ],
        threshold=2,
        num_selected=2,
    )
    outcome = runner.run(_task(pki, K.TASK_KIND_SHARE_KEYS, share_keys=req), transport)
    assert outcome is TaskOutcome.REFUSED
    assert _last_report(aggregator).reason == "bad_signature"
    assert len(transport.secagg_sent) == 1  # no shares left the site


def test_share_keys_with_a_certificate_for_another_site_is_refused(secure, pki, aggregator):
    """A neighbour presented with some other site's certificate is refused."""
    runner, transport = secure
    _, keys = secagg.advertise(site_id="site-3", round_id=f"{FEDERATION}/job-1/1")
    env = _advertised(pki.other_site, keys)
    req = K.ShareKeysRequest(
        neighbours=[
            K.NeighbourKeys(site_id="site-3", advertised=env, certificate=pki.other_site.cert_pem)
        ],
        threshold=2,
    )
    outcome = runner.run(_task(pki, K.TASK_KIND_SHARE_KEYS, share_keys=req), transport)
    assert outcome is TaskOutcome.REFUSED
    assert _last_report(aggregator).reason == "bad_certificate"


def test_full_stages_then_an_unmask_naming_a_site_in_both_lists_is_refused(secure, pki, aggregator):
    """After share and mask, an UnmaskRequest naming a site as survivor and dropped is refused."""
    runner, transport = secure
    rid = f"{FEDERATION}/job-1/1"
    st2, keys2 = secagg.advertise(site_id="site-2", round_id=rid)
    req = K.ShareKeysRequest(
        neighbours=[
            K.NeighbourKeys(
                site_id="site-2",
                advertised=_advertised(pki.other_site, keys2),
                certificate=pki.other_site.cert_pem,
            )
        ],
        threshold=2,
        num_selected=2,
    )
    ok = runner.run(_task(pki, K.TASK_KIND_SHARE_KEYS, share_keys=req), transport)
    assert ok is TaskOutcome.OK
    shares = K.ShareKeys.FromString(transport.secagg_sent[1].payload)
    assert [s.to_site for s in shares.shares] == ["site-2"]
    st2, out2 = secagg.share_keys(st2, [_site1_keys(transport)], threshold=2)
    mreq = K.MaskedInputRequest(
        shares=[K.EncryptedShareFrom(from_site="site-2", ciphertext=out2["site-1"])]
    )
    assert runner.run(_task(pki, K.TASK_KIND_MASKED_INPUT, masked_input=mreq), transport) is (
        TaskOutcome.OK
    )
    (up,) = aggregator.uploads
    assert up.header.stage == common_pb2.STAGE_MASKED_INPUT
    hdr = K.UpdateHeader.FromString(up.header.payload)
    ((name, y),) = decode_tensors(hdr.blob, up.data)
    assert name == "masked" and y.dtype == np.uint32 and y.shape == (6,)
    bad = K.UnmaskRequest(survivors=["site-1", "site-2"], dropped=["site-2"])
    outcome = runner.run(_task(pki, K.TASK_KIND_UNMASK, unmask=bad), transport)
    assert outcome is TaskOutcome.REFUSED
    assert _last_report(aggregator).reason == "unsafe_request"
    good = K.UnmaskRequest(survivors=["site-1", "site-2"])
    assert runner.run(_task(pki, K.TASK_KIND_UNMASK, unmask=good), transport) is TaskOutcome.OK
    reply = K.UnmaskShares.FromString(transport.secagg_sent[-1].payload)
    assert {s.site_id for s in reply.seed_shares} == {"site-1", "site-2"}
    assert not reply.key_shares


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
    _, keys2 = secagg.advertise(site_id="site-2", round_id=f"{FEDERATION}/job-1/1")
    nb = K.NeighbourKeys(
        site_id="site-2",
        advertised=_advertised(pki.other_site, keys2),
        certificate=pki.other_site.cert_pem,
    )
    task = _task(
        pki, K.TASK_KIND_SHARE_KEYS, share_keys=K.ShareKeysRequest(neighbours=[nb], threshold=2)
    )
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
