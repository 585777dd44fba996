"""``confide-aggregator backup --to DIR`` and ``restore --from DIR``: the aggregator's state.

A backup is taken online, while the aggregator runs: the store copies its rows as of one
instant (``Store.backup``; SQLite's backup API), then every blob those rows name (model
versions, optimizer states, bundle jobs' code archives and initial weights: the one list in
``aggregator.store.refs``, which the blob collection keeps too) is copied through the
``BlobStore``. Blobs are written durably before the rows that name them, never change, and
are never collected while a row names them, so each one the copy names exists and is whole.
The backup folder::

    DIR/manifest.json     every file's SHA-256 (``confide.backup``), written last
    DIR/store/...         what Store.backup wrote (SQLite: aggregator.db)
    DIR/blobs/ab/ab...    each named blob and its header, laid out as on disk

``restore`` runs with the aggregator stopped. It checks every file against the manifest and
the store's schema against this release before it touches the state folder; builds the
store and blobs in a staging folder inside it; opens the store there (which upgrades an
older schema), verifies its audit chain and that every blob its rows name is present;
and only then moves the result into place. The state folder must be empty, or ``--force``
moves what is there aside (into ``<state>.replaced-<time>``; nothing is deleted).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from aggregator.audit import AuditTampered
from aggregator.config import AggregatorConfig, load_config
from aggregator.store import open_blobs, open_store
from aggregator.store.blobs import FileBlobStore
from aggregator.store.factory import restore_store, schema_version, store_in_use
from aggregator.store.interface import BlobStore
from confide import __version__
from confide.backup import (
    BackupKind,
    Manifest,
    in_use_error,
    match_owner,
    move_into,
    new_backup_dir,
    read_backup,
    restore_target,
    staging_dir,
    write_manifest,
)
from confide.bundle import MAX_BUNDLE_BYTES
from confide.errors import InternalError, Reason
from confide.statefiles import private_dir

__all__ = ["Restored", "backup_command", "backup_state", "restore_command", "restore_state"]

_STORE = "store"
_BLOBS = "blobs"


@dataclass(frozen=True)
class Restored:
    """What ``restore_state`` did: the backup's manifest, audit entries verified, blobs put
    back, and where the state folder's earlier contents went (None: it was empty)."""

    manifest: Manifest
    audit_entries: int
    blobs: int
    moved_aside: Path | None


def backup_command(config_path: Path, into: Path) -> int:
    """``confide-aggregator backup --to DIR``: back up, print what was copied; exit code 0.

    Raises:
        ConfigError: the config file is wrong.
        InternalError: as ``backup_state``.
    """
    config = load_config(config_path)
    manifest = backup_state(config, into, now=time.time())
    size = sum(d.size for d in manifest.files.values())
    blobs = sum(1 for n in manifest.files if n.startswith(f"{_BLOBS}/"))
    print(
        f"backed up {config.state_dir} to {into}: {len(manifest.files)} files, {size} bytes "
        f"(store schema {max(manifest.schemas.values(), default=0)}, {blobs // 2} model blobs)"
    )
    return 0


def restore_command(config_path: Path, source: Path, *, force: bool) -> int:
    """``confide-aggregator restore --from DIR [--force]``: restore, print what was done.

    Raises:
        ConfigError: the config file is wrong.
        InternalError: as ``restore_state``.
    """
    config = load_config(config_path)
    done = restore_state(config, source, force=force, now=time.time())
    taken = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(done.manifest.created))
    print(
        f"restored {source} (taken {taken} by release {done.manifest.release}) into "
        f"{config.state_dir}: {done.blobs} model blobs, audit chain of "
        f"{done.audit_entries} entries verified"
    )
    if done.moved_aside is not None:
        print(f"the state folder's earlier contents are in {done.moved_aside}")
    print("next: start the aggregator (systemctl start confide-aggregator)")
    return 0


def backup_state(config: AggregatorConfig, into: Path, *, now: float) -> Manifest:
    """Back up the aggregator's state into the new folder ``into`` while it may be running.

    Raises:
        InternalError: ``into`` is not empty, there is no store, a named blob is missing or
            damaged in the state folder, or the backup cannot be written.
    """
    folder = new_backup_dir(into)
    store = open_store(config.store, state_dir=config.state_dir, create=False)
    try:
        snap = store.backup(private_dir(folder / _STORE))
    finally:
        store.close()
    _copy_blobs(
        open_blobs(config.store, state_dir=config.state_dir),
        FileBlobStore(folder / _BLOBS),
        snap.blobs.names,
        where=config.state_dir,
    )
    return write_manifest(
        folder,
        kind=BackupKind.AGGREGATOR,
        release=__version__,
        backend=config.store.backend.value,
        schemas={f"{_STORE}/{name}": snap.schema for name in snap.files},
        now=now,
    )


