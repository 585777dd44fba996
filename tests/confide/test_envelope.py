"""Signed envelopes: forgeries, replays into other contexts and stale messages are refused."""

from __future__ import annotations

import nacl.signing
import pytest

from confide.errors import BadSignature, MalformedMessage, Reason, ReplayedMessage
from confide.v1 import common_pb2
from confide.wire.envelope import Binding, canonical_bytes, open_envelope, seal

NOW = 1_800_000_000.0
KEY = nacl.signing.SigningKey(bytes(range(32)))
VK = bytes(KEY.verify_key)


def _env(**kw):
    args = dict(
        signing_key=KEY,
        federation="fed",
        sender="site-1",
        stage=common_pb2.STAGE_UPDATE,
        payload=b"payload",
        now=NOW,
        job_id="job-1",
        round=3,
    )
    args.update(kw)
    return seal(**args)


def _expect(**kw):
    args = dict(
        federation="fed", sender="site-1", stage=common_pb2.STAGE_UPDATE, job_id="job-1", round=3
    )
    args.update(kw)
    return Binding(**args)


def test_roundtrip_returns_payload():
    """A correctly sealed envelope opens to its payload."""
    assert open_envelope(_env(), verify_key=VK, expect=_expect(), now=NOW) == b"payload"


def test_canonical_bytes_known_answer():
    """The canonical encoding is stable (a change here breaks every deployed peer)."""
    env = _env()
    assert canonical_bytes(env).hex() == (
        "00000013636f6e666964652f76312f656e76656c6f7065"
        "00000003666564"
        "00000006736974652d31"
        "000000056a6f622d31"
        "00000003"
        "00000005"
        "000001a3185c5000"
        "239f59ed55e737c77147cf55ad0c1b030b6d7ee748a7426952f9b852d5a935e5"
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("payload", b"payloae"),
        ("round", 4),
        ("job_id", "job-2"),
        ("sender", "site-2"),
        ("federation", "other"),
        ("issued_at_ms", 1),
        ("stage", common_pb2.STAGE_UNMASK),
    ],
)
def test_any_tampered_field_breaks_the_signature(field, value):
    """Changing any signed field after sealing makes verification fail."""
    env = _env()
    setattr(env, field, value)
    with pytest.raises(BadSignature) as ei:
        open_envelope(env, verify_key=VK, expect=_expect(), now=NOW)
    assert ei.value.reason is Reason.BAD_SIGNATURE


def test_wrong_key_is_refused():
    """A signature by another key does not verify."""
    other = nacl.signing.SigningKey(bytes(32))
    with pytest.raises(BadSignature):
        open_envelope(_env(signing_key=other), verify_key=VK, expect=_expect(), now=NOW)


@pytest.mark.parametrize("n", [63, 65, 0])
def test_signature_length_on_both_sides_of_64(n):
    """A signature that is not exactly 64 bytes is malformed."""
    env = _env()
    env.signature = env.signature[:n] if n < 64 else env.signature + b"\0"
    with pytest.raises(MalformedMessage):
        open_envelope(env, verify_key=VK, expect=_expect(), now=NOW)


@pytest.mark.parametrize(
    "expect",
    [
        _expect(round=4),
        _expect(job_id="job-2"),
        _expect(stage=common_pb2.STAGE_MASKED_INPUT),
        _expect(sender="site-2"),
        _expect(federation="x"),
    ],
)
def test_replay_into_another_context_is_refused(expect):
    """A validly signed message is refused in any other round, job, stage, sender or federation."""
    with pytest.raises(ReplayedMessage) as ei:
        open_envelope(_env(), verify_key=VK, expect=expect, now=NOW)
    assert ei.value.reason is Reason.REPLAYED


def test_stale_envelope_is_refused():
    """An envelope issued far from the receiver's clock is refused as stale."""
    with pytest.raises(ReplayedMessage):
        open_envelope(_env(), verify_key=VK, expect=_expect(), now=NOW + 301)
    assert open_envelope(_env(), verify_key=VK, expect=_expect(), now=NOW + 299) == b"payload"
