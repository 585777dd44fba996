"""Backups of a daemon's state: a folder of copies and a manifest of their SHA-256 hashes.

A backup is a folder that ``confide-aggregator backup`` or ``confide-agent backup`` writes::

    DIR/manifest.json   format, kind, the release that wrote it, when, each database's schema
                        version, and every other file's SHA-256 and size
    DIR/...             the copies (their layout is the kind's: ``aggregator.backup``,
                        ``agent.local.backup``)

``manifest.json`` is written last and fsynced, so a folder without one is an interrupted
backup, which restore refuses. Restore checks every file against the manifest before it
copies anything, and refuses a missing, altered or unexpected file by name
(``Reason.BACKUP_DAMAGED``). The hashes catch damage (a failing disk, a partial copy, an
edit); they do not stop someone who rewrites the manifest too: keep backups where only the
operator can write.

SQLite files are copied online, each as of one instant, by ``confide.statecopy``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath

from confide.errors import InternalError, Reason
from confide.statefiles import private_dir, private_file

__all__ = [
    "MANIFEST",
    "BackupKind",
    "FileDigest",
    "Manifest",
    "in_use_error",
    "match_owner",
    "move_into",
    "new_backup_dir",
    "read_backup",
    "restore_target",
    "staging_dir",
    "write_manifest",
]

MANIFEST = "manifest.json"
"""The manifest's name in a backup folder."""

_FORMAT = 1
_STAGING_PREFIX = ".restore-"
_SHA_HEX = re.compile(r"[0-9a-f]{64}")


class BackupKind(Enum):
    """Whose state a backup holds; restore refuses the other kind."""

    AGGREGATOR = "aggregator"
    AGENT = "agent"


