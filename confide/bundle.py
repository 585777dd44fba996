"""Code bundles: a job's own model code as one deterministic archive, and its safe unpacking.

A job may carry its own model code (``[model] code = "dir"``): a folder whose ``model.py``
defines ``build_model(spec)`` and, optionally, ``loss(outputs, labels)`` and
``transform(features)`` (README "Code bundles"). ``confide job submit`` packs the folder with
``pack``; the SHA-256 of the archive goes into the signed ``JobSpec`` (``model.code_sha256``),
so the archive's bytes are what the operator signed. A site checks that hash first
(``check_digest``), then ``unpack`` checks every entry before a byte is written.

The archive is an uncompressed POSIX ustar file written entry by entry with fixed metadata:

- one entry per regular file, sorted by path (the UTF-8 bytes; Python's ``str`` order is the
  same); no directory entries (folders are implied by the paths), no links;
- every entry has mode 0644, owner and group 0 with empty names, and mtime 0;
- ``__pycache__`` folders, ``*.pyc`` files and names starting with ``.`` are left out, so
  running the code locally (``confide job init-weights``) or a ``.git`` folder does not change
  the archive.

So the same folder gives the same bytes on any machine, whatever its files' timestamps,
permissions or owners, and a site can allow a bundle by hash after packing the folder itself.
Uncompressed, the archive is never much larger than the code it holds, and nothing has to be
inflated to learn what it holds.

``unpack`` refuses, each with its own reason: bytes over ``MAX_BUNDLE_BYTES``, more than
``MAX_ENTRIES`` entries, more than ``MAX_EXPANDED_BYTES`` of files (``bundle_too_large``); an
absolute path, a ``..`` or ``.`` component, an empty component, a backslash or a NUL
(``bundle_unsafe_path``); a symbolic or hard link, a device, a FIFO or any other non-regular
entry (``bundle_special_file``); a duplicate path, a path below a file, a directory entry, or
any archive that is not exactly what ``pack`` writes for its files (``malformed``).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from confide.errors import (
    BadSignature,
    ConfigError,
    MalformedMessage,
    OversizedMessage,
    Reason,
)
from confide.models import ENTRY_MODULE

__all__ = [
    "ENTRY_MODULE",
    "MAX_BUNDLE_BYTES",
    "MAX_ENTRIES",
    "MAX_EXPANDED_BYTES",
    "Entries",
    "check_digest",
    "digest",
    "pack",
    "pack_folder",
    "read_folder",
    "unpack",
    "write_folder",
]

MAX_BUNDLE_BYTES = 16 * 1024 * 1024
"""The largest archive accepted anywhere: by ``pack``, the aggregator's upload, a site."""
MAX_ENTRIES = 1024
"""The most files one bundle holds."""
MAX_EXPANDED_BYTES = 16 * 1024 * 1024
"""The most bytes a bundle's files hold together, unpacked."""
MAX_PATH_BYTES = 240
"""The longest path inside a bundle (UTF-8 bytes; ustar holds at most 255)."""

Entries = dict[str, bytes]
"""A bundle's files by relative POSIX path (``pkg/layers.py``), in sorted order."""

_FILE_MODE = 0o644
_SPECIAL = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


def digest(data: bytes) -> bytes:
    """The 32-byte SHA-256 of an archive: what ``model.code_sha256`` holds."""
    return hashlib.sha256(data).digest()


def check_digest(data: bytes, *, code_sha256: bytes) -> None:
    """Refuse bytes that are not the archive the signed job names (checked before parsing).

    Raises:
        BadSignature: reason ``bundle_mismatch``.
    """
    if len(code_sha256) != 32 or digest(data) != code_sha256:
        raise BadSignature(
            f"the code bundle ({len(data)} bytes, sha256 {digest(data).hex()}) is not the one "
            f"the signed job names ({code_sha256.hex()})",
            reason=Reason.BUNDLE_MISMATCH,
        )


