"""The site's policy checks: pure functions over a job and the site's configuration.

Each check returns nothing or raises ``PolicyRefusal`` with the reason the site reports
(STYLE rule 4). The task handlers run them before any data is touched.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from agent.admission.timewindows import TimeWindow, in_any_window
from agent.data.declared import check_schema
from confide.data.datasets import DatasetDescription
from confide.errors import ConfigError, PolicyRefusal, Reason
from confide.models import parameter_bytes
from confide.pki import CertInfo, Role
from confide.v1 import common_pb2

__all__ = [
    "ANY_TRUSTED_BUNDLE",
    "DEFAULT_MAX_MODEL_BYTES",
    "RuleRefusal",
    "check_code_allowed",
    "check_model_size",
    "check_signer",
    "check_time_window",
    "dataset_rule",
    "exposed_dataset",
]

DEFAULT_MAX_MODEL_BYTES = 512 * 1024**2
"""The largest job model a site accepts unless ``[policy] max_model_bytes`` says otherwise:
128M float32 parameters. The daemon holds the global model, the worker's copy and the update,
so a job's model size is the site's memory to give, not the aggregator's to take."""


ANY_TRUSTED_BUNDLE = "trusted-signers"
"""In ``policy.allowed_bundles``: any bundle named by a job that a trusted signer signed."""


class RuleRefusal(PolicyRefusal):
    """A refusal that names the site rule that refused, e.g. ``policy.approval``.

    The rule goes to the site's audit trail and to the aggregator's report, so whoever reads
    either knows which line of the site's policy to discuss.

    Args:
        rule: the dotted policy key (or operator action) that refused.
        message: a sentence for the site's log.
        reason: the stable reason.
        public: as for every ``ConfideError``: whether the message may go to the aggregator.
    """

    def __init__(
        self, rule: str, message: str, *, reason: Reason, public: bool | str = False
    ) -> None:
        super().__init__(message, reason=reason, public=public)
        self.rule = rule


def dataset_rule(dataset: str, key: str) -> str:
    """The dotted policy key of one dataset's limit, e.g. ``policy.datasets.heart.max_epsilon``.

    A limit a dataset's table leaves out still refuses under this name: its default applies
    there (``agent.admission.site_policy.DatasetPolicy``), and that line is where to change it.
    """
    return f"policy.datasets.{dataset}.{key}"


def check_signer(signer: CertInfo, *, trusted_signers: Collection[str]) -> None:
    """Accept a job signer only if it is an operator the site trusts.

    Args:
        signer: the verified certificate facts of the job's signer.
        trusted_signers: operator names allowed to sign jobs; empty allows every operator
            certified by the federation CA.

    Raises:
        PolicyRefusal: ``SIGNER_UNTRUSTED`` when the role is not operator or the name is not
            in ``trusted_signers``.
    """
    if signer.role is not Role.OPERATOR:
        raise RuleRefusal(
            "policy.trusted_signers",
            f"job signed by {signer.name!r} with role {signer.role.value!r}, not an operator",
            reason=Reason.SIGNER_UNTRUSTED,
            public=True,
        )
    if trusted_signers and signer.name not in trusted_signers:
        raise RuleRefusal(
            "policy.trusted_signers",
            f"job signer {signer.name!r} is not in policy.trusted_signers",
            reason=Reason.SIGNER_UNTRUSTED,
            public=True,
        )


def exposed_dataset(
    spec: common_pb2.DatasetSpec, *, datasets: Mapping[str, DatasetDescription]
) -> DatasetDescription:
    """The site dataset a job asks for, after checking it is exposed with that schema.

    Args:
        spec: the dataset the job expects (name and schema).
        datasets: the datasets this site exposes, by name.

    Raises:
        PolicyRefusal: ``UNKNOWN_DATASET`` when the site does not expose ``spec.name``;
            ``SCHEMA_MISMATCH`` when the schema differs.
    """
    cfg = datasets.get(spec.name)
    if cfg is None:
        raise RuleRefusal(
            "datasets",
            f"this site does not expose a dataset named {spec.name!r}",
            reason=Reason.UNKNOWN_DATASET,
            public=True,
        )
    try:
        check_schema(cfg, spec)
    except PolicyRefusal as exc:
        raise RuleRefusal(
            f"datasets.{spec.name}", exc.message, reason=exc.reason, public=exc.public
        ) from exc
    return cfg


def check_model_size(spec: common_pb2.JobSpec, *, max_bytes: int) -> None:
    """Refuse a job whose model is larger than the site's policy allows, before any download.

    Args:
        spec: the verified job.
        max_bytes: ``policy.max_model_bytes``.

    Raises:
        PolicyRefusal: ``MODEL_TOO_LARGE``, naming the limit; ``INVALID_JOB`` when the model
            does not fit its dataset spec.
    """
    try:
        nbytes = parameter_bytes(spec.model, spec.dataset)
    except ConfigError as exc:
        raise PolicyRefusal(f"invalid job: {exc}", reason=Reason.INVALID_JOB) from exc
    if nbytes > max_bytes:
        raise RuleRefusal(
            "policy.max_model_bytes",
            f"the job's model has {nbytes} bytes of parameters, over this site's "
            f"policy.max_model_bytes = {max_bytes}",
            reason=Reason.MODEL_TOO_LARGE,
        )


def check_code_allowed(
    model: common_pb2.ModelSpec,
    *,
    allowed_models: Collection[str] | None,
    allowed_bundles: Collection[str],
) -> None:
    """Refuse a job whose code the site does not allow: a bundle or a built-in model kind.

    A job naming a code bundle (``model.code_sha256``) runs that bundle, so the bundle must
    be listed by hash, or the site must admit any bundle of a trusted signer's job (the
    signer was checked before this). Otherwise the built-in kind must be allowed.

    Args:
        model: the signed job's model.
        allowed_models: ``policy.allowed_models`` (built-in kind names); None allows all.
        allowed_bundles: ``policy.allowed_bundles`` (hex SHA-256, or ``ANY_TRUSTED_BUNDLE``).

    Raises:
        RuleRefusal: ``CODE_NOT_ALLOWED``, rule ``policy.allowed_bundles`` or
            ``policy.allowed_models``.
    """
    if model.code_sha256:
        digest = model.code_sha256.hex()
        if ANY_TRUSTED_BUNDLE not in allowed_bundles and digest not in allowed_bundles:
            raise RuleRefusal(
                "policy.allowed_bundles",
                f"the job's code bundle {digest} is not in policy.allowed_bundles",
                reason=Reason.CODE_NOT_ALLOWED,
            )
        return
    kind = common_pb2.ModelKind.Name(model.kind).removeprefix("MODEL_KIND_").lower()
    if allowed_models is not None and kind not in allowed_models:
        raise RuleRefusal(
            "policy.allowed_models",
            f"the job's built-in model {kind!r} is not in policy.allowed_models",
            reason=Reason.CODE_NOT_ALLOWED,
        )


def check_time_window(windows: Sequence[TimeWindow], *, at: datetime) -> None:
    """Refuse training outside the site's time windows (the aggregator may ask again later).

    Args:
        windows: ``policy.time_windows``; empty allows any time.
        at: the site's local time now.

    Raises:
        RuleRefusal: ``OUTSIDE_TIME_WINDOW``, rule ``policy.time_windows``.
    """
    if not in_any_window(windows, at):
        raise RuleRefusal(
            "policy.time_windows",
            f"training is allowed only in {', '.join(w.text for w in windows)} (local time); "
            f"it is {at:%a %H:%M}",
            reason=Reason.OUTSIDE_TIME_WINDOW,
        )
