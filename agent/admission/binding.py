"""Each operator-signed job runs under one job id at this site, ever.

The operator signs a job before the aggregator assigns its id, so the same signed job could
be submitted again and again, each copy a new job id with fresh rounds on the site's data.
The site records the digest of every signed job with the first job id it arrived under (in
its own SQLite, next to the privacy ledger) and refuses the digest under any other id.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

from confide.errors import PolicyRefusal, Reason
from confide.statefiles import open_database
from confide.v1 import common_pb2

__all__ = ["JobBindings"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS signed_jobs (
    digest TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    first_seen REAL NOT NULL
);
"""


class JobBindings:
    """The durable map from signed-job digest to the job id it first ran under.

    Args:
        path: the SQLite file (the agent uses its ledger file).
    """

    def __init__(self, path: Path) -> None:
        self._conn = open_database(path, schema=_SCHEMA, what="job bindings")
        self._lock = threading.Lock()

    def bind(self, signed_job: common_pb2.Envelope, job_id: str) -> None:
        """Record ``signed_job`` under ``job_id``, or refuse it if it ran under another id.

        Raises:
            PolicyRefusal: REPLAYED when this signed job was seen under another job id.
        """
        digest = hashlib.sha256(signed_job.SerializeToString(deterministic=True)).hexdigest()
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO signed_jobs (digest, job_id, first_seen) VALUES (?, ?, ?)",
                (digest, job_id, time.time()),
            )
            (bound,) = self._conn.execute(
                "SELECT job_id FROM signed_jobs WHERE digest = ?", (digest,)
            ).fetchone()
        if bound != job_id:
            raise PolicyRefusal(
                f"this signed job already ran here as job {bound}; the operator must sign it "
                "again to run it as a new job",
                reason=Reason.REPLAYED,
                public=True,
            )

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()