def pack(entries: Mapping[str, bytes]) -> bytes:
    """The deterministic archive of ``entries`` (see the module docstring).

    Raises:
        MalformedMessage, OversizedMessage: an entry ``unpack`` would refuse (checked here too,
            so no archive is made that a site cannot open).
    """
    _check_limits(len(entries), sum(len(v) for v in entries.values()))
    for path in entries:
        _check_path(path)
    _check_tree(entries)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT, encoding="utf-8") as tf:
        for path in sorted(entries):
            data = entries[path]
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = 0
            info.mode = _FILE_MODE
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tf.addfile(info, io.BytesIO(data))
    data = out.getvalue()
    if len(data) > MAX_BUNDLE_BYTES:
        raise OversizedMessage(
            f"the bundle archive has {len(data)} bytes, over {MAX_BUNDLE_BYTES}",
            reason=Reason.BUNDLE_TOO_LARGE,
        )
    return data


def unpack(
    data: bytes,
    *,
    max_bytes: int = MAX_BUNDLE_BYTES,
    max_entries: int = MAX_ENTRIES,
    max_expanded: int = MAX_EXPANDED_BYTES,
) -> Entries:
    """The files of an archive, every entry checked before any is returned.

    Args:
        data: the archive (its hash already checked against the signed job).
        max_bytes, max_entries, max_expanded: the limits (the module's constants; tests
            lower them to try both sides of each).

    Raises:
        OversizedMessage: reason ``bundle_too_large``.
        MalformedMessage: reason ``bundle_unsafe_path``, ``bundle_special_file`` or
            ``malformed`` (see the module docstring).
    """
    if len(data) > max_bytes:
        raise OversizedMessage(
            f"the bundle archive has {len(data)} bytes, over {max_bytes}",
            reason=Reason.BUNDLE_TOO_LARGE,
        )
    entries: Entries = {}
    expanded = 0
    try:
        # "r:" reads an uncompressed archive only: nothing is ever inflated.
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8") as tf:
            while (member := tf.next()) is not None:
                if len(entries) >= max_entries:
                    raise OversizedMessage(
                        f"the bundle holds more than {max_entries} entries",
                        reason=Reason.BUNDLE_TOO_LARGE,
                    )
                _check_path(member.name)
                _check_member(member)
                expanded += member.size
                if expanded > max_expanded:
                    raise OversizedMessage(
                        f"the bundle's files hold more than {max_expanded} bytes",
                        reason=Reason.BUNDLE_TOO_LARGE,
                    )
                if member.name in entries:
                    raise MalformedMessage(f"the bundle names {member.name!r} twice")
                if member.offset_data + member.size > len(data):
                    raise MalformedMessage(f"the bundle ends inside {member.name!r}")
                entries[member.name] = data[member.offset_data : member.offset_data + member.size]
    except (tarfile.TarError, UnicodeError, ValueError) as exc:
        raise MalformedMessage(f"the bundle is not a readable archive: {exc}") from None
    _check_tree(entries)
    if pack(entries) != data:
        # Every entry is safe, but the archive is not what ``pack`` makes of them (other
        # metadata, extended headers, trailing bytes): one bundle, one byte string.
        raise MalformedMessage("the bundle is not in the canonical form confide job submit packs")
    return dict(sorted(entries.items()))


def _check_limits(count: int, size: int) -> None:
    if count > MAX_ENTRIES:
        raise OversizedMessage(
            f"the bundle holds {count} files, over {MAX_ENTRIES}", reason=Reason.BUNDLE_TOO_LARGE
        )
    if size > MAX_EXPANDED_BYTES:
        raise OversizedMessage(
            f"the bundle's files hold {size} bytes, over {MAX_EXPANDED_BYTES}",
            reason=Reason.BUNDLE_TOO_LARGE,
        )


def _check_path(path: str) -> None:
    """A relative POSIX path of plain components, no longer than ``MAX_PATH_BYTES``."""

    def unsafe(why: str) -> MalformedMessage:
        return MalformedMessage(
            f"bundle path {path[:80]!r} {why}", reason=Reason.BUNDLE_UNSAFE_PATH
        )

    if not path:
        raise unsafe("is empty")
    if path.startswith("/"):
        raise unsafe("is absolute")
    if "\\" in path or "\0" in path:
        raise unsafe("holds a backslash or NUL")
    parts = path.split("/")
    if ".." in parts:
        raise unsafe("climbs out with '..'")
    if any(p in ("", ".") for p in parts):
        raise unsafe("has an empty or '.' component")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise unsafe(f"is longer than {MAX_PATH_BYTES} bytes")


