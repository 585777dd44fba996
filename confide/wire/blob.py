"""Tensors on the wire: dtype + shape + raw little-endian bytes, in chunks, never pickle.

A *blob* is the concatenation of several tensors' raw bytes, described by a ``BlobHeader``
(the specs in order, the total length and a SHA-256). Blobs travel as a stream of chunks of
``CHUNK_BYTES`` so no model size limit comes from gRPC's per-message limit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

from confide.errors import MalformedMessage, NonFiniteValue, OversizedMessage
from confide.v1 import common_pb2

__all__ = [
    "CHUNK_BYTES",
    "MAX_MESSAGE_BYTES",
    "BlobAssembler",
    "NamedArrays",
    "check_finite",
    "decode_tensors",
    "encode_tensors",
    "iter_chunks",
    "spec_nbytes",
]

CHUNK_BYTES = 2 * 1024 * 1024
"""Bytes per chunk message: well under gRPC's 4 MiB default, few enough messages to be fast."""

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""gRPC per-message limit both sides set: one chunk plus headroom, never a whole model."""

NamedArrays = list[tuple[str, npt.NDArray[np.generic]]]

_TO_NP: dict[int, np.dtype[np.generic]] = {
    common_pb2.DTYPE_FLOAT32: np.dtype("<f4"),
    common_pb2.DTYPE_FLOAT64: np.dtype("<f8"),
    common_pb2.DTYPE_INT32: np.dtype("<i4"),
    common_pb2.DTYPE_INT64: np.dtype("<i8"),
    common_pb2.DTYPE_UINT32: np.dtype("<u4"),
    common_pb2.DTYPE_UINT64: np.dtype("<u8"),
}
_FROM_NP: dict[str, common_pb2.DType] = {
    "float32": common_pb2.DTYPE_FLOAT32,
    "float64": common_pb2.DTYPE_FLOAT64,
    "int32": common_pb2.DTYPE_INT32,
    "int64": common_pb2.DTYPE_INT64,
    "uint32": common_pb2.DTYPE_UINT32,
    "uint64": common_pb2.DTYPE_UINT64,
}


def spec_nbytes(spec: common_pb2.TensorSpec) -> int:
    """Bytes a tensor of this spec occupies.

    Raises:
        MalformedMessage: unknown dtype or a negative dimension.
    """
    if spec.dtype not in _TO_NP:
        raise MalformedMessage(f"tensor {spec.name!r} has unknown dtype {spec.dtype}")
    n = 1
    for d in spec.shape:
        if d < 0:
            raise MalformedMessage(f"tensor {spec.name!r} has a negative dimension")
        n *= d
    return n * _TO_NP[spec.dtype].itemsize


def encode_tensors(arrays: NamedArrays) -> tuple[common_pb2.BlobHeader, list[memoryview]]:
    """Describe tensors as a header and the raw little-endian buffers to send, uncopied.

    Raises:
        MalformedMessage: a dtype has no wire form.
    """
    header = common_pb2.BlobHeader()
    buffers: list[memoryview] = []
    digest = hashlib.sha256()
    total = 0
    for name, arr in arrays:
        a = arr if arr.flags.c_contiguous else np.array(arr, order="C")
        if a.dtype.byteorder == ">":
            a = a.byteswap().view(a.dtype.newbyteorder("<"))
        dtype = _FROM_NP.get(a.dtype.name)
        if dtype is None:
            raise MalformedMessage(f"tensor {name!r} has unsupported dtype {a.dtype}")
        header.tensors.add(name=name, dtype=dtype, shape=list(a.shape))
        mv = a.reshape(-1).view(np.uint8).data
        digest.update(mv)
        buffers.append(mv)
        total += mv.nbytes
    header.total_bytes = total
    header.sha256 = digest.digest()
    return header, buffers


def iter_chunks(buffers: Sequence[memoryview], chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Split buffers into chunks of at most ``chunk_bytes`` (crossing tensor boundaries)."""
    pending: list[memoryview] = []
    size = 0
    for buf in buffers:
        off = 0
        while off < buf.nbytes:
            take = min(chunk_bytes - size, buf.nbytes - off)
            pending.append(buf[off : off + take])
            size += take
            off += take
            if size == chunk_bytes:
                yield b"".join(pending)
                pending, size = [], 0
    if pending:
        yield b"".join(pending)


class BlobAssembler:
    """Receives a blob's chunks and checks length and digest against its header.

    The buffer grows with the bytes received, never with the bytes announced: a header that
    declares a large blob and is followed by little data costs only that little data (a
    peer's declared size allocates nothing). Growth is amortized by ``bytearray`` (large
    buffers are resized with ``mremap`` on Linux, not copied).

    Args:
        header: the blob's header as the peer declared it.
        max_bytes: the largest blob this receiver accepts.

    Raises:
        OversizedMessage: the header declares more than ``max_bytes``, or chunks overrun it.
        MalformedMessage: the specs do not add up to ``total_bytes``.
    """

    def __init__(self, header: common_pb2.BlobHeader, *, max_bytes: int) -> None:
        declared = sum(spec_nbytes(s) for s in header.tensors)
        if header.total_bytes > max_bytes or declared > max_bytes:
            raise OversizedMessage(f"blob of {header.total_bytes} bytes exceeds {max_bytes}")
        if declared != header.total_bytes:
            raise MalformedMessage(
                f"tensor specs add up to {declared} bytes but header says {header.total_bytes}"
            )
        if len(header.sha256) != 32:
            raise MalformedMessage("blob sha256 must be 32 bytes")
        self.header = header
        self._total = header.total_bytes
        self._buf = bytearray()
        self._digest = hashlib.sha256()

    @property
    def received(self) -> int:
        """Bytes received so far."""
        return len(self._buf)

    def add(self, chunk: bytes) -> None:
        """Append one chunk.

        Raises:
            OversizedMessage: the chunk runs past the declared total.
        """
        if len(self._buf) + len(chunk) > self._total:
            raise OversizedMessage("blob chunks exceed the declared total_bytes")
        self._buf += chunk
        self._digest.update(chunk)

    def finish(self) -> NamedArrays:
        """Check completeness and digest, and return the tensors (views into one buffer).

        Raises:
            MalformedMessage: the blob is short or its digest differs from the header's.
        """
        if len(self._buf) != self._total:
            raise MalformedMessage(f"blob ended after {len(self._buf)} of {self._total} bytes")
        if self._digest.digest() != self.header.sha256:
            raise MalformedMessage("blob sha256 does not match its header")
        return decode_tensors(self.header, self._buf)


def decode_tensors(header: common_pb2.BlobHeader, data: bytes | bytearray) -> NamedArrays:
    """Split a complete blob into named arrays without copying.

    Raises:
        MalformedMessage: the data length differs from what the specs describe.
    """
    out: NamedArrays = []
    off = 0
    for spec in header.tensors:
        n = spec_nbytes(spec)
        if off + n > len(data):
            raise MalformedMessage("blob is shorter than its tensor specs")
        arr = np.frombuffer(
            data, dtype=_TO_NP[spec.dtype], count=n // _TO_NP[spec.dtype].itemsize, offset=off
        ).reshape(tuple(spec.shape))
        out.append((spec.name, arr))
        off += n
    if off != len(data):
        raise MalformedMessage("blob is longer than its tensor specs")
    return out


def check_finite(arrays: NamedArrays) -> None:
    """Refuse NaN or infinity in any floating tensor.

    Raises:
        NonFiniteValue: names the first tensor that holds one.
    """
    for name, arr in arrays:
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise NonFiniteValue(f"tensor {name!r} holds NaN or infinity")
