"""Frames over pipes: round trips, limits on both sides, truncated streams."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest

from confide.errors import MalformedMessage, OversizedMessage
from confide.wire.frames import (
    MAX_HEADER_BYTES,
    pack_arrays,
    read_frame,
    unpack_arrays,
    write_frame,
)


def _roundtrip(header, buffers=(), **kw):
    buf = io.BytesIO()
    write_frame(buf, header, buffers)
    buf.seek(0)
    return read_frame(buf, **kw), buf


def test_tensors_round_trip_exactly():
    """Named arrays of each dtype come back with the same names, shapes and values."""
    arrays = [
        ("a", np.arange(12, dtype=np.float32).reshape(3, 4)),
        ("b", np.array([1.5, -2.0], dtype=">f8")),
        ("c", np.arange(5, dtype=np.int64)),
        ("empty", np.zeros((0, 3), dtype=np.int32)),
    ]
    specs, buffers = pack_arrays(arrays)
    (header, body), _ = _roundtrip({"op": "x", "tensors": specs}, buffers)
    out = unpack_arrays(header["tensors"], body)
    assert [n for n, _ in out] == ["a", "b", "c", "empty"]
    for (_, want), (_, got) in zip(arrays, out, strict=True):
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert out[1][1].dtype == np.dtype("<f8")


def test_clean_eof_between_frames_is_none():
    """An empty stream, or one that ends after a whole frame, reads as None."""
    assert read_frame(io.BytesIO(b"")) is None
    _, buf = _roundtrip({"op": "ping"})
    assert read_frame(buf) is None


@pytest.mark.parametrize("cut", [2, 4, 10, 20, 25])
def test_truncated_stream_is_malformed(cut):
    """A stream that ends inside a frame (length, header, body length or body) is refused."""
    buf = io.BytesIO()
    write_frame(buf, {"op": "x"}, [b"12345"])
    data = buf.getvalue()
    assert len(data) > 25
    with pytest.raises(MalformedMessage):
        read_frame(io.BytesIO(data[:cut]))


def test_header_limit_both_sides():
    """A header of exactly the limit is read; one byte more is refused before reading it."""
    ok = struct.pack(">I", MAX_HEADER_BYTES)
    payload = b'"' + b"x" * (MAX_HEADER_BYTES - 2) + b'"'
    with pytest.raises(MalformedMessage, match="JSON object"):
        read_frame(io.BytesIO(ok + payload + struct.pack(">Q", 0)))
    with pytest.raises(OversizedMessage):
        read_frame(io.BytesIO(struct.pack(">I", MAX_HEADER_BYTES + 1)))
    with pytest.raises(OversizedMessage):
        write_frame(io.BytesIO(), {"k": "x" * MAX_HEADER_BYTES})


def test_body_limit_both_sides():
    """A body of exactly max_body_bytes is accepted; one byte more is refused."""
    (_header, body), _ = _roundtrip({"op": "x"}, [b"a" * 100], max_body_bytes=100)
    assert body.nbytes == 100
    with pytest.raises(OversizedMessage):
        _roundtrip({"op": "x"}, [b"a" * 101], max_body_bytes=100)


def test_header_must_be_json_object():
    """A header that is not a JSON object is malformed."""
    raw = json.dumps([1, 2]).encode()
    data = struct.pack(">I", len(raw)) + raw + struct.pack(">Q", 0)
    with pytest.raises(MalformedMessage):
        read_frame(io.BytesIO(data))


@pytest.mark.parametrize(
    "specs",
    [
        "nope",
        [["a", "float16", [2]]],
        [["a", "float32", [-1]]],
        [["a", "float32", [3]]],
        [["a", "float32", [1]]],
    ],
)
def test_bad_tensor_specs_are_malformed(specs):
    """Unknown dtypes, negative dims and sizes that do not add up to the body are refused."""
    body = np.zeros(8, dtype=np.uint8)
    with pytest.raises(MalformedMessage):
        unpack_arrays(specs, body)
