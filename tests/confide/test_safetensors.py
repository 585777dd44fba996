"""The safetensors writer and reader: exact bytes, round trips, refusals, the reference library."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from confide.errors import MalformedMessage
from confide.wire.safetensors import read_safetensors, write_safetensors


def test_known_answer_bytes(tmp_path):
    """Header size, JSON header (padded to 8 bytes) and little-endian data, as the format says."""
    path = tmp_path / "m.safetensors"
    write_safetensors(path, [("w", np.array([1.0, -2.0], dtype=np.float32))], metadata={"k": "v"})
    header = b'{"__metadata__":{"k":"v"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    header += b" " * (-len(header) % 8)
    assert path.read_bytes() == struct.pack("<Q", len(header)) + header + struct.pack(
        "<2f", 1.0, -2.0
    )


def test_round_trip_keeps_order_dtypes_shapes_and_metadata(tmp_path):
    """What is written reads back equal, in order, big-endian input included."""
    arrays = [
        ("net.0.weight", np.arange(6, dtype=np.float32).reshape(2, 3)),
        ("net.0.bias", np.zeros(2, dtype=np.float32)),
        ("count", np.arange(3, dtype=">i8")),
        ("empty", np.zeros((0, 4), dtype=np.float64)),
    ]
    path = tmp_path / "m.safetensors"
    write_safetensors(path, arrays, metadata={"job_id": "j"})
    out, meta = read_safetensors(path)
    assert meta == {"job_id": "j"} and [n for n, _ in out] == [n for n, _ in arrays]
    for (_, a), (_, b) in zip(arrays, out, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.shape == b.shape


def _file(tmp_path, header: object, data: bytes = b"") -> object:
    text = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


@pytest.mark.parametrize(
    ("header", "data"),
    [
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 7),
        ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
        ({"w": {"dtype": "X99", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
        ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 9),
        ({"__metadata__": {"k": 1}}, b""),
        ([1, 2], b""),
    ],
)
def test_malformed_files_are_refused(tmp_path, header, data):
    """Short data, wrong shapes, unknown dtypes, gaps, negative sizes, spare bytes are refused."""
    with pytest.raises(MalformedMessage):
        read_safetensors(_file(tmp_path, header, data))


def test_a_header_size_beyond_the_file_is_refused(tmp_path):
    """A header length larger than the file (or the 100 MB limit) is refused before reading."""
    path = tmp_path / "big.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(MalformedMessage):
        read_safetensors(path)


def test_the_reference_library_reads_ours_and_we_read_its(tmp_path):
    """safetensors' own loader reads our file, and we read a file it wrote."""
    st = pytest.importorskip("safetensors.numpy")
    ours = tmp_path / "ours.safetensors"
    write_safetensors(ours, [("a", np.arange(4, dtype=np.float32))], metadata={"x": "y"})
    np.testing.assert_array_equal(st.load_file(str(ours))["a"], np.arange(4, dtype=np.float32))
    theirs = tmp_path / "theirs.safetensors"
    st.save_file({"b": np.ones((2, 2), dtype=np.float64)}, str(theirs), metadata={"m": "n"})
    out, meta = read_safetensors(theirs)
    assert meta == {"m": "n"} and out[0][0] == "b"
    np.testing.assert_array_equal(out[0][1], np.ones((2, 2)))
