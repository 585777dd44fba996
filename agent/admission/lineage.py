"""Which models this site will touch for a job: each version pinned to one model, for good.

The aggregator names a task's model by hash and says where it sits in the job's version chain
(``Task.lineage``, ``confide.lineage``). The site keeps, durably next to its ledger, every
version of every job it has been shown, and refuses (``untied_model``) a task whose model
it cannot tie to the job:

- version 0 must be the initial model the signed job's seed defines (recomputed here);
- version k is pinned to the first model shown as version k; another model as version k, or
  a parent other than the chain value this site holds for version k - 1 (or a recorded
  version k + 1 that does not link to it), is a fork;
- a TRAIN task of round r trains version r - 1; no version is past the job's signed rounds;
- an EVALUATE task asks for a version this site trained on, or for the final version
  (k = rounds) whose parent is a version this site trained on: the model the rounds it took
  part in led to.

So a job shows a site at most ``rounds + 1`` distinct models, in one order, and the site
evaluates only those it trained on and the final one. What the site cannot check is that
version k really is the aggregate of round k: a lying aggregator still chooses which model
each version is (README "Evaluation").
"""

from __future__ import annotations

import enum
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from confide.errors import InternalError, MalformedMessage, PolicyRefusal, Reason
from confide.lineage import CHAIN_BYTES, chain_anchor, chain_link, initial_model_sha
from confide.statefiles import open_database
from confide.v1 import common_pb2, federation_pb2
from confide.wire import encode_tensors
from confide.wire.blob import NamedArrays

__all__ = ["ModelVersions", "PinnedModel", "Purpose", "check_model_bytes"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_versions (
    job_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    chain BLOB NOT NULL,
    trained INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    PRIMARY KEY (job_id, version)
);
"""


class Purpose(enum.Enum):
    """What a task wants to do with its model."""

    TRAIN = "train"
    EVALUATE = "evaluate"


@dataclass(frozen=True)
class PinnedModel:
    """A model tied to its job: version k, its blob hash, chain_k, and whether it is final."""

    job_id: str
    version: int
    sha256: str
    chain: bytes
    final: bool


@dataclass(frozen=True)
class _Row:
    sha256: str
    chain: bytes
    trained: bool


class ModelVersions:
    """The durable record of each job's versions this site was shown (one SQLite table).

    Args:
        path: the SQLite file (the agent uses its ledger file); ``:memory:`` for tests.
    """

    def __init__(self, path: Path | str = ":memory:") -> None:
        self._conn = open_database(path, schema=_SCHEMA, what="model versions")
        self._lock = threading.Lock()
        self._initial: dict[bytes, str] = {}

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def pin(
        self, task: federation_pb2.Task, *, spec: common_pb2.JobSpec, purpose: Purpose
    ) -> PinnedModel:
        """Tie the task's model to its job and record it (durably) before it is used.

        Args:
            task: the task, its signed job already verified (``spec`` is its payload).
            spec: the verified job spec.
            purpose: TRAIN (marks the version trained on) or EVALUATE.

        Raises:
            PolicyRefusal: UNTIED_MODEL with what did not tie (no lineage, version out of
                range, not the initial model, a fork, an EVALUATE of a model this site
                neither trained on nor can tie to a round it took part in).
        """
        if not task.HasField("lineage"):
            raise _untied("the task does not say where its model sits in the job's versions")
        k, sha, rounds = int(task.lineage.version), task.model_version, int(spec.rounds)
        if k > rounds:
            raise _untied(f"version {k} is past the job's {rounds} rounds")
        if purpose is Purpose.TRAIN and k != task.round - 1:
            raise _untied(f"round {task.round} trains version {task.round - 1}, not {k}")
        initial = self._initial_sha(task.signed_job, spec) if k == 0 else ""
        try:
            if k == 0:
                if sha != initial:
                    raise _untied("version 0 is not the initial model of the signed job")
                parent = chain_anchor(job_id=task.job_id, signed_job=task.signed_job)
            else:
                parent = bytes(task.lineage.parent_chain)
                if len(parent) != CHAIN_BYTES:
                    raise _untied(f"the parent chain value is not {CHAIN_BYTES} bytes")
            chain = chain_link(parent, version=k, model_sha=sha)
        except MalformedMessage as exc:
            raise _untied(str(exc)) from exc
        with self._lock:
            rows = self._rows(task.job_id, (k - 1, k, k + 1))
            before, same, after = rows.get(k - 1), rows.get(k), rows.get(k + 1)
            if k > 0 and before is not None and before.chain != parent:
                raise _untied(f"version {k}'s parent is not the version {k - 1} this site holds")
            if same is not None and (same.sha256, same.chain) != (sha, chain):
                raise _untied(f"version {k} of this job was another model")
            if after is not None and chain_link(chain, version=k + 1, model_sha=after.sha256) != (
                after.chain
            ):
                raise _untied(f"version {k + 1}, which this site holds, does not follow it")
            if purpose is Purpose.EVALUATE:
                trained = same is not None and same.trained
                after_mine = k == rounds and before is not None and before.trained
                if not (trained or after_mine):
                    raise _untied(
                        f"version {k} is neither a model this site trained on nor the final "
                        "model after a round it took part in"
                    )
            self._record(task.job_id, k, sha, chain, trained=purpose is Purpose.TRAIN)
        return PinnedModel(task.job_id, k, sha, chain, final=k == rounds)

    def versions(self, job_id: str) -> list[tuple[int, str, bool]]:
        """(version, model hash, trained on) of a job as this site holds them, in order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT version, sha256, trained FROM model_versions WHERE job_id = ? "
                "ORDER BY version",
                (job_id,),
            ).fetchall()
        return [(int(v), str(s), bool(t)) for v, s, t in rows]

    def _initial_sha(self, signed_job: common_pb2.Envelope, spec: common_pb2.JobSpec) -> str:
        key = signed_job.SerializeToString(deterministic=True)
        if key not in self._initial:
            self._initial[key] = initial_model_sha(spec)
        return self._initial[key]

    def _rows(self, job_id: str, versions: tuple[int, ...]) -> dict[int, _Row]:
        marks = ",".join("?" * len(versions))
        found = self._conn.execute(
            "SELECT version, sha256, chain, trained FROM model_versions "
            f"WHERE job_id = ? AND version IN ({marks})",
            (job_id, *versions),
        ).fetchall()
        return {int(v): _Row(str(s), bytes(c), bool(t)) for v, s, c, t in found}

    def _record(self, job_id: str, k: int, sha: str, chain: bytes, *, trained: bool) -> None:
        try:
            self._conn.execute(
                "INSERT INTO model_versions VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (job_id, version) DO UPDATE SET trained = MAX(trained, ?)",
                (job_id, k, sha, chain, int(trained), time.time(), int(trained)),
            )
        except sqlite3.Error as exc:
            raise InternalError(f"cannot record model version: {exc}") from exc


def check_model_bytes(weights: NamedArrays, *, model_sha: str) -> None:
    """Refuse downloaded weights whose blob hash is not the version the task named.

    Raises:
        PolicyRefusal: UNTIED_MODEL when the aggregator served other bytes.
    """
    header, _ = encode_tensors(weights)
    if header.sha256.hex() != model_sha:
        raise _untied("the downloaded model is not the version the task names")


def _untied(message: str) -> PolicyRefusal:
    return PolicyRefusal(message, reason=Reason.UNTIED_MODEL)
