"""The model-version hash chain and the initial model a signed job defines."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.store.blobs import FileBlobStore
from confide.errors import MalformedMessage
from confide.lineage import chain_anchor, chain_link, chain_of, initial_model_sha
from confide.models import initial_weights
from confide.v1 import common_pb2

SIGNED = common_pb2.Envelope(federation="f", sender="alice", payload=b"job", signature=b"s" * 64)
SHA_A, SHA_B = "a" * 64, "b" * 64


def _spec(seed: int = 0) -> common_pb2.JobSpec:
    return common_pb2.JobSpec(
        model=common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_MLP, hidden=[4]),
        dataset=common_pb2.DatasetSpec(features=["a", "b", "c"], label="y", num_classes=3),
        training=common_pb2.TrainingSpec(seed=seed),
    )


def test_link_is_the_documented_hash():
    """chain_link is SHA-256 of the domain, parent, u32be version and the model's 32 bytes."""
    parent = bytes(range(32))
    want = hashlib.sha256(
        b"confide/v1/model-chain" + parent + struct.pack(">I", 7) + bytes.fromhex(SHA_A)
    ).digest()
    assert chain_link(parent, version=7, model_sha=SHA_A) == want


def test_chain_of_folds_links_from_the_anchor():
    """chain_of gives chain_0..chain_k, each linking the one before (the anchor for k = 0)."""
    chain = chain_of(job_id="j", signed_job=SIGNED, shas=[SHA_A, SHA_B, SHA_A])
    anchor = chain_anchor(job_id="j", signed_job=SIGNED)
    assert chain[0] == chain_link(anchor, version=0, model_sha=SHA_A)
    assert chain[1] == chain_link(chain[0], version=1, model_sha=SHA_B)
    assert chain[2] == chain_link(chain[1], version=2, model_sha=SHA_A)
    assert len(set(chain)) == 3  # the same model at another version is another link


def test_anchor_binds_the_job_id_and_the_exact_signed_job():
    """Another job id, or any change to the signed envelope, gives another anchor."""
    base = chain_anchor(job_id="j", signed_job=SIGNED)
    other = common_pb2.Envelope()
    other.CopyFrom(SIGNED)
    other.issued_at_ms = 1
    assert chain_anchor(job_id="j2", signed_job=SIGNED) != base
    assert chain_anchor(job_id="j", signed_job=other) != base


@given(
    st.binary(min_size=32, max_size=32),
    st.integers(0, 2**32 - 1),
    st.sampled_from([SHA_A, SHA_B]),
    st.integers(0, 2),
)
def test_each_input_moves_the_link(parent, version, sha, which):
    """Changing the parent, the version or the model changes the link."""
    base = chain_link(parent, version=version, model_sha=sha)
    if which == 0:
        changed = chain_link(bytes([parent[0] ^ 1]) + parent[1:], version=version, model_sha=sha)
    elif which == 1:
        changed = chain_link(parent, version=(version + 1) % 2**32, model_sha=sha)
    else:
        changed = chain_link(parent, version=version, model_sha=SHA_B if sha == SHA_A else SHA_A)
    assert changed != base


@pytest.mark.parametrize(
    ("parent", "version", "sha"),
    [
        (bytes(31), 0, SHA_A),
        (bytes(33), 0, SHA_A),
        (bytes(32), -1, SHA_A),
        (bytes(32), 2**32, SHA_A),
        (bytes(32), 0, "a" * 63),
        (bytes(32), 0, "a" * 65),
        (bytes(32), 0, "A" * 64),
        (bytes(32), 0, "g" * 64),
    ],
    ids=["parent-31", "parent-33", "version-neg", "version-2^32", "sha-63", "sha-65", "up", "hex"],
)
def test_malformed_link_inputs_are_refused(parent, version, sha):
    """A parent that is not 32 bytes, a version outside u32 or a bad hex hash is malformed."""
    with pytest.raises(MalformedMessage):
        chain_link(parent, version=version, model_sha=sha)


def test_initial_model_sha_is_what_the_aggregator_stores_as_version_0(tmp_path):
    """The site's recomputed version 0 has the name the aggregator's blob store gives it."""
    spec = _spec(seed=5)
    sha, _ = FileBlobStore(tmp_path).put(initial_weights(spec.model, spec.dataset, seed=5))
    assert initial_model_sha(spec) == sha
    assert initial_model_sha(_spec(seed=6)) != sha
