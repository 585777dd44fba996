"""A discrete-Gaussian SecAgg+ round at the aggregator, with fake sites over real mTLS: the
server unmasks the padded, rotated integer sum and decodes it with the attempt's seed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aggregator.server import build
from confide.secagg.encoding import Mechanism, _encode_from_parts, decode, secure_encoding
from confide.secagg.rotation import rotation_seed
from confide.v1 import common_pb2, federation_pb2
from tests.aggregator.conftest import make_config
from tests.aggregator.fakes import FEDERATION, Operator
from tests.aggregator.test_secagg import (  # noqa: F401  (pki5 is a fixture)
    D,
    SecSite,
    finish,
    pki5,
    run_round,
    secure_spec,
)

Z = 0.5
N = 5


def _spec() -> common_pb2.JobSpec:
    spec = secure_spec(min_sites=N)
    spec.update_privacy.CopyFrom(
        common_pb2.UpdatePrivacy(clip_norm=1.0, noise_multiplier=Z, delta=1e-5)
    )
    return spec


class DdgSite(SecSite):
    """A fake site that masks its float update in the job's discrete Gaussian encoding."""

    def advertise(self, task: federation_pb2.Task) -> federation_pb2.Ack:
        rng = np.random.default_rng(int(self.name.rpartition("-")[2]))
        self.update = rng.normal(size=D) * 0.02
        self.seed = rotation_seed(
            federation=FEDERATION, attempt=f"{task.job_id}/{task.round}/{task.attempt}"
        )
        self.x = _encode_from_parts(
            self.update, secure_encoding(_spec()), seed=self.seed, rng=rng
        ).values
        return super().advertise(task)


@pytest.fixture
def ddg_fed(pki5, tmp_path):  # noqa: F811
    agg, port = build(make_config(pki5, tmp_path / "state"))
    sites = [DdgSite(pki5, f"site-{i}", port) for i in range(1, N + 1)]
    op = Operator(pki5, "alice", port)
    yield sites, op
    for s in sites:
        s.disconnect()
        s.close()
    op.close()
    agg.stop(grace=0)


def test_the_server_decodes_the_discrete_sum_with_the_attempts_rotation(ddg_fed):
    """The new model is init + decode(Σ x_i)/n bit for bit (the server unmasked d' words and
    used the sites' rotation seed), and that mean is the sites' mean update plus the summed
    discrete noise, std z·C/√m·√n/n per coordinate."""
    sites, op = ddg_fed
    enc = secure_encoding(_spec())
    assert enc.mechanism is Mechanism.DISCRETE_GAUSSIAN and enc.length == D
    for s in sites:
        s.connect()
    job_id = op.submit(_spec())
    first = sites[0].next_task(federation_pb2.TASK_KIND_TRAIN)
    sites[0].tasks.queue.appendleft(first)
    model0 = sites[0].download(job_id, first.model_version)[0][1]
    run_round(sites)
    _st, model1 = finish(sites, op, job_id)
    total = np.zeros(enc.length, dtype=np.uint32)
    for s in sites:
        total += s.x
    mean = decode(total, enc, n=N, seed=sites[0].seed) / N
    np.testing.assert_array_equal(model1, (model0.astype(np.float64) + mean).astype(np.float32))
    noise = mean - np.mean([s.update for s in sites], axis=0)
    want = Z / math.sqrt(N) * math.sqrt(N) / N
    assert float(np.std(noise)) == pytest.approx(want, rel=4 / math.sqrt(2 * D))
