"""``confide-agent backup --to DIR`` and ``restore --from DIR``: the site's state files.

The agent's state folder holds SQLite files only: ``ledger.db`` (the privacy ledger, and
beside it the job bindings, the model versions shown and the evaluation log), ``audit.db``
(the site's audit trail) and, with manual approval, ``approvals.db``. A backup copies each
``*.db`` file online, while the daemon runs, with SQLite's backup API
(``confide.statecopy.copy_database``), each as of one instant; the ledger is copied last, so
it holds every charge the other files mention. The folder::

    DIR/manifest.json    every file's SHA-256 and schema version (``confide.backup``)
    DIR/ledger.db, DIR/audit.db, ...

``restore`` runs with the agent stopped: it checks every file against the manifest, refuses
a file whose schema is newer than this release writes, builds the files in a staging folder
inside the state folder, opens each with the daemon's own code (which upgrades an older
schema: ``Ledger.open`` and the others), verifies the audit trail's hash chain, and only
then moves them into place.

A restored ledger knows only the charges made before its backup was taken: whatever the site
spent since is forgotten, and the dataset could be spent past its cap. Restore a ledger only
when the live one is lost, and then lower each dataset's ``max_epsilon`` by what the site
spent after the backup (the aggregator's job status reports each site's ε per job).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agent.admission.approvals import APPROVALS_FILE, Approvals
from agent.admission.binding import JobBindings
from agent.config import AgentConfig
from agent.local.audit import AUDIT_FILE, SiteAudit
from agent.privacy.ledger import Ledger
from agent.tasks.evaluation import Evaluations
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
from confide.errors import InternalError, Reason
from confide.statecopy import copy_database, database_in_use, user_version

__all__ = ["LEDGER_FILE", "Restored", "backup_command", "backup_state", "restore_command"]

LEDGER_FILE = "ledger.db"
"""The privacy ledger's file in the state folder (``agent.assembly`` opens it by this name)."""


@dataclass(frozen=True)
class Restored:
    """What ``restore_state`` did: the backup's manifest, the audit trail's entries verified,
    and where the state folder's earlier contents went (None: it was empty)."""

    manifest: Manifest
    audit_entries: int
    moved_aside: Path | None


def backup_command(cfg: AgentConfig, into: Path) -> int:
    """``confide-agent backup --to DIR``: back up, print what was copied; exit code 0.

    Raises:
        InternalError: as ``backup_state``.
    """
    manifest = backup_state(cfg.state_dir, into, now=time.time())
    size = sum(d.size for d in manifest.files.values())
    print(
        f"backed up {cfg.state_dir} to {into}: {', '.join(sorted(manifest.files))} ({size} bytes)"
    )
    return 0


def restore_command(cfg: AgentConfig, source: Path, *, force: bool) -> int:
    """``confide-agent restore --from DIR [--force]``: restore, print what was done.

    Raises:
        InternalError: as ``restore_state``.
    """
    done = restore_state(cfg.state_dir, source, force=force, now=time.time())
    taken = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(done.manifest.created))
    print(
        f"restored {source} (taken {taken} by release {done.manifest.release}) into "
        f"{cfg.state_dir}: audit trail of {done.audit_entries} entries verified"
    )
    if done.moved_aside is not None:
        print(f"the state folder's earlier contents are in {done.moved_aside}")
    print(
        f"warning: the privacy ledger now holds the charges made up to {taken} only; lower "
        "each dataset's max_epsilon by what this site spent since before starting the agent"
    )
    return 0