def restore_state(
    config: AggregatorConfig, source: Path, *, force: bool = False, now: float
) -> Restored:
    """Restore the backup in ``source`` into the (stopped) aggregator's state folder.

    Args:
        force: move a non-empty state folder's contents aside instead of refusing.

    Raises:
        InternalError: ``BACKUP_DAMAGED`` (a file missing, altered or unexpected; the audit
            chain or a model's blob is wrong), ``SCHEMA_TOO_NEW`` (written by a newer
            release), ``STATE_NOT_EMPTY`` (state present without ``force``, or in use by a
            running aggregator), or the state cannot be written.
    """
    manifest = read_backup(source, kind=BackupKind.AGGREGATOR)
    if manifest.backend != config.store.backend.value:
        raise InternalError(
            f"{source} holds a {manifest.backend} store; this aggregator's [store] backend "
            f"is {config.store.backend.value}",
            reason=Reason.INVALID_VALUE,
        )
    known = schema_version(config.store)
    for name, version in sorted(manifest.schemas.items()):
        if version > known:
            raise InternalError(
                f"{source / name} holds store schema {version}, written by release "
                f"{manifest.release}; this release ({__version__}) knows schemas up to "
                f"{known}: restore it with release {manifest.release} or newer",
                reason=Reason.SCHEMA_TOO_NEW,
            )
    state_dir = config.state_dir
    if store_in_use(config.store, state_dir=state_dir):
        raise in_use_error(state_dir)
    aside = restore_target(state_dir, force=force, now=now)
    stage = staging_dir(state_dir)
    try:
        blobs = _build(config, manifest, source, stage)
        audit_entries = _check(config, stage)
        move_into(sorted(stage.iterdir()), state_dir)
        stage.rmdir()
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    match_owner(state_dir)
    return Restored(manifest=manifest, audit_entries=audit_entries, blobs=blobs, moved_aside=aside)


def _build(config: AggregatorConfig, manifest: Manifest, source: Path, stage: Path) -> int:
    """Write the store and blobs of the backup into ``stage``; returns the blobs put back."""
    prefix = f"{_STORE}/"
    files = sorted(n.removeprefix(prefix) for n in manifest.files if n.startswith(prefix))
    restore_store(config.store, source=source / _STORE, files=files, state_dir=stage)
    names = {
        Path(n).name
        for n in manifest.files
        if n.startswith(f"{_BLOBS}/") and not n.endswith(".header")
    }
    _copy_blobs(
        FileBlobStore(source / _BLOBS),
        open_blobs(config.store, state_dir=stage),
        frozenset(names),
        where=source,
    )
    return len(names)


def _check(config: AggregatorConfig, stage: Path) -> int:
    """Open the restored store (upgrading it), verify its audit chain and that every blob its
    rows name is there (``Store.blob_refs``); returns the number of audit entries."""
    store = open_store(config.store, state_dir=stage)
    blobs = open_blobs(config.store, state_dir=stage)
    try:
        try:
            entries = store.verify_audit_chain()
        except AuditTampered as exc:
            raise InternalError(
                f"the restored audit chain does not verify: {exc}", reason=Reason.BACKUP_DAMAGED
            ) from exc
        refs = store.blob_refs()
        missing = sorted(
            [("model blob", sha) for sha in refs.models if not blobs.has(sha)]
            + [("code bundle", sha) for sha in refs.archives if not blobs.has_bytes(sha)]
        )
        if missing:
            what, sha = missing[0]
            raise InternalError(
                f"the restored store names {what} {sha}, which the backup does not hold "
                f"({len(missing)} blobs missing in all)",
                reason=Reason.BACKUP_DAMAGED,
            )
    finally:
        store.close()
    return entries


def _copy_blobs(src: BlobStore, dest: BlobStore, names: frozenset[str], *, where: Path) -> None:
    """Copy each named blob; re-hashing on the way catches a damaged one.

    Raises:
        InternalError: a blob is missing from ``src`` or its bytes hash to another name.
    """
    for sha in sorted(names):
        if not src.has(sha) and src.has_bytes(sha):  # a code archive: bytes, no header
            try:
                dest.put_bytes(src.read_bytes(sha, max_bytes=MAX_BUNDLE_BYTES))
            except InternalError as exc:
                raise InternalError(
                    f"code bundle {sha} in {where} is damaged: {exc}", reason=Reason.BACKUP_DAMAGED
                ) from exc
            continue
        try:
            arrays = src.load(sha)
        except FileNotFoundError:
            raise InternalError(
                f"model blob {sha} is missing from {where}", reason=Reason.BACKUP_DAMAGED
            ) from None
        got, _ = dest.put(list(arrays))
        if got != sha:
            raise InternalError(
                f"model blob {sha} in {where} is damaged: its bytes hash to {got}",
                reason=Reason.BACKUP_DAMAGED,
            )