@dataclass(frozen=True)
class FileDigest:
    """One file of a backup: its SHA-256 (hex) and size in bytes."""

    sha256: str
    size: int


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What a backup holds.

    Args:
        kind: whose state.
        release: the Confide version that wrote it.
        created: unix seconds when the copy was taken.
        backend: the aggregator's store backend (``sqlite``); empty for an agent.
        schemas: each database's schema version (``PRAGMA user_version``), by file name.
        files: every file but the manifest, by its path relative to the backup folder.
    """

    kind: BackupKind
    release: str
    created: float
    backend: str
    schemas: Mapping[str, int]
    files: Mapping[str, FileDigest]


def new_backup_dir(path: Path) -> Path:
    """Create the backup folder ``path`` owner-only (0700); it may exist only empty.

    Raises:
        InternalError: ``path`` is not empty (``STATE_NOT_EMPTY``) or cannot be created.
    """
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise InternalError(
            f"{path} exists and is not an empty folder: back up into a new one",
            reason=Reason.STATE_NOT_EMPTY,
        )
    try:
        return private_dir(path)
    except OSError as exc:
        raise InternalError(f"cannot create {path}: {exc.strerror}") from exc


def write_manifest(
    folder: Path,
    *,
    kind: BackupKind,
    release: str,
    backend: str,
    schemas: Mapping[str, int],
    now: float,
) -> Manifest:
    """Hash every file in ``folder`` and write ``manifest.json`` last, durably; return it.

    Raises:
        InternalError: a file in ``folder`` is not a regular file, or the manifest cannot be
            written.
    """
    files = {name: _digest(folder / name) for name in _walk(folder) if name != MANIFEST}
    manifest = Manifest(
        kind=kind, release=release, created=now, backend=backend, schemas=schemas, files=files
    )
    body = {
        "format": _FORMAT,
        "kind": kind.value,
        "release": release,
        "created": now,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "backend": backend,
        "schemas": dict(sorted(schemas.items())),
        "files": {n: {"sha256": d.sha256, "bytes": d.size} for n, d in sorted(files.items())},
    }
    tmp = folder / f".{MANIFEST}.tmp"
    try:
        private_file(tmp)
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(body, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / MANIFEST)
        _fsync_dir(folder)
    except OSError as exc:
        raise InternalError(f"cannot write {folder / MANIFEST}: {exc.strerror}") from exc
    return manifest


def read_backup(folder: Path, *, kind: BackupKind) -> Manifest:
    """Read a backup's manifest and check every file against it; returns the manifest.

    Raises:
        InternalError: ``BACKUP_DAMAGED``: no readable manifest, a backup of another kind, or
            a file that is missing, altered (its SHA-256 differs) or not in the manifest; the
            message names the file.
    """
    manifest = _parse_manifest(folder)
    if manifest.kind is not kind:
        raise _damaged(
            f"{folder} holds a backup of an {manifest.kind.value}, not of an {kind.value}"
        )
    present = set(_walk(folder)) - {MANIFEST}
    for name, want in sorted(manifest.files.items()):
        if name not in present:
            raise _damaged(f"{folder / name} is missing from the backup")
        got = _digest(folder / name)
        if got != want:
            raise _damaged(
                f"{folder / name} was altered: its SHA-256 is {got.sha256} ({got.size} bytes), "
                f"the manifest says {want.sha256} ({want.size} bytes)"
            )
    extra = sorted(present - set(manifest.files))
    if extra:
        raise _damaged(f"{folder / extra[0]} is not in the backup's manifest")
    return manifest


def restore_target(state_dir: Path, *, force: bool, now: float) -> Path | None:
    """Make ``state_dir`` ready to receive a restore: created if missing, else empty.

    A folder with contents is refused unless ``force``; then its contents are moved aside into
    the sibling folder ``<name>.replaced-<UTC time>`` (nothing is deleted), which is returned.
    The caller has checked that no daemon has the state open (``database_in_use``).

    Raises:
        InternalError: ``STATE_NOT_EMPTY``: the folder has contents and ``force`` is False;
            or the folder cannot be created or emptied.
    """
    try:
        private_dir(state_dir)
        entries = sorted(state_dir.iterdir())
        if not entries:
            return None
        if not force:
            raise InternalError(
                f"{state_dir} is not empty: restore into an empty state folder, or pass "
                "--force to move its contents aside first",
                reason=Reason.STATE_NOT_EMPTY,
            )
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        aside = state_dir.with_name(f"{state_dir.name}.replaced-{stamp}")
        os.mkdir(aside, 0o700)
        move_into(entries, aside)
    except OSError as exc:
        raise InternalError(f"cannot prepare {state_dir} for the restore: {exc}") from exc
    return aside


def in_use_error(path: Path) -> InternalError:
    """The refusal of a restore over state that a running daemon holds open."""
    return InternalError(
        f"{path} is open in a running daemon: stop it before restoring",
        reason=Reason.STATE_NOT_EMPTY,
    )


def staging_dir(state_dir: Path) -> Path:
    """A new empty owner-only folder inside ``state_dir`` (same file system) to build in."""
    path = state_dir / f"{_STAGING_PREFIX}{secrets.token_hex(4)}"
    os.mkdir(path, 0o700)
    return path


def move_into(entries: list[Path], folder: Path) -> None:
    """Move each of ``entries`` into ``folder`` by rename, then make the renames durable.

    Raises:
        OSError: a rename failed (e.g. across file systems).
    """
    parents = {e.parent for e in entries}
    for entry in entries:
        os.replace(entry, folder / entry.name)
    for d in (*parents, folder):
        _fsync_dir(d)


def match_owner(folder: Path) -> None:
    """Run as root, give everything under ``folder`` its owner (the daemon's user).

    A restore run with sudo into a state folder that systemd made for the ``confide`` user
    would otherwise leave root-owned files the daemon cannot open. Not root: nothing to do.
    """
    if os.geteuid() != 0:
        return
    st = folder.stat()
    if st.st_uid == 0 and st.st_gid == 0:
        return
    for name in _walk(folder, dirs=True):
        os.lchown(folder / name, st.st_uid, st.st_gid)


# ----- helpers -----


def _damaged(message: str) -> InternalError:
    return InternalError(message, reason=Reason.BACKUP_DAMAGED)


def _parse_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _damaged(f"{folder} has no {MANIFEST}: not a backup, or an unfinished one") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(f"{path} cannot be read: {exc}") from exc
    try:
        if body["format"] != _FORMAT:
            raise _damaged(f"{path} has format {body['format']!r}; this release reads {_FORMAT}")
        files = {
            _safe_name(str(name)): FileDigest(str(d["sha256"]), int(d["bytes"]))
            for name, d in body["files"].items()
        }
        if any(not _SHA_HEX.fullmatch(d.sha256) for d in files.values()):
            raise _damaged(f"{path} holds a hash that is not 64 hex digits")
        return Manifest(
            kind=BackupKind(body["kind"]),
            release=str(body["release"]),
            created=float(body["created"]),
            backend=str(body["backend"]),
            schemas={_safe_name(str(k)): int(v) for k, v in body["schemas"].items()},
            files=files,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _damaged(f"{path} is not a valid manifest: {exc!r}") from exc


def _safe_name(name: str) -> str:
    """A manifest's file name, refused unless it is a plain relative path inside the backup."""
    p = PurePosixPath(name)
    if p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts):
        raise _damaged(f"the manifest names a file outside the backup: {name!r}")
    return str(p)


def _walk(folder: Path, *, dirs: bool = False) -> Iterator[str]:
    """Relative POSIX names of the regular files under ``folder`` (and folders, if asked).

    Raises:
        InternalError: an entry is neither a regular file nor a folder (a link, a socket).
    """
    for root, subdirs, names in os.walk(folder):
        base = Path(root)
        subdirs.sort()
        for name in subdirs:
            if (base / name).is_symlink():
                raise _damaged(f"{base / name} is a link, not a folder")
        for name in sorted(names) + (subdirs if dirs else []):
            path = base / name
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                raise _damaged(f"{path} is not a regular file")
            yield path.relative_to(folder).as_posix()


def _digest(path: Path) -> FileDigest:
    with path.open("rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    return FileDigest(sha, path.stat().st_size)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
