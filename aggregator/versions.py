"""Every global model version of a job with the metrics that evaluated it.

Round r starts from version r - 1 and each site evaluates that input model on its hold-out
records before training, so round r's recorded accuracy and loss are version r - 1's. The
last version is evaluated by the job's final evaluation. Listing them all lets an operator
pick the best version, which need not be the last (a long job can drift past its best).
"""

from __future__ import annotations

from collections.abc import Mapping

from aggregator.store import ModelRow, RoundRow
from confide.v1 import admin_pb2

__all__ = ["MAX_VERSIONS", "model_versions"]

MAX_VERSIONS = 1000
"""Versions listed in one status: past it, the newest and the best evaluated one (so a reply
stays small for a job of many rounds; each entry is about 100 bytes)."""


def model_versions(
    models: list[ModelRow], rounds: list[RoundRow], final: Mapping[str, float]
) -> list[admin_pb2.ModelVersion]:
    """The job's versions, oldest first, each with its hold-out metrics (zeros: not evaluated).

    Args:
        models: the job's stored versions (``Store.models``).
        rounds: the job's rounds (``Store.rounds``); a done round's metrics evaluate its input.
        final: the final evaluation's metrics (``JobRow.final_metrics``), of the last version.
    """
    by_version = {rr.round - 1: rr.metrics for rr in rounds if rr.state == "done"}
    if models and final:
        by_version[models[-1].version_no] = dict(final)
    out: list[admin_pb2.ModelVersion] = []
    for m in models:
        metrics = by_version.get(m.version_no, {})
        out.append(
            admin_pb2.ModelVersion(
                version=m.version_no,
                sha256=m.sha256,
                accuracy=metrics.get("accuracy", 0.0),
                loss=metrics.get("loss", 0.0),
                eval_samples=int(metrics.get("eval_samples", 0)),
                created=m.created,
            )
        )
    if len(out) <= MAX_VERSIONS:
        return out
    evaluated = [v for v in out if v.eval_samples]
    best = max(evaluated, key=lambda v: (v.accuracy, v.version), default=None)
    newest = out[-(MAX_VERSIONS - 1) :]
    if best is not None and best.version < newest[0].version:
        return [best, *newest]
    return out[-MAX_VERSIONS:]
