"""Tensor blobs: exact round trips, chunk limits on both sides, and refusal of bad streams."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import MalformedMessage, NonFiniteValue, OversizedMessage
from confide.wire.blob import (
    CHUNK_BYTES,
    BlobAssembler,
    check_finite,
    encode_tensors,
    iter_chunks,
)

DTYPES = ["<f4", "<f8", "<i4", "<i8", "<u4", "<u8"]


def _arrays(rng, shapes, dtype):
    return [(f"t{i}", (rng.standard_normal(s) * 100).astype(dtype)) for i, s in enumerate(shapes)]


@settings(max_examples=40, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 7), min_size=0, max_size=3), min_size=1, max_size=4),
    dtype=st.sampled_from(DTYPES),
    chunk=st.integers(1, 64),
)
def test_roundtrip_any_shapes_and_chunking(shapes, dtype, chunk):
    """Any tensors survive encode → chunk → assemble bit for bit, whatever the chunk size."""
    arrays = _arrays(np.random.default_rng(0), [tuple(s) for s in shapes], dtype)
    header, bufs = encode_tensors(arrays)
    asm = BlobAssembler(header, max_bytes=header.total_bytes)
    for c in iter_chunks(bufs, chunk):
        assert len(c) <= chunk
        asm.add(c)
    out = asm.finish()
    assert [n for n, _ in out] == [n for n, _ in arrays]
    for (_, a), (_, b) in zip(arrays, out, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


def test_big_endian_input_travels_little_endian():
    """A big-endian array is sent as little-endian bytes with the same values."""
    a = np.arange(5, dtype=">f4")
    _, bufs = encode_tensors([("a", a)])
    assert bytes(bufs[0]) == np.arange(5, dtype="<f4").tobytes()


def test_chunks_are_at_most_chunk_bytes():
    """A model larger than one gRPC message is split into CHUNK_BYTES pieces."""
    a = np.zeros(CHUNK_BYTES // 4 * 2 + 3, dtype=np.float32)
    _, bufs = encode_tensors([("a", a)])
    sizes = [len(c) for c in iter_chunks(bufs)]
    assert sizes == [CHUNK_BYTES, CHUNK_BYTES, 12]


def test_max_bytes_on_both_sides_of_the_limit():
    """A blob of exactly max_bytes is accepted; one byte more is oversized."""
    header, _ = encode_tensors([("a", np.zeros(4, dtype=np.float32))])
    BlobAssembler(header, max_bytes=16)
    with pytest.raises(OversizedMessage):
        BlobAssembler(header, max_bytes=15)


def test_overrun_short_and_corrupt_streams_are_refused():
    """Extra bytes, missing bytes and a wrong digest are each refused."""
    header, bufs = encode_tensors([("a", np.arange(8, dtype=np.float32))])
    data = bytes(bufs[0])
    asm = BlobAssembler(header, max_bytes=1 << 20)
    with pytest.raises(OversizedMessage):
        asm.add(data + b"x")
    asm = BlobAssembler(header, max_bytes=1 << 20)
    asm.add(data[:-1])
    with pytest.raises(MalformedMessage):
        asm.finish()
    asm = BlobAssembler(header, max_bytes=1 << 20)
    asm.add(data[:-1] + b"\x01")
    with pytest.raises(MalformedMessage):
        asm.finish()


def test_header_that_lies_about_its_size_is_refused():
    """Specs that do not add up to total_bytes are malformed."""
    header, _ = encode_tensors([("a", np.zeros(4, dtype=np.float32))])
    header.total_bytes = 15
    with pytest.raises(MalformedMessage):
        BlobAssembler(header, max_bytes=1 << 20)


def test_unknown_dtype_is_refused():
    """A dtype without a wire form is refused at encode and at receive."""
    with pytest.raises(MalformedMessage):
        encode_tensors([("a", np.zeros(2, dtype=np.float16))])
    header, _ = encode_tensors([("a", np.zeros(2, dtype=np.float32))])
    header.tensors[0].dtype = 99
    with pytest.raises(MalformedMessage):
        BlobAssembler(header, max_bytes=1 << 20)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad):
    """NaN and infinities are refused with the tensor named."""
    a = np.zeros(3, dtype=np.float32)
    a[1] = bad
    with pytest.raises(NonFiniteValue, match="'w'"):
        check_finite([("w", a)])


def test_a_declared_size_allocates_nothing_until_bytes_arrive():
    """A header announcing 1 GiB costs nothing; the buffer grows only by the bytes received."""
    import tracemalloc

    from confide.v1 import common_pb2

    header = common_pb2.BlobHeader(total_bytes=1 << 30, sha256=b"\0" * 32)
    header.tensors.add(name="w", dtype=common_pb2.DTYPE_FLOAT32, shape=[1 << 28])
    tracemalloc.start()
    try:
        asm = BlobAssembler(header, max_bytes=1 << 30)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
        asm.add(b"\0" * (4 << 20))
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert asm.received == 4 << 20
    assert current < 10 << 20 and peak < 16 << 20
    with pytest.raises(MalformedMessage):
        asm.finish()