def backup_state(state_dir: Path, into: Path, *, now: float) -> Manifest:
    """Back up every SQLite file of ``state_dir`` into the new folder ``into``, online.

    Raises:
        InternalError: ``into`` is not empty, the state folder holds no ledger, or a copy
            cannot be written.
    """
    if not (state_dir / LEDGER_FILE).is_file():
        raise InternalError(f"there is no privacy ledger in {state_dir}: nothing to back up")
    folder = new_backup_dir(into)
    names = sorted(p.name for p in state_dir.glob("*.db") if p.is_file())
    names.sort(key=lambda n: n == LEDGER_FILE)  # the ledger last: see the module docstring
    schemas = {name: copy_database(state_dir / name, folder / name) for name in names}
    return write_manifest(
        folder, kind=BackupKind.AGENT, release=__version__, backend="", schemas=schemas, now=now
    )


def restore_state(state_dir: Path, source: Path, *, force: bool = False, now: float) -> Restored:
    """Restore the backup in ``source`` into the (stopped) agent's ``state_dir``.

    Args:
        force: move a non-empty state folder's contents aside instead of refusing.

    Raises:
        InternalError: ``BACKUP_DAMAGED`` (a file missing, altered or unexpected, a file that
            is not a database, a broken audit chain), ``SCHEMA_TOO_NEW`` (a file written by a
            newer release), ``STATE_NOT_EMPTY`` (state present without ``force``, or in use by
            a running agent), or the state cannot be written.
    """
    manifest = read_backup(source, kind=BackupKind.AGENT)
    names = sorted(manifest.files)
    if LEDGER_FILE not in names or any("/" in n or not n.endswith(".db") for n in names):
        raise InternalError(
            f"{source} does not hold an agent's state files (a {LEDGER_FILE} and *.db files)",
            reason=Reason.BACKUP_DAMAGED,
        )
    known = schema_versions()
    for name in names:
        version = user_version(source / name)
        if version > known.get(name, 0):
            raise InternalError(
                f"{source / name} has schema {version}, written by release {manifest.release}; "
                f"this release ({__version__}) writes {known.get(name, 0)}: restore it with "
                f"release {manifest.release} or newer",
                reason=Reason.SCHEMA_TOO_NEW,
            )
    for path in sorted(state_dir.glob("*.db")):
        if database_in_use(path):
            raise in_use_error(path)
    aside = restore_target(state_dir, force=force, now=now)
    stage = staging_dir(state_dir)
    try:
        for name in names:
            copy_database(source / name, stage / name)
        audit_entries = open_state(stage)
        move_into(sorted(stage.iterdir()), state_dir)
        stage.rmdir()
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    match_owner(state_dir)
    return Restored(manifest=manifest, audit_entries=audit_entries, moved_aside=aside)


def open_state(folder: Path) -> int:
    """Open every state file in ``folder`` as the daemon does (creating a missing one and
    upgrading an older schema), verify the audit trail, close; returns its entry count.

    Raises:
        InternalError: a file cannot be opened, or its schema is newer than this code's.
        AuditTampered: the audit trail's chain is broken (``BACKUP_DAMAGED`` in restore).
    """
    ledger = Ledger.open(folder / LEDGER_FILE)
    audit = SiteAudit(folder / AUDIT_FILE)
    closers = [ledger.close, audit.close]
    try:
        closers.append(JobBindings(folder / LEDGER_FILE).close)
        closers.append(Evaluations(folder / LEDGER_FILE, privacy=None).close)
        if (folder / APPROVALS_FILE).exists():
            closers.append(Approvals(folder / APPROVALS_FILE, audit=audit).close)
        try:
            return audit.verify()
        except InternalError as exc:
            raise InternalError(
                f"the audit trail in {folder / AUDIT_FILE} does not verify: {exc}",
                reason=Reason.BACKUP_DAMAGED,
            ) from exc
    finally:
        for close in reversed(closers):
            close()


def schema_versions() -> dict[str, int]:
    """The schema version (``PRAGMA user_version``) of each state file as this release
    writes it: read from files freshly made by the daemon's own code, in a scratch folder."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        open_state(folder)
        scratch = SiteAudit(":memory:")
        Approvals(folder / APPROVALS_FILE, audit=scratch).close()
        scratch.close()
        return {p.name: user_version(p) for p in sorted(folder.glob("*.db"))}
