"""Where workers' stderr goes: one file per job, named by hash, the folder kept bounded."""

from __future__ import annotations

import os

from agent.workers.pool import KEPT_STDERR_FILES, stderr_file


def test_a_hostile_job_id_cannot_steer_the_file_name(tmp_path):
    """The aggregator picks job ids: ``../`` and the like become a hex name in the folder."""
    path = stderr_file(tmp_path, "../../etc/passwd")
    assert path.parent == tmp_path
    assert path.name.endswith(".stderr") and all(c in "0123456789abcdef" for c in path.stem)
    assert stderr_file(tmp_path, "../../etc/passwd") == path != stderr_file(tmp_path, "other")


def test_only_the_newest_jobs_files_are_kept(tmp_path):
    """Past the cap the oldest files go, so a site running many jobs keeps a bounded folder."""
    for i in range(KEPT_STDERR_FILES + 10):
        path = stderr_file(tmp_path, f"job-{i}")
        path.write_text("x")
        os.utime(path, (i, i))
    files = sorted(tmp_path.glob("*.stderr"))
    assert len(files) == KEPT_STDERR_FILES
    assert stderr_file(tmp_path, "job-0") not in files
    assert stderr_file(tmp_path, f"job-{KEPT_STDERR_FILES + 9}") in files
