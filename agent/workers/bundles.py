"""A job's code bundle at the site: fetched, checked against the signed job, unpacked read-only.

The daemon never imports a bundle: it only checks and unpacks it for the worker, in this
order, before the worker starts:

1. the archive's SHA-256 against the signed job's ``model.code_sha256``
   (``confide.bundle.check_digest``), before anything else is done with the bytes (a lying
   aggregator's other archive is refused ``bundle_mismatch``);
2. every entry (``confide.bundle.unpack``): no absolute path, no ``..``, no link or device,
   bounded entry count and size, each refused with its own reason;
3. the files are written into a fresh folder of their own, files 0444 and folders 0555, which
   the sandbox binds read-only into the worker (``agent.workers.sandbox``); it is removed when
   the worker stops.

Verified archives are kept by hash in ``<state>/bundles/`` so a job's later workers (after a
crash, or the next job with the same code) need no download; a kept archive is hashed again
before each use, so one altered on disk is fetched anew. Each worker gets its own unpacked
copy, so nothing one worker could have changed reaches the next.

Refusals are ``PolicyRefusal`` with the archive's reason: the site refuses to run it. Their
messages quote archive names and hashes, never site data, so they go to the aggregator.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import structlog

from confide.bundle import MAX_BUNDLE_BYTES, check_digest, unpack, write_folder
from confide.errors import PeerError, PolicyRefusal
from confide.statefiles import private_dir

__all__ = ["SiteBundles", "remove_copy"]

log = structlog.get_logger("confide.agent")

_RUNS = "run"


class SiteBundles:
    """Checked code archives by hash, and one unpacked read-only copy per worker.

    Args:
        root: the folder (``<state>/bundles``; created 0700). Copies left by a daemon that
            died are removed here.
    """

    def __init__(self, root: Path) -> None:
        self.root = private_dir(root)
        self.runs = private_dir(self.root / _RUNS)
        for leftover in self.runs.iterdir():
            remove_copy(leftover)

    def unpacked(self, code_sha256: bytes, fetch: Callable[[], bytes]) -> Path:
        """A fresh read-only copy of the bundle the signed job names; the caller removes it.

        Args:
            code_sha256: the signed job's ``model.code_sha256``.
            fetch: downloads the archive (``Transport.download_bundle``).

        Raises:
            PolicyRefusal: the archive is not the signed one (``bundle_mismatch``) or is unsafe
                (``bundle_unsafe_path``, ``bundle_special_file``, ``bundle_too_large``,
                ``malformed``).
            ConfideError: the download failed.
            OSError: the state folder refused a write.
        """
        try:
            data = self._kept(code_sha256)
            if data is None:
                data = fetch()
                check_digest(data, code_sha256=code_sha256)  # first, before any parsing
                entries = unpack(data)
                self._keep(code_sha256, data)
            else:
                entries = unpack(data)
        except PeerError as exc:
            raise PolicyRefusal(
                f"code bundle refused: {exc.message}", reason=exc.reason, public=True
            ) from exc
        dest = self.runs / f"{code_sha256.hex()[:16]}-{secrets.token_hex(6)}"
        try:
            write_folder(entries, dest)
        except BaseException:
            remove_copy(dest)
            raise
        return dest

    def _archive(self, code_sha256: bytes) -> Path:
        return self.root / f"{code_sha256.hex()}.tar"

    def _kept(self, code_sha256: bytes) -> bytes | None:
        """The kept archive when it still hashes to its name; an altered one is dropped."""
        path = self._archive(code_sha256)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_BUNDLE_BYTES + 1)
        except FileNotFoundError:
            return None
        try:
            check_digest(data, code_sha256=code_sha256)
        except PeerError:
            log.warning("bundle_altered", bundle=code_sha256.hex(), action="fetched again")
            path.unlink(missing_ok=True)
            return None
        return data

    def _keep(self, code_sha256: bytes, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._archive(code_sha256))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def remove_copy(path: Path) -> None:
    """Remove an unpacked copy (its folders are read-only; made writable first)."""
    if not path.exists():
        return
    for dirpath, _, _ in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)
    shutil.rmtree(path, ignore_errors=True)