def _check_member(member: tarfile.TarInfo) -> None:
    if member.type in _SPECIAL or member.issym() or member.islnk() or member.isdev():
        what = _SPECIAL.get(member.type, "a link or device")
        raise MalformedMessage(
            f"bundle entry {member.name[:80]!r} is {what}: only regular files",
            reason=Reason.BUNDLE_SPECIAL_FILE,
        )
    if member.isdir():
        raise MalformedMessage(f"bundle entry {member.name[:80]!r} is a directory entry")
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        raise MalformedMessage(
            f"bundle entry {member.name[:80]!r} has unknown type {member.type!r}",
            reason=Reason.BUNDLE_SPECIAL_FILE,
        )


def _check_tree(entries: Mapping[str, bytes]) -> None:
    """No path is also a folder of another (``a`` and ``a/b``)."""
    folders = {str(p) for path in entries for p in PurePosixPath(path).parents}
    clash = sorted(folders & set(entries))
    if clash:
        raise MalformedMessage(f"bundle path {clash[0][:80]!r} is both a file and a folder")


# ----- the shell: folders on disk -----


def _skipped(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__" or name.endswith(".pyc")


def read_folder(root: Path, *, key: str = "model.code") -> Entries:
    """The files of a bundle folder, as ``pack`` takes them.

    Args:
        root: the folder.
        key: the job-file key that named it (for errors).

    Raises:
        ConfigError: naming ``key``: no such folder, no ``model.py``, a link or special file
            inside, or a file that cannot be read.
    """
    if not root.is_dir():
        raise ConfigError(key, f"{root} is not a folder")
    entries: Entries = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in dirnames:
            if (here / name).is_symlink():
                raise ConfigError(
                    key, f"{here / name} is a link: a bundle holds only regular files"
                )
        dirnames[:] = sorted(d for d in dirnames if not _skipped(d))
        for name in sorted(filenames):
            p = here / name
            if _skipped(name):
                continue
            if not stat.S_ISREG(p.lstat().st_mode):
                raise ConfigError(
                    key, f"{p} is a link or special file: a bundle holds only regular files"
                )
            try:
                entries[p.relative_to(root).as_posix()] = p.read_bytes()
            except OSError as exc:
                raise ConfigError(key, f"cannot read {p}: {exc.strerror}") from exc
    if ENTRY_MODULE not in entries:
        raise ConfigError(key, f"{root} has no {ENTRY_MODULE} defining build_model(spec)")
    return dict(sorted(entries.items()))


def pack_folder(root: Path, *, key: str = "model.code") -> bytes:
    """``pack(read_folder(root))``, with ``pack``'s refusals named by the job-file ``key``.

    Raises:
        ConfigError: as ``read_folder``, or the folder is over a bundle's limits.
    """
    entries = read_folder(root, key=key)
    try:
        return pack(entries)
    except (MalformedMessage, OversizedMessage) as exc:
        raise ConfigError(key, exc.message, reason=exc.reason) from exc


def write_folder(entries: Mapping[str, bytes], dest: Path) -> None:
    """Write checked ``entries`` (``unpack``'s result) into the new folder ``dest``, read-only.

    Files are created exclusively without following links, so nothing outside ``dest`` is
    touched; files get mode 0444 and folders 0555 once written.

    Raises:
        FileExistsError: ``dest`` exists.
        MalformedMessage: an entry's path is unsafe (``unpack`` refused it already).
        OSError: the disk refused a write.
    """
    for path in entries:
        _check_path(path)
    dest.mkdir(mode=0o700)
    made: list[Path] = []
    for path in sorted(entries):
        target = dest.joinpath(*path.split("/"))
        for folder in reversed(target.relative_to(dest).parents[:-1]):
            d = dest / folder
            if not d.is_dir():
                d.mkdir(mode=0o700)
                made.append(d)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, 0o444)
        with os.fdopen(fd, "wb") as f:
            f.write(entries[path])
    for d in [*reversed(made), dest]:
        d.chmod(0o555)
