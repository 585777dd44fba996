"""Which privacy layers a site counts for a job: only those that do not rest on the job's code.

For a built-in model, record-level DP-SGD runs in the worker on Confide's own runtime
(``confide_worker``). A code-bundle job's Python code is imported into that same worker
process, so hostile code can monkeypatch torch or Opacus and skip the per-record clipping and
noise while the worker still says it ran them: the record-level ε charged for it would then be
a claim the site cannot stand behind. The update-level layer (clip and noise applied by the
daemon, ``agent.privacy.plan.protect_update``, and the secure-aggregation noise) never runs
job code, so it is always counted.

So a site counts a bundle job's DP-SGD only when its policy says ``[policy]
trust_bundle_dp_sgd = true`` (after reviewing the code). Otherwise the worker still runs
DP-SGD as the signed job asks (the code may be honest; it is only not counted) and the round
costs what the update-level layer alone guarantees.
"""

from __future__ import annotations

from confide.v1 import common_pb2

__all__ = ["RECORD_NOT_COUNTED", "counts_record_layer", "uncounted_note"]

RECORD_NOT_COUNTED = "record-level DP-SGD not counted: it runs in the job's code"
"""What the site's records (audit trail, pending approvals) say of such a job."""


def counts_record_layer(spec: common_pb2.JobSpec, *, trust_bundle_dp_sgd: bool) -> bool:
    """Whether the site counts the job's record-level DP-SGD (False also when it has none).

    Args:
        spec: the verified job.
        trust_bundle_dp_sgd: the site's ``policy.trust_bundle_dp_sgd``.
    """
    if not spec.record_privacy.enabled:
        return False
    # Either mark makes it job code (validate_job requires both together; checked anyway).
    bundle = spec.model.kind == common_pb2.MODEL_KIND_BUNDLE or bool(spec.model.code_sha256)
    return trust_bundle_dp_sgd or not bundle


def uncounted_note(spec: common_pb2.JobSpec, *, trust_bundle_dp_sgd: bool) -> str:
    """``RECORD_NOT_COUNTED`` for a job whose DP-SGD the site does not count, else ""."""
    if spec.record_privacy.enabled and not counts_record_layer(
        spec, trust_bundle_dp_sgd=trust_bundle_dp_sgd
    ):
        return RECORD_NOT_COUNTED
    return ""
