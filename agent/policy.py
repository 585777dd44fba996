"""The site's policy checks: pure functions over a job and the site's configuration.

Each check returns nothing or raises ``PolicyRefusal`` with the reason the site reports
(STYLE rule 4). The task handlers run them before any data is touched.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from agent.datasets import DatasetConfig, check_schema
from confide.errors import ConfigError, PolicyRefusal, Reason
from confide.models import parameter_bytes
from confide.pki import CertInfo, Role
from confide.v1 import common_pb2

__all__ = [
    "DEFAULT_MAX_MODEL_BYTES",
    "RuleRefusal",
    "check_model_size",
    "check_signer",
    "exposed_dataset",
]

DEFAULT_MAX_MODEL_BYTES = 512 * 1024**2
"""The largest job model a site accepts unless ``[policy] max_model_bytes`` says otherwise:
128M float32 parameters. The daemon holds the global model, the worker's copy and the update,
so a job's model size is the site's memory to give, not the aggregator's to take."""


class RuleRefusal(PolicyRefusal):
    """A refusal that names the site rule that refused, e.g. ``policy.approval``.

    The rule goes to the site's audit trail and to the aggregator's report, so whoever reads
    either knows which line of the site's policy to discuss.

    Args:
        rule: the dotted policy key (or operator action) that refused.
        message: a sentence for the site's log.
        reason: the stable reason.
    """

    def __init__(self, rule: str, message: str, *, reason: Reason) -> None:
        super().__init__(message, reason=reason)
        self.rule = rule


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
        raise PolicyRefusal(
            f"job signed by {signer.name!r} with role {signer.role.value!r}, not an operator",
            reason=Reason.SIGNER_UNTRUSTED,
        )
    if trusted_signers and signer.name not in trusted_signers:
        raise PolicyRefusal(
            f"job signer {signer.name!r} is not in policy.trusted_signers",
            reason=Reason.SIGNER_UNTRUSTED,
        )


def exposed_dataset(
    spec: common_pb2.DatasetSpec, *, datasets: Mapping[str, DatasetConfig]
) -> DatasetConfig:
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
        raise PolicyRefusal(
            f"this site does not expose a dataset named {spec.name!r}",
            reason=Reason.UNKNOWN_DATASET,
        )
    check_schema(cfg, spec)
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
        raise PolicyRefusal(
            f"the job's model has {nbytes} bytes of parameters, over this site's "
            f"policy.max_model_bytes = {max_bytes}",
            reason=Reason.MODEL_TOO_LARGE,
        )
