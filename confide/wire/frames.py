"""Frames between the agent daemon and its worker process, over the worker's stdin/stdout.

One frame is::

    u32be(len(header)) || header (UTF-8 JSON object) || u64be(len(body)) || body

Tensors travel in the body as raw little-endian bytes, one after another, described in the
header's ``"tensors"`` list as ``[name, dtype, shape]`` in order (dtype one of
``float32 float64 int32 int64``). Nothing is ever pickled. Headers over ``MAX_HEADER_BYTES``
and bodies over the reader's ``max_body_bytes`` are refused before anything is allocated.
Bodies are read with ``readinto`` into one uninitialised NumPy buffer and handed out as
zero-copy views; tensors are written straight from their own memory.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from confide.errors import MalformedMessage, OversizedMessage
from confide.wire.blob import NamedArrays

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "Buffer",
    "Frame",
    "pack_arrays",
    "read_frame",
    "unpack_arrays",
    "write_frame",
]

MAX_HEADER_BYTES = 1024 * 1024
"""Largest JSON header accepted: headers carry metadata only, never tensors."""

DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024 * 1024
"""Largest body accepted by default (2 GiB): a model update, never more."""

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
}

Buffer = bytes | bytearray | memoryview
Frame = tuple[dict[str, Any], npt.NDArray[np.uint8]]
"""A decoded frame: the header object and the body (a writable uint8 array, maybe empty)."""


def pack_arrays(arrays: NamedArrays) -> tuple[list[list[Any]], list[memoryview]]:
    """Describe tensors for a header and return their raw little-endian buffers, uncopied.

    Raises:
        MalformedMessage: a dtype has no frame form.
    """
    specs: list[list[Any]] = []
    buffers: list[memoryview] = []
    for name, arr in arrays:
        a = np.ascontiguousarray(arr)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        if a.dtype.name not in _DTYPES:
            raise MalformedMessage(f"tensor {name!r} has unsupported dtype {a.dtype}")
        specs.append([name, a.dtype.name, list(a.shape)])
        buffers.append(a.data.cast("B") if a.size else memoryview(b""))
    return specs, buffers


def unpack_arrays(specs: Any, body: npt.NDArray[np.uint8]) -> NamedArrays:
    """Split a body into named arrays (views into ``body``) following the header's specs.

    Raises:
        MalformedMessage: a spec is malformed or the sizes do not add up to the body.
    """
    if not isinstance(specs, list):
        raise MalformedMessage("frame 'tensors' must be a list")
    out: NamedArrays = []
    off = 0
    for spec in specs:
        if (
            not isinstance(spec, list)
            or len(spec) != 3
            or not isinstance(spec[0], str)
            or spec[1] not in _DTYPES
            or not isinstance(spec[2], list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in spec[2])
        ):
            raise MalformedMessage(f"bad tensor spec {str(spec)[:80]}")
        dtype = _DTYPES[spec[1]]
        shape = tuple(spec[2])
        n = math.prod(shape) * dtype.itemsize
        if off + n > body.nbytes:
            raise MalformedMessage("frame body is shorter than its tensor specs")
        out.append((spec[0], body[off : off + n].view(dtype).reshape(shape)))
        off += n
    if off != body.nbytes:
        raise MalformedMessage("frame body is longer than its tensor specs")
    return out


def write_frame(
    stream: IO[bytes], header: Mapping[str, Any], buffers: Sequence[Buffer] = ()
) -> None:
    """Write one frame and flush; ``buffers`` are concatenated into the body as they are.

    Raises:
        OversizedMessage: the encoded header is over ``MAX_HEADER_BYTES``.
        OSError: the pipe is closed.
    """
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if len(raw) > MAX_HEADER_BYTES:
        raise OversizedMessage(f"frame header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    total = sum(memoryview(b).nbytes for b in buffers)
    stream.write(_U32.pack(len(raw)) + raw + _U64.pack(total))
    for b in buffers:
        stream.write(b)
    stream.flush()


def _read_exact(stream: IO[bytes], n: int, what: str) -> bytes:
    data = stream.read(n)
    if data is None or len(data) != n:
        got = 0 if not data else len(data)
        raise MalformedMessage(f"stream ended inside a frame {what} ({got} of {n} bytes)")
    return data


def read_frame(stream: IO[bytes], *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Frame | None:
    """Read one frame; ``None`` when the stream ends cleanly between frames.

    Raises:
        OversizedMessage: the declared header or body length is over its limit.
        MalformedMessage: the stream ends inside a frame, or the header is not a JSON object.
    """
    first = stream.read(_U32.size)
    if not first:
        return None
    if len(first) != _U32.size:
        first += _read_exact(stream, _U32.size - len(first), "length")
    (hlen,) = _U32.unpack(first)
    if hlen > MAX_HEADER_BYTES:
        raise OversizedMessage(f"frame header of {hlen} bytes exceeds {MAX_HEADER_BYTES}")
    raw = _read_exact(stream, hlen, "header")
    (blen,) = _U64.unpack(_read_exact(stream, _U64.size, "body length"))
    if blen > max_body_bytes:
        raise OversizedMessage(f"frame body of {blen} bytes exceeds {max_body_bytes}")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise MalformedMessage("frame header must be a JSON object")
    body = np.empty(blen, dtype=np.uint8)
    view = body.data
    got = 0
    while got < blen:
        n = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            raise MalformedMessage(f"stream ended inside a frame body ({got} of {blen} bytes)")
        got += n
    return header, body
