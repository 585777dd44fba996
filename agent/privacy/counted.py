"""Which privacy layers a site counts for a job: only those that do not rest on the job's code.

For a built-in model, record-level DP-SGD runs in the worker on Confide's own runtime
(``confide_worker``). A code-bundle job's Python code is imported into that same worker
process, so hostile code can monkeypatch torch or Opacus and skip the per-record clipping and
noise while the worker still says it ran them: the record-level ε charged for it would then be
a claim the site cannot stand behind. The update-level layer (clip and noise applied by the
daemon, ``agent.privacy.plan.protect_update``, and the secure-aggregation noise) never runs
job code, so it is always counted.

The same holds for noised hold-out figures (``agent.tasks.evaluation``): the worker counts
correct records and sums losses next to the job's code, which could make the counts depend
on every record, so noise calibrated to one record would not cover them.

So a site counts a bundle job's DP-SGD, and releases its noised hold-out figures, only when
its policy says ``[policy] trust_bundle_dp = true`` (after reviewing the code). Otherwise
the worker still runs DP-SGD as the signed job asks (the code may be honest; it is only not
counted), the round costs what the update-level layer alone guarantees, and noised hold-out
figures are refused.
"""

from __future__ import annotations

from confide.v1 import common_pb2

__all__ = ["RECORD_NOT_COUNTED", "counts_record_layer", "runs_job_code", "uncounted_note"]

RECORD_NOT_COUNTED = "record-level DP-SGD not counted: it runs in the job's code"
"""What the site's records (audit trail, pending approvals) say of such a job."""


def runs_job_code(spec: common_pb2.JobSpec) -> bool:
    """Whether the job's own code (a code bundle) runs in the worker next to its figures.

    Either mark makes it job code (``validate_job`` requires both together; checked anyway).
    """
    return spec.model.kind == common_pb2.MODEL_KIND_BUNDLE or bool(spec.model.code_sha256)


def counts_record_layer(spec: common_pb2.JobSpec, *, trust_bundle_dp: bool) -> bool:
    """Whether the site counts the job's record-level DP-SGD (False also when it has none).

    Args:
        spec: the verified job.
        trust_bundle_dp: the site's ``policy.trust_bundle_dp``.
    """
    if not spec.record_privacy.enabled:
        return False
    return trust_bundle_dp or not runs_job_code(spec)


def uncounted_note(spec: common_pb2.JobSpec, *, trust_bundle_dp: bool) -> str:
    """``RECORD_NOT_COUNTED`` for a job whose DP-SGD the site does not count, else ""."""
    if spec.record_privacy.enabled and not counts_record_layer(
        spec, trust_bundle_dp=trust_bundle_dp
    ):
        return RECORD_NOT_COUNTED
    return ""
