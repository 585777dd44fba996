"""Model weights at rest: the safetensors file format, written and read with NumPy alone.

The format (huggingface/safetensors, "Format" in its README): an unsigned little-endian
64-bit header size N; N bytes of UTF-8 JSON mapping each tensor name to ``{"dtype",
"shape", "data_offsets": [begin, end]}`` (offsets into the byte buffer that follows) plus
an optional ``"__metadata__"`` map of strings; then the byte buffer, each tensor's values
little-endian and row-major. Nothing in it is code, so a file from anywhere is safe to read
(unlike a pickled ``torch.save``); ``safetensors.torch.load_file`` reads what this writes.

Writing needs no dependency, so the operator's ``confide model download`` works on the
aggregator's install (no torch); sites load the file with ``confide_worker.training.saved``.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from confide.errors import MalformedMessage
from confide.wire.blob import NamedArrays

__all__ = ["MAX_HEADER_BYTES", "read_safetensors", "write_safetensors"]

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""The largest JSON header read (the reference implementation's own limit)."""

_DTYPES: dict[str, np.dtype[np.generic]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {dt: name for name, dt in _DTYPES.items()}


def write_safetensors(path: Path, arrays: NamedArrays, *, metadata: Mapping[str, str]) -> None:
    """Write ``arrays`` (in order) and string ``metadata`` to ``path`` as safetensors.

    Raises:
        ValueError: a dtype safetensors has no name for, or a repeated tensor name.
        OSError: the file cannot be written.
    """
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    buffers: list[bytes] = []
    for name, arr in arrays:
        if name in header:
            raise ValueError(f"tensor name {name!r} is repeated or reserved")
        le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        dtype = _NAMES.get(le.dtype)
        if dtype is None:
            raise ValueError(f"tensor {name!r}: dtype {arr.dtype} has no safetensors name")
        data = le.tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(le.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        buffers.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the buffer starts 8-byte aligned
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for data in buffers:
            fh.write(data)


def read_safetensors(path: Path) -> tuple[NamedArrays, dict[str, str]]:
    """Read a safetensors file: its tensors in buffer order, and its metadata.

    Raises:
        MalformedMessage: the file is not valid safetensors (a header that is too long or
            not JSON, unknown dtypes, offsets outside the buffer, overlapping or with gaps,
            a shape that does not match its bytes).
        OSError: the file cannot be read.
    """
    data = path.read_bytes()
    if len(data) < 8:
        raise MalformedMessage("not a safetensors file: shorter than its header size")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise MalformedMessage(f"safetensors header of {n} bytes does not fit the file")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise MalformedMessage("safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise MalformedMessage("safetensors __metadata__ must map strings to strings")
    buf = memoryview(data)[8 + n :]
    entries = sorted((_entry(name, info) for name, info in header.items()), key=lambda e: e[3])
    out: NamedArrays = []
    end = 0
    for name, dtype, shape, begin, stop in entries:
        if begin != end or stop > len(buf):
            raise MalformedMessage(f"tensor {name!r}: data offsets leave a gap, overlap or overrun")
        if (stop - begin) != math.prod(shape) * dtype.itemsize:
            raise MalformedMessage(f"tensor {name!r}: shape {shape} does not match its bytes")
        arr = np.frombuffer(buf[begin:stop], dtype=dtype).reshape(shape)
        out.append((name, arr.astype(dtype.newbyteorder("="), copy=True)))
        end = stop
    if end != len(buf):
        raise MalformedMessage("safetensors buffer has bytes no tensor names")
    return out, dict(metadata)


def _entry(name: str, info: object) -> tuple[str, np.dtype[np.generic], tuple[int, ...], int, int]:
    if not isinstance(info, dict):
        raise MalformedMessage(f"tensor {name!r}: entry is not an object")
    dtype = _DTYPES.get(str(info.get("dtype")))
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if dtype is None:
        raise MalformedMessage(f"tensor {name!r}: unknown dtype {info.get('dtype')!r}")
    if not isinstance(shape, list) or not all(_count(d) for d in shape):
        raise MalformedMessage(f"tensor {name!r}: shape must be a list of sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(o) for o in offsets):
        raise MalformedMessage(f"tensor {name!r}: data_offsets must be [begin, end]")
    begin, stop = offsets
    if stop < begin:
        raise MalformedMessage(f"tensor {name!r}: data_offsets end before they begin")
    return name, dtype, tuple(shape), begin, stop


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
