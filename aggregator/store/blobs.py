"""The ``BlobStore`` on a local disk: ``blobs/ab/abcdef...`` plus its header next to it.

A blob file holds the raw concatenated little-endian tensor bytes (what travels in chunks);
``<sha>.header`` holds the serialized ``BlobHeader``. A raw blob (a code bundle) is the file
alone, with no header. Files are written to a temporary name (``.tmp-...`` in the blob's
shard folder), fsynced, then renamed (and the folder fsynced), so a blob that exists is
complete: the store marks a round done only after its model blob is durable. Whatever the
``Store`` backend, blobs live here, in the state folder, until another ``BlobStore`` is
written.

A blob's ``stored_at`` is its file's modification time, set from the store's clock when it
is written and again whenever it is put or refreshed. The check of that time and the
removal (``remove``), the refresh, and the renames that make a written blob appear all run
under one lock of this process, so they cannot interleave (``BlobStore``'s collection
contract). A removal unlinks the header before the bytes, as a write renames the bytes
before the header, so a crash between the two leaves bytes alone (a blob ``stored`` lists,
collected in turn), never a header alone.

What the folder holds besides blobs: a temporary file that an interrupted write left is
removed by ``discard_partial`` once it is older than its cutoff, unless this process is
writing it; every other name (not 64 hex digits in its own shard folder, a link, a folder,
a header without its bytes) is not a blob, is never listed, and is left alone.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from aggregator.store.interface import Arrays, StoredBlob
from aggregator.store.refs import is_blob_name
from confide.errors import InternalError, Reason
from confide.statefiles import private_dir
from confide.v1 import common_pb2
from confide.wire.blob import CHUNK_BYTES, NamedArrays, decode_tensors, encode_tensors

__all__ = ["FileBlobStore"]

_TEMP_PREFIX = ".tmp-"
_HEADER = ".header"

_LOCK = threading.Lock()
"""Orders age checks, removals, refreshes and the renames that publish a blob, across every
``FileBlobStore`` of this process (several may be open over one folder: the daemon's, a
backup's). It is held only for a stat, a rename or an unlink, never for a write."""

_WRITING: set[str] = set()
"""Absolute paths of the temporary files this process is writing (under ``_LOCK``)."""


class FileBlobStore:
    """Model versions on disk, named by the hex SHA-256 of their bytes.

    Args:
        root: the ``blobs`` folder (created 0700 when missing).
        clock: unix seconds: each blob's ``stored_at`` (a parameter so tests age blobs).
    """

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.root = private_dir(root)
        self._clock = clock

    def _path(self, sha_hex: str) -> Path:
        if not is_blob_name(sha_hex):
            raise InternalError(f"not a blob name: {sha_hex!r}", reason=Reason.UNKNOWN_JOB)
        return self.root / sha_hex[:2] / sha_hex

    def has(self, sha_hex: str) -> bool:
        """Whether the blob and its header are on disk."""
        try:
            p = self._path(sha_hex)
        except InternalError:
            return False
        return p.exists() and _header(p).exists()

    def put(self, arrays: Arrays) -> tuple[str, common_pb2.BlobHeader]:
        """Write tensors durably; returns the blob's hex SHA-256 and header.

        Tensors already stored are not written again; their ``stored_at`` becomes now.

        Raises:
            OSError: the disk refused the write.
        """
        header, buffers = encode_tensors(list(arrays))
        sha_hex = header.sha256.hex()
        path = self._path(sha_hex)
        if self._touch(path, need_header=True):
            return sha_hex, header
        self._shard(path)
        self._write([(path, buffers), (_header(path), [memoryview(header.SerializeToString())])])
        return sha_hex, header

    def header(self, sha_hex: str) -> common_pb2.BlobHeader:
        """The stored header of a blob.

        Raises:
            FileNotFoundError: no such blob.
        """
        h = common_pb2.BlobHeader()
        h.ParseFromString(_header(self._path(sha_hex)).read_bytes())
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
        """Write raw bytes durably under their hex SHA-256 (once; again: ``stored_at`` is now).

        Raises:
            OSError: the disk refused the write.
        """
        sha_hex = hashlib.sha256(data).hexdigest()
        path = self._path(sha_hex)
        if self._touch(path, need_header=False):
            return sha_hex
        self._shard(path)
        self._write([(path, [memoryview(data)])])
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

    # ----- collection -----

    def stored(self) -> Iterator[StoredBlob]:
        """Every blob file in its shard folder, with its header's size added and its mtime.

        Raises:
            OSError: the folder cannot be listed.
        """
        for shard in _shards(self.root):
            with os.scandir(shard) as entries:
                names = [e.name for e in entries]
            for name in names:
                if not (is_blob_name(name) and name.startswith(shard.name)):
                    continue  # a header, a temporary file, or not ours
                path = shard / name
                try:
                    st = path.lstat()
                except FileNotFoundError:  # removed meanwhile
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                try:
                    extra = _header(path).lstat().st_size
                except FileNotFoundError:
                    extra = 0
                yield StoredBlob(name=name, size=st.st_size + extra, stored_at=_mtime(st))

    def refresh(self, sha_hex: str) -> bool:
        """Whether the bytes named ``sha_hex`` are on disk; if so their mtime becomes now.

        Raises:
            OSError: the disk refused the update.
        """
        try:
            path = self._path(sha_hex)
        except InternalError:
            return False
        return self._touch(path, need_header=False)

    def remove(self, sha_hex: str, *, stored_before: float) -> bool:
        """Unlink the blob's header, then its bytes, if its mtime is before ``stored_before``.

        Raises:
            OSError: the disk refused an unlink.
            InternalError: not a blob name.
        """
        path = self._path(sha_hex)
        with _LOCK:
            try:
                st = path.lstat()
            except FileNotFoundError:
                return False
            if not stat.S_ISREG(st.st_mode) or st.st_mtime_ns >= _ns(stored_before):
                return False
            _header(path).unlink(missing_ok=True)
            path.unlink()
        _fsync_dir(path.parent)
        return True

    def discard_partial(self, *, before: float) -> tuple[int, int]:
        """Unlink the ``.tmp-`` files in shard folders older than ``before`` that this
        process is not writing; returns (files, bytes).

        Raises:
            OSError: the disk refused an unlink.
        """
        files = size = 0
        for shard in _shards(self.root):
            with os.scandir(shard) as entries:
                temps = [
                    os.path.abspath(e.path) for e in entries if e.name.startswith(_TEMP_PREFIX)
                ]
            for tmp in temps:
                with _LOCK:
                    if tmp in _WRITING:
                        continue
                    try:
                        st = os.lstat(tmp)
                    except FileNotFoundError:
                        continue
                    if not stat.S_ISREG(st.st_mode) or st.st_mtime_ns >= _ns(before):
                        continue
                    os.unlink(tmp)
                files, size = files + 1, size + st.st_size
        return files, size

    # ----- writing -----

    def _touch(self, path: Path, *, need_header: bool) -> bool:
        """If the blob is on disk (with its header when ``need_header``), set its mtime to
        now and return True: the check and the update are one step against ``remove``."""
        ns = _ns(self._clock())
        with _LOCK:
            if need_header and not _header(path).exists():
                return False
            try:
                os.utime(path, ns=(ns, ns), follow_symlinks=False)
            except FileNotFoundError:
                return False
            return True

    def _shard(self, path: Path) -> None:
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, exist_ok=True)
            _fsync_dir(self.root)  # the new shard folder's entry must survive a crash too

    def _write(self, files: list[tuple[Path, list[memoryview]]]) -> None:
        """Write each file to a temporary name, then rename them all in order under the lock."""
        ns = _ns(self._clock())
        temps: list[str] = []
        try:
            for path, buffers in files:
                temps.append(_write_temp(path.parent, buffers))
                os.utime(temps[-1], ns=(ns, ns))
            with _LOCK:
                for tmp, (path, _) in zip(temps, files, strict=True):
                    os.replace(tmp, path)
                    _WRITING.discard(tmp)
        finally:
            with _LOCK:
                for tmp in temps:
                    if tmp in _WRITING:  # not renamed: this write failed
                        _WRITING.discard(tmp)
                        Path(tmp).unlink(missing_ok=True)
        _fsync_dir(files[0][0].parent)


def _write_temp(folder: Path, buffers: list[memoryview]) -> str:
    """A new fsynced temporary file in ``folder`` holding ``buffers``; its absolute path,
    registered in ``_WRITING`` (the caller renames or removes it, then forgets it)."""
    with _LOCK:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_TEMP_PREFIX)
        tmp = os.path.abspath(tmp)
        _WRITING.add(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            for b in buffers:
                f.write(b)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with _LOCK:
            _WRITING.discard(tmp)
            Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _header(path: Path) -> Path:
    return path.with_suffix(_HEADER)


def _shards(root: Path) -> list[Path]:
    """The shard folders (two hex digits) under ``root``."""
    with os.scandir(root) as entries:
        return sorted(
            root / e.name
            for e in entries
            if len(e.name) == 2
            and all(c in "0123456789abcdef" for c in e.name)
            and e.is_dir(follow_symlinks=False)
        )


def _ns(t: float) -> int:
    """Unix seconds as the integer nanoseconds of a file time: ages are compared in these,
    so a blob stored at exactly a cutoff reads back at exactly it."""
    return round(t * 1e9)


def _mtime(st: os.stat_result) -> float:
    return st.st_mtime_ns / 1e9


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new subfolder) durable."""
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
