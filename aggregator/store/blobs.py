"""The ``BlobStore`` on a local disk: ``blobs/ab/abcdef...`` plus its header next to it.

A blob file holds the raw concatenated little-endian tensor bytes (what travels in chunks);
``<sha>.header`` holds the serialized ``BlobHeader``. A raw blob (a code bundle) is the file
alone, with no header. Files are written to a temporary name,
fsynced, then renamed (and the folder fsynced), so a blob that exists is complete: the store
marks a round done only after its model blob is durable. Whatever the ``Store`` backend,
blobs live here, in the state folder, until another ``BlobStore`` is written.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from aggregator.store.interface import Arrays
from confide.errors import InternalError, Reason
from confide.statefiles import private_dir
from confide.v1 import common_pb2
from confide.wire.blob import CHUNK_BYTES, NamedArrays, decode_tensors, encode_tensors

__all__ = ["FileBlobStore"]


class FileBlobStore:
    """Model versions on disk, named by the hex SHA-256 of their bytes.

    Args:
        root: the ``blobs`` folder (created 0700 when missing).
    """

    def __init__(self, root: Path) -> None:
        self.root = private_dir(root)

    def _path(self, sha_hex: str) -> Path:
        if len(sha_hex) != 64 or any(c not in "0123456789abcdef" for c in sha_hex):
            raise InternalError(f"not a blob name: {sha_hex!r}", reason=Reason.UNKNOWN_JOB)
        return self.root / sha_hex[:2] / sha_hex

    def has(self, sha_hex: str) -> bool:
        """Whether the blob and its header are on disk."""
        try:
            p = self._path(sha_hex)
        except InternalError:
            return False
        return p.exists() and p.with_suffix(".header").exists()

    def put(self, arrays: Arrays) -> tuple[str, common_pb2.BlobHeader]:
        """Write tensors durably; returns the blob's hex SHA-256 and header.

        Raises:
            OSError: the disk refused the write.
        """
        header, buffers = encode_tensors(list(arrays))
        sha_hex = header.sha256.hex()
        path = self._path(sha_hex)
        if self.has(sha_hex):
            return sha_hex, header
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, exist_ok=True)
            _fsync_dir(self.root)  # the new shard folder's entry must survive a crash too
        _atomic_write(path, buffers)
        _atomic_write(path.with_suffix(".header"), [memoryview(header.SerializeToString())])
        return sha_hex, header

    def header(self, sha_hex: str) -> common_pb2.BlobHeader:
        """The stored header of a blob.

        Raises:
            FileNotFoundError: no such blob.
        """
        h = common_pb2.BlobHeader()
        h.ParseFromString(self._path(sha_hex).with_suffix(".header").read_bytes())
        return h

    def load(self, sha_hex: str) -> NamedArrays:
        """The blob's tensors as read-only views over a private memory map.

        Raises:
            FileNotFoundError: no such blob.
        """
        header = self.header(sha_hex)
        if header.total_bytes == 0:
            return decode_tensors(header, b"")
        with open(self._path(sha_hex), "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return decode_tensors(header, mm)  # type: ignore[arg-type]  # mmap is a buffer

    def chunks(self, sha_hex: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The blob's bytes in chunks of ``chunk_bytes`` for streaming.

        Raises:
            FileNotFoundError: no such blob.
        """
        with open(self._path(sha_hex), "rb") as f:
            while chunk := f.read(chunk_bytes):
                yield chunk

    def put_bytes(self, data: bytes) -> str:
        """Write raw bytes durably under their hex SHA-256 (once).

        Raises:
            OSError: the disk refused the write.
        """
        sha_hex = hashlib.sha256(data).hexdigest()
        path = self._path(sha_hex)
        if path.exists():
            return sha_hex
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, exist_ok=True)
            _fsync_dir(self.root)
        _atomic_write(path, [memoryview(data)])
        return sha_hex

    def has_bytes(self, sha_hex: str) -> bool:
        """Whether bytes named ``sha_hex`` are on disk."""
        try:
            return self._path(sha_hex).exists()
        except InternalError:
            return False

    def read_bytes(self, sha_hex: str, *, max_bytes: int) -> bytes:
        """The bytes named ``sha_hex``, refused when over ``max_bytes`` or altered on disk.

        Raises:
            FileNotFoundError: no such blob.
            InternalError: not a blob name, too large, or the bytes no longer match the name.
        """
        path = self._path(sha_hex)
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise InternalError(f"blob {sha_hex} is over {max_bytes} bytes")
        if hashlib.sha256(data).hexdigest() != sha_hex:
            raise InternalError(f"blob {sha_hex} no longer hashes to its name")
        return data


def _atomic_write(path: Path, buffers: list[memoryview]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            for b in buffers:
                f.write(b)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new subfolder) durable."""
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
