"""Jobs as operators write them (TOML) and as the wire carries them (``JobSpec``).

``job_from_toml`` reads a job file with keys named as below; ``validate_job`` checks a
``JobSpec``. It is the one check of a job: the aggregator calls it at SubmitJob (so a bad job
is refused before any site sees it), every site calls it again on the signed job, and
``confide job check`` runs it locally. Every error is a ``ConfigError`` naming the TOML key,
e.g. ``privacy.sample.delta``; every table refuses keys it does not know, so a typo such as
``noise_multipler`` is an error, never a silent "no noise".

A key that would be accepted and then do nothing is refused the same way, on the wire too:
``training.device`` (each site trains where its own ``worker.device`` says),
``target_accuracy`` (acceptance criteria are not implemented); the code-bundle fields on a
built-in model; and a ``JobSpec`` carrying a field this version does not know (a newer
operator's key) is refused, never ignored.

::

    name = "breast-cancer"        rounds = 5        min_sites = 3      round_timeout_s = 120
    max_round_attempts = 3    max_job_retries = 2 # what a site pays for (defaults shown)
    [model]       kind = "logreg|mlp|cnn|fixed_delta"   hidden = [32]   fixed_delta_params = N
          or:     code = "bundles/digits_cnn"   # the job's own code (confide.bundle), with
                  initial_weights = "digits_cnn.safetensors"   # from confide job init-weights
                  # (both relative to the job file; read by confide.jobfile.load_job)
    [dataset]     name = "breast_cancer"  features = [...]  label = "target"  num_classes = 2
                  input_shape = [1, 8, 8]         # cnn only
                  feature_mean = [...]  feature_scale = [...]   # standardization (optional)
    [training]    local_epochs = 1  batch_size = 32  learning_rate = 0.1  seed = 0
                  server_optimizer = "fedavg|fedadam"  server_learning_rate = 1.0
                  fix_unsupported_layers = false   # bundle + DP-SGD: Opacus's ModuleValidator.fix
    [privacy.sample]   # record-level DP-SGD in the worker (absent: none)
                  noise_multiplier = 1.1 | target_epsilon = 3.0   max_grad_norm = 1.0
                  delta = 1e-5   accountant = "rdp|prv"
    [privacy.update]   # update-level clip + noise by the daemon
                  clip_norm = 1.0   noise_multiplier = 0.5   delta = 1e-5
                  mechanism = "discrete_gaussian|continuous_gaussian"  # secure jobs only;
                  # default discrete (confide.secagg.encoding); continuous only where the
                  # clip to [-clip_range, clip_range] provably cannot bite
    [secure_aggregation]  enabled = true  threshold = 0.66  neighbours = "auto" | k
                  clip_range = 1.0  bits = 16  stage_timeout_s = 30
    [aggregation] # what bounds one site's pull on a plaintext model (absent: uniform mean)
                  rule = "fedavg|mean|trimmed_mean|median"  max_sample_weight = 5000
                  trim_fraction = 0.2   max_eval_samples = 1000
    [evaluation]  # hold-out evaluations each site may release (confide.dp.evaluation)
                  max_evaluations = rounds + 1   noise_multiplier = 10.0   loss_clip = 5.0
                  # noise_multiplier = 0: exact, answered only by sites whose policy allows it
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from confide.config import Section
from confide.errors import ConfigError, Reason
from confide.models import parameter_shapes
from confide.secagg.encoding import secure_encoding
from confide.secagg.params import DEFAULT_THRESHOLD, job_rules
from confide.secagg.quantize import DEFAULT_BITS, DEFAULT_CLIP_RANGE
from confide.v1 import common_pb2
from confide.wire.bounds import MAX_RECORDS

__all__ = [
    "DEFAULT_EVALUATION_NOISE",
    "DEFAULT_JOB_RETRIES",
    "DEFAULT_LOSS_CLIP",
    "DEFAULT_ROUND_ATTEMPTS",
    "DEFAULT_STAGE_TIMEOUT_S",
    "HELD_UPDATES_MAX_BYTES",
    "MAX_ROUNDS",
    "JobFile",
    "ModelName",
    "attempt_limits",
    "job_from_toml",
    "normalize",
    "read_job",
    "validate_aggregation",
    "validate_job",
]

HELD_UPDATES_MAX_BYTES = 1 << 30
"""The most update bytes a robust (trimmed-mean, median) round may hold at the aggregator."""

MAX_ROUNDS = 100_000
MAX_ROUND_ATTEMPTS = 100
MAX_JOB_RETRIES = 100_000

DEFAULT_ROUND_ATTEMPTS = 3
"""Attempts of one round a site pays for when the job names none (one try, two retries)."""

DEFAULT_JOB_RETRIES = 2
"""Attempts beyond one per round a site pays for over a whole job when the job names none.

Small on purpose: a ``target_epsilon`` job's noise is planned for ``rounds + retries``
attempts, so every allowed retry costs noise in every round (``agent.privacy.plan``)."""

DEFAULT_STAGE_TIMEOUT_S = 60.0
"""Seconds each SecAgg+ stage after ADVERTISE waits when a secure job names none."""

_SERVER_OPTIMIZERS = (
    common_pb2.SERVER_OPTIMIZER_UNSPECIFIED,
    common_pb2.SERVER_OPTIMIZER_FEDAVG,
    common_pb2.SERVER_OPTIMIZER_FEDADAM,
)

DEFAULT_EVALUATION_NOISE = 10.0
"""z of a job file's ``[evaluation]`` when it names none: ε ≈ 0.38 per evaluation at δ = 1e-5."""

DEFAULT_LOSS_CLIP = 5.0
"""L of a job file's ``[evaluation]`` when it names none (ln 2 ≈ 0.69 is a coin flip's loss)."""


class ModelName(enum.Enum):
    """Built-in models by the name a job file uses."""

    LOGREG = "logreg"
    MLP = "mlp"
    CNN = "cnn"
    FIXED_DELTA = "fixed_delta"


_MODEL_KIND = {
    ModelName.LOGREG: common_pb2.MODEL_KIND_LOGREG,
    ModelName.MLP: common_pb2.MODEL_KIND_MLP,
    ModelName.CNN: common_pb2.MODEL_KIND_CNN,
    ModelName.FIXED_DELTA: common_pb2.MODEL_KIND_FIXED_DELTA,
}


class _ServerOpt(enum.Enum):
    FEDAVG = "fedavg"
    FEDADAM = "fedadam"


class _Accountant(enum.Enum):
    RDP = "rdp"
    PRV = "prv"


class _Rule(enum.Enum):
    FEDAVG = "fedavg"
    MEAN = "mean"
    TRIMMED_MEAN = "trimmed_mean"
    MEDIAN = "median"


_RULE = {
    _Rule.FEDAVG: common_pb2.AGGREGATION_RULE_FEDAVG,
    _Rule.MEAN: common_pb2.AGGREGATION_RULE_MEAN,
    _Rule.TRIMMED_MEAN: common_pb2.AGGREGATION_RULE_TRIMMED_MEAN,
    _Rule.MEDIAN: common_pb2.AGGREGATION_RULE_MEDIAN,
}


class _Mechanism(enum.Enum):
    DISCRETE_GAUSSIAN = "discrete_gaussian"
    CONTINUOUS_GAUSSIAN = "continuous_gaussian"


_MECHANISM = {
    _Mechanism.DISCRETE_GAUSSIAN: common_pb2.UPDATE_MECHANISM_DISCRETE_GAUSSIAN,
    _Mechanism.CONTINUOUS_GAUSSIAN: common_pb2.UPDATE_MECHANISM_CONTINUOUS_GAUSSIAN,
}


@dataclass(frozen=True)
class JobFile:
    """A parsed job file: its spec and, for a bundle job, the files it names.

    Args:
        spec: the job. A bundle job's ``model.code_sha256``, ``parameters`` and
            ``initial_sha256`` are still empty: they come from the files
            (``confide.jobfile.load_job``), and only then is it validated.
        code: ``model.code`` as written (a folder, relative to the job file), or None.
        initial_weights: ``model.initial_weights`` as written (a safetensors file), or None.
    """

    spec: common_pb2.JobSpec
    code: str | None = None
    initial_weights: str | None = None


def job_from_toml(root: Section) -> common_pb2.JobSpec:
    """Build a ``JobSpec`` from a parsed job file of a built-in model and validate it.

    Raises:
        ConfigError: a key is missing, unknown or invalid; names the key; ``model.code`` for a
            bundle job, whose files ``confide.jobfile.load_job`` reads.
    """
    job = read_job(root)
    if job.code is not None:
        raise ConfigError(
            "model.code", "a bundle job is read with its files (confide.jobfile.load_job)"
        )
    validate_job(job.spec)
    return job.spec


def read_job(root: Section) -> JobFile:
    """Read a parsed job file; a built-in job's spec is validated, a bundle job's not yet.

    Raises:
        ConfigError: a key is missing, unknown or invalid; names the key.
    """
    try:
        return _job_from_toml(root)
    except ConfigError as exc:
        if exc.reason is Reason.UNKNOWN_KEY and exc.key in _RETIRED:  # say why it is unread
            raise ConfigError(exc.key, _RETIRED[exc.key], reason=Reason.UNKNOWN_KEY) from None
        raise


def _job_from_toml(root: Section) -> JobFile:
    spec = common_pb2.JobSpec(
        name=root.str("name"),
        rounds=root.int("rounds", min=1, max=MAX_ROUNDS),
        min_sites=root.int("min_sites", 1, min=1),
        round_timeout_s=root.float("round_timeout_s", 300.0, min=0.0, min_exclusive=True),
    )
    if root.has("max_round_attempts"):
        spec.attempts.max_round_attempts = root.int(
            "max_round_attempts", min=1, max=MAX_ROUND_ATTEMPTS
        )
    if root.has("max_job_retries"):
        spec.attempts.max_job_retries = root.int("max_job_retries", min=0, max=MAX_JOB_RETRIES)
    m = root.section("model", required=True)
    code: str | None = None
    initial: str | None = None
    if m.has("code"):
        if m.has("kind"):
            raise ConfigError(m.key("kind"), "give either kind (a built-in model) or code")
        spec.model.kind = common_pb2.MODEL_KIND_BUNDLE
        code = m.str("code")
        initial = m.str("initial_weights")
        if not code.strip():
            raise ConfigError(m.key("code"), "must name the bundle's folder")
    else:
        spec.model.kind = _MODEL_KIND[m.choice("kind", ModelName)]
    spec.model.hidden.extend(_uint_list(m, "hidden"))
    spec.model.fixed_delta_params = m.int("fixed_delta_params", 0, min=0)
    m.done()

    d = root.section("dataset", required=True)
    spec.dataset.name = d.str("name")
    spec.dataset.features.extend(d.str_list("features", []))
    spec.dataset.label = d.str("label", "")
    spec.dataset.num_classes = d.int("num_classes", 2, min=0)
    spec.dataset.input_shape.extend(_uint_list(d, "input_shape"))
    spec.dataset.feature_mean.extend(_float_list(d, "feature_mean"))
    spec.dataset.feature_scale.extend(_float_list(d, "feature_scale"))
    d.done()

    t = root.section("training")
    spec.training.local_epochs = t.int("local_epochs", 1, min=1, max=1000)
    spec.training.batch_size = t.int("batch_size", 32, min=1)
    spec.training.learning_rate = t.float("learning_rate", 0.1, min=0.0, min_exclusive=True)
    spec.training.server_optimizer = (
        common_pb2.SERVER_OPTIMIZER_FEDADAM
        if t.choice("server_optimizer", _ServerOpt, _ServerOpt.FEDAVG) is _ServerOpt.FEDADAM
        else common_pb2.SERVER_OPTIMIZER_FEDAVG
    )
    spec.training.server_learning_rate = t.float(
        "server_learning_rate", 1.0, min=0.0, min_exclusive=True
    )
    spec.training.seed = t.int("seed", 0, min=0)
    spec.training.fix_unsupported_layers = t.bool("fix_unsupported_layers", False)
    t.done()

    p = root.section("privacy")
    s = p.section("sample")
    if not s.is_empty():
        rp = spec.record_privacy
        rp.enabled = s.bool("enabled", True)
        rp.noise_multiplier = s.float("noise_multiplier", 0.0)
        rp.target_epsilon = s.float("target_epsilon", 0.0)
        rp.max_grad_norm = s.float("max_grad_norm", 1.0)
        rp.delta = s.float("delta", 1e-5)
        rp.accountant = (
            common_pb2.ACCOUNTANT_PRV
            if s.choice("accountant", _Accountant, _Accountant.RDP) is _Accountant.PRV
            else common_pb2.ACCOUNTANT_RDP
        )
    u = p.section("update")
    if not u.is_empty():
        spec.update_privacy.clip_norm = u.float("clip_norm")
        spec.update_privacy.noise_multiplier = u.float("noise_multiplier", 0.0)
        spec.update_privacy.delta = u.float("delta", 1e-5)
        if u.has("mechanism"):
            spec.update_privacy.mechanism = _MECHANISM[u.choice("mechanism", _Mechanism)]
    p.done()

    sa = root.section("secure_aggregation")
    if not sa.is_empty():
        g = spec.secure_aggregation
        g.enabled = sa.bool("enabled", True)
        g.threshold = sa.float("threshold", 0.66, min=0.0, min_exclusive=True)
        neighbours = sa.value("neighbours", "auto")
        if neighbours == "auto":
            g.neighbours = 0
        elif isinstance(neighbours, int) and not isinstance(neighbours, bool) and neighbours >= 1:
            g.neighbours = neighbours
        else:
            raise ConfigError(
                sa.key("neighbours"), f'must be "auto" or a count >= 1, got {neighbours!r}'
            )
        g.clip_range = sa.float("clip_range", DEFAULT_CLIP_RANGE)
        g.bits = sa.int("bits", DEFAULT_BITS, min=1, max=32)
        g.stage_timeout_s = sa.float(
            "stage_timeout_s", DEFAULT_STAGE_TIMEOUT_S, min=0.0, min_exclusive=True
        )
    _aggregation_from_toml(root.section("aggregation"), spec.aggregation)
    _evaluation_from_toml(root.section("evaluation"), spec)
    root.done()  # every table above, read or not: an unknown key anywhere is refused
    if code is None:
        validate_job(spec)
    return JobFile(spec=spec, code=code, initial_weights=initial)


_RETIRED = {
    "training.device": (
        "a job does not choose the device: each site trains where its agent.toml "
        "[worker] device says; remove the key"
    ),
    "target_accuracy": (
        "acceptance criteria are not implemented, so the job would run as if it were "
        "absent; remove the key"
    ),
}
"""Keys Confide once read and ignored, with why a job naming one is refused."""

_RETIRED_FIELDS = {
    ("confide.v1.TrainingSpec", 6): "training.device",
    ("confide.v1.JobSpec", 11): "target_accuracy",
}
"""The reserved ``common.proto`` field numbers of the retired keys."""

_TABLE_OF_FIELD = {"record_privacy": "privacy.sample", "update_privacy": "privacy.update"}
"""Job-file tables whose JobSpec field has another name; the others share theirs."""


def _refuse_unknown_fields(msg: Message, path: str, *, retired_ok: bool) -> None:
    """Refuse fields of ``msg`` (and the messages it holds) that this version does not know.

    A newer operator's key, or a retired one, would otherwise be parsed into the message's
    unknown fields and silently ignored by every site. With ``retired_ok`` the retired fields
    alone pass (see ``validate_job``).

    Raises:
        ConfigError: ``UNKNOWN_KEY``, naming the retired key or the table and field number.
    """
    unknowns = UnknownFieldSet(msg)
    for i in range(len(unknowns)):
        number = int(unknowns[i].field_number)
        retired = _RETIRED_FIELDS.get((msg.DESCRIPTOR.full_name, number))
        if retired is not None:
            if retired_ok:
                continue
            raise ConfigError(retired, _RETIRED[retired], reason=Reason.UNKNOWN_KEY)
        raise ConfigError(
            path or "job",
            f"field number {number} of {msg.DESCRIPTOR.name} is not known to "
            "this version of Confide; refused rather than ignored",
            reason=Reason.UNKNOWN_KEY,
        )
    for field, value in msg.ListFields():
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue  # a JobSpec holds no map of messages
        name = _TABLE_OF_FIELD.get(field.name, field.name)
        child = f"{path}.{name}" if path else name
        for item in value if field.is_repeated else [value]:
            _refuse_unknown_fields(item, child, retired_ok=retired_ok)


def _aggregation_from_toml(a: Section, out: common_pb2.AggregationSpec) -> None:
    """Read ``[aggregation]`` (absent: every field 0, i.e. the documented defaults)."""
    if a.value("rule", None) is not None:
        out.rule = _RULE[a.choice("rule", _Rule)]
    out.trim_fraction = a.float("trim_fraction", 0.0, min=0.0)
    out.max_sample_weight = a.int("max_sample_weight", 0, min=0, max=MAX_RECORDS)
    out.max_eval_samples = a.int("max_eval_samples", 0, min=0, max=MAX_RECORDS)
    a.done()


def _evaluation_from_toml(ev: Section, spec: common_pb2.JobSpec) -> None:
    """Read ``[evaluation]``; absent, every round's input model and the final model
    (rounds + 1 evaluations) at the default noise and loss clip."""
    spec.evaluation.max_evaluations = ev.int(
        "max_evaluations", spec.rounds + 1, min=0, max=2**32 - 1
    )
    spec.evaluation.noise_multiplier = ev.float(
        "noise_multiplier", DEFAULT_EVALUATION_NOISE, min=0.0
    )
    spec.evaluation.loss_clip = ev.float(
        "loss_clip", DEFAULT_LOSS_CLIP, min=0.0, min_exclusive=True
    )
    ev.done()


def _uint_list(s: Section, key: str) -> list[int]:
    v = s.value(key, [])
    if not isinstance(v, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v
    ):
        raise ConfigError(s.key(key), "must be a list of positive integers")
    return list(v)


def attempt_limits(spec: common_pb2.JobSpec) -> tuple[int, int]:
    """The signed job's (attempts per round, retries per job), defaults filled in.

    A site pays for at most ``rounds + retries`` TRAIN attempts of the job, and at most
    ``attempts per round`` of any one round; the aggregator retries no further.
    """
    at = spec.attempts
    per_round = (
        int(at.max_round_attempts) if at.HasField("max_round_attempts") else DEFAULT_ROUND_ATTEMPTS
    )
    retries = int(at.max_job_retries) if at.HasField("max_job_retries") else DEFAULT_JOB_RETRIES
    return per_round, retries


def normalize(spec: common_pb2.JobSpec) -> common_pb2.JobSpec:
    """A copy of a received job with every wire default resolved: the one place they are.

    On the wire 0 (or an absent optional field) means "the documented default" for these
    fields. The aggregator (building a job) and every site (having verified the signed job)
    work on this copy, so no reader substitutes a default of its own:

    - ``attempts``: ``DEFAULT_ROUND_ATTEMPTS`` and ``DEFAULT_JOB_RETRIES`` (``attempt_limits``);
    - ``training.server_optimizer``: FedAvg;
    - a secure job's ``secure_aggregation``: threshold ``DEFAULT_THRESHOLD`` (2/3; a job
      file's own default is 0.66, written into the signed spec), clip_range
      ``DEFAULT_CLIP_RANGE``, bits ``DEFAULT_BITS``, stage_timeout_s
      ``DEFAULT_STAGE_TIMEOUT_S``.

    Batch size, epochs, learning rates and clip norms have no wire default: ``validate_job``
    requires them. The signed envelope and the stored spec stay as submitted; only this copy
    runs. Normalizing twice changes nothing.

    Args:
        spec: a job that passed ``validate_job``.
    """
    out = common_pb2.JobSpec()
    out.CopyFrom(spec)
    per_round, retries = attempt_limits(spec)
    out.attempts.max_round_attempts = per_round
    out.attempts.max_job_retries = retries
    if out.training.server_optimizer == common_pb2.SERVER_OPTIMIZER_UNSPECIFIED:
        out.training.server_optimizer = common_pb2.SERVER_OPTIMIZER_FEDAVG
    sa = out.secure_aggregation
    if sa.enabled:
        sa.threshold = sa.threshold or DEFAULT_THRESHOLD
        sa.clip_range = sa.clip_range or DEFAULT_CLIP_RANGE
        sa.bits = sa.bits or DEFAULT_BITS
        sa.stage_timeout_s = sa.stage_timeout_s or DEFAULT_STAGE_TIMEOUT_S
    return out


def _float_list(s: Section, key: str) -> list[float]:
    v = s.value(key, [])
    if not isinstance(v, list) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v
    ):
        raise ConfigError(s.key(key), "must be a list of finite numbers")
    return [float(x) for x in v]


def _validate_standardization(ds: common_pb2.DatasetSpec) -> None:
    """The job's feature means and scales: both or neither, one per column, scales > 0."""
    mean, scale = list(ds.feature_mean), list(ds.feature_scale)
    if not mean and not scale:
        return
    columns = math.prod(ds.input_shape) if ds.input_shape else len(ds.features)
    for key, values in (("dataset.feature_mean", mean), ("dataset.feature_scale", scale)):
        if len(values) != columns:
            raise ConfigError(key, f"must give one value per feature column ({columns})")
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(key, "must be finite numbers")
    if any(v <= 0 for v in scale):
        raise ConfigError("dataset.feature_scale", "must be > 0")


def validate_job(spec: common_pb2.JobSpec, *, signed_before_upgrade: bool = False) -> None:
    """Check a job as the aggregator receives it; every error names the job-file key.

    Everything a running job builds from its spec (model shapes, server optimizer, SecAgg+
    parameters for ``min_sites``) is checked here once, so a job that passes cannot fail
    later at the aggregator, after the store already holds it.

    Args:
        spec: the job.
        signed_before_upgrade: a site checking a job the aggregator already admitted. The
            previous release wrote ``training.device`` into every job and read it nowhere;
            the aggregator now refuses the retired keys at submit, so only a job signed before
            the upgrade can still carry one, and it must keep running: the site lets those
            retired fields (and no other unknown field) pass, meaning what they always meant:
            nothing.

    Raises:
        ConfigError: the first invalid field, named as in the job file.
    """
    _refuse_unknown_fields(spec, "", retired_ok=signed_before_upgrade)
    if not spec.name.strip():
        raise ConfigError("name", "must not be empty")
    if not 1 <= spec.rounds <= MAX_ROUNDS:
        raise ConfigError("rounds", f"must be between 1 and {MAX_ROUNDS}")
    if spec.min_sites < 1:
        raise ConfigError("min_sites", "must be >= 1")
    if not spec.dataset.name.strip():
        raise ConfigError("dataset.name", "must not be empty")
    _finite_positive("round_timeout_s", spec.round_timeout_s)
    _validate_model(spec)
    parameter_shapes(spec.model, spec.dataset)
    _validate_standardization(spec.dataset)
    if spec.model.kind != common_pb2.MODEL_KIND_FIXED_DELTA and not spec.dataset.label:
        raise ConfigError("dataset.label", "must name the label column")
    tr = spec.training
    if tr.batch_size < 1:
        raise ConfigError("training.batch_size", "must be >= 1")
    if tr.local_epochs < 1:
        raise ConfigError("training.local_epochs", "must be >= 1")
    _finite_positive("training.learning_rate", tr.learning_rate)
    _finite_positive("training.server_learning_rate", tr.server_learning_rate)
    if tr.server_optimizer not in _SERVER_OPTIMIZERS:
        raise ConfigError("training.server_optimizer", f"unknown optimizer {tr.server_optimizer}")
    at = spec.attempts
    if at.HasField("max_round_attempts") and not (1 <= at.max_round_attempts <= MAX_ROUND_ATTEMPTS):
        raise ConfigError("max_round_attempts", f"must be between 1 and {MAX_ROUND_ATTEMPTS}")
    if at.HasField("max_job_retries") and at.max_job_retries > MAX_JOB_RETRIES:
        raise ConfigError("max_job_retries", f"must be between 0 and {MAX_JOB_RETRIES}")
    _validate_privacy(spec)
    _validate_secagg(spec)
    validate_aggregation(spec)
    _validate_evaluation(spec)


def _validate_model(spec: common_pb2.JobSpec) -> None:
    """A bundle's code and initial-model hashes; the bundle-only fields on no other model."""
    m = spec.model
    if m.kind != common_pb2.MODEL_KIND_BUNDLE:
        for key, present in (
            ("model.code", bool(m.code_sha256)),
            ("model.initial_weights", bool(m.parameters) or bool(m.initial_sha256)),
            ("training.fix_unsupported_layers", spec.training.fix_unsupported_layers),
        ):
            if present:
                raise ConfigError(key, "applies only to a bundle model (model.code)")
        return
    if len(m.code_sha256) != 32:
        raise ConfigError("model.code", "a bundle job names its code by a 32-byte SHA-256")
    if len(m.initial_sha256) != 32:
        raise ConfigError(
            "model.initial_weights", "a bundle job names its initial model by a 32-byte SHA-256"
        )
    if m.hidden or m.fixed_delta_params:
        raise ConfigError("model.hidden", "applies only to the built-in models")
    if spec.training.fix_unsupported_layers and not spec.record_privacy.enabled:
        raise ConfigError(
            "training.fix_unsupported_layers", "applies only with record-level DP-SGD"
        )
    if int(spec.dataset.num_classes) < 2:
        raise ConfigError("dataset.num_classes", "must be >= 2")
    if not spec.dataset.features:
        raise ConfigError("dataset.features", "must list at least one feature column")


def _finite_positive(key: str, v: float) -> None:
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(key, f"must be a finite number > 0, got {v}")


def _validate_privacy(spec: common_pb2.JobSpec) -> None:
    rp = spec.record_privacy
    if rp.enabled:
        k = "privacy.sample."
        has_z, has_eps = rp.noise_multiplier != 0, rp.target_epsilon != 0
        if has_z == has_eps:
            raise ConfigError(
                k + "noise_multiplier", "give exactly one of noise_multiplier and target_epsilon"
            )
        if has_z and (not math.isfinite(rp.noise_multiplier) or rp.noise_multiplier < 0):
            raise ConfigError(k + "noise_multiplier", "must be a finite number >= 0")
        if has_eps:
            _finite_positive(k + "target_epsilon", rp.target_epsilon)
        _finite_positive(k + "max_grad_norm", rp.max_grad_norm)
        if not 0 < rp.delta < 1:
            raise ConfigError(k + "delta", f"must be in (0, 1), got {rp.delta}")
    up = spec.update_privacy
    if up.ByteSize():
        k = "privacy.update."
        _finite_positive(k + "clip_norm", up.clip_norm)
        if not math.isfinite(up.noise_multiplier) or up.noise_multiplier < 0:
            raise ConfigError(k + "noise_multiplier", "must be a finite number >= 0")
        if not 0 < up.delta < 1:
            raise ConfigError(k + "delta", f"must be in (0, 1), got {up.delta}")
        if up.mechanism not in _MECHANISM.values() and up.mechanism != 0:
            raise ConfigError(k + "mechanism", f"unknown mechanism {up.mechanism}")
        if (
            up.mechanism == common_pb2.UPDATE_MECHANISM_DISCRETE_GAUSSIAN
            and not spec.secure_aggregation.enabled
        ):
            raise ConfigError(
                k + "mechanism",
                "discrete_gaussian is the distributed mechanism: it needs secure aggregation",
            )


def _validate_secagg(spec: common_pb2.JobSpec) -> None:
    """Check the secure-aggregation block; on the wire 0 means "the documented default"."""
    sa = spec.secure_aggregation
    if not sa.enabled:
        return
    k = "secure_aggregation."
    if not math.isfinite(sa.threshold) or sa.threshold < 0:
        raise ConfigError(k + "threshold", "must be a fraction in (0, 1] or a count >= 2")
    if sa.threshold > 1 and sa.threshold != int(sa.threshold):
        raise ConfigError(k + "threshold", "a count must be a whole number")
    if sa.threshold > 1 and sa.threshold > spec.min_sites:
        raise ConfigError(
            k + "threshold", f"count {int(sa.threshold)} exceeds min_sites {spec.min_sites}"
        )
    if sa.clip_range:
        _finite_positive(k + "clip_range", sa.clip_range)
    if sa.bits > 32:
        raise ConfigError(k + "bits", "must be between 1 and 32")
    if sa.stage_timeout_s:
        _finite_positive(k + "stage_timeout_s", sa.stage_timeout_s)
    # Every round size the job allows, min_sites up to its max_sites (confide.secagg.params),
    # the same rules the aggregator and every site apply (on the same normalized copy): at
    # least MIN_SECURE_SITES sites.
    resolved = normalize(spec)
    job_rules(resolved).validate()
    # The mechanism's parameters: the discrete one's grid fits the modulus, the continuous
    # one's clip cannot bite (names secure_aggregation.bits or .clip_range when not).
    secure_encoding(resolved)


def validate_aggregation(spec: common_pb2.JobSpec) -> None:
    """Check the ``aggregation`` block: what bounds one site's pull (issue 9.3).

    FedAvg weighting needs a stated cap (``max_sample_weight``), so no claimed sample count
    buys unbounded weight; a trimmed mean must trim at least one update at each end with
    ``min_sites`` sites; secure aggregation sums uniformly, so it takes only the mean.

    Raises:
        ConfigError: naming the ``aggregation.`` key at fault.
    """
    a, k = spec.aggregation, "aggregation."
    if a.rule not in common_pb2.AggregationRule.values():
        raise ConfigError(k + "rule", f"unknown aggregation rule {a.rule}")
    if not math.isfinite(a.trim_fraction) or a.trim_fraction < 0:
        raise ConfigError(k + "trim_fraction", "must be a fraction in (0, 0.5)")
    for name in ("max_sample_weight", "max_eval_samples"):
        if getattr(a, name) > MAX_RECORDS:
            raise ConfigError(k + name, f"must be at most {MAX_RECORDS}")
    if a.rule == common_pb2.AGGREGATION_RULE_TRIMMED_MEAN:
        if not 0 < a.trim_fraction < 0.5:
            raise ConfigError(k + "trim_fraction", "must be a fraction in (0, 0.5)")
        if math.floor(a.trim_fraction * spec.min_sites) < 1:
            raise ConfigError(
                k + "trim_fraction",
                f"trims no update with min_sites = {spec.min_sites}; "
                f"needs at least {1 / spec.min_sites:.3g}",
            )
    elif a.trim_fraction:
        raise ConfigError(k + "trim_fraction", "applies only to rule = trimmed_mean")
    if a.rule == common_pb2.AGGREGATION_RULE_FEDAVG and not a.max_sample_weight:
        raise ConfigError(
            k + "max_sample_weight", "fedavg weighting needs a cap (or choose rule = mean)"
        )
    fedavg = (common_pb2.AGGREGATION_RULE_UNSPECIFIED, common_pb2.AGGREGATION_RULE_FEDAVG)
    if a.max_sample_weight and a.rule not in fedavg:
        raise ConfigError(k + "max_sample_weight", "applies only to rule = fedavg")
    if spec.secure_aggregation.enabled:
        if a.rule not in (
            common_pb2.AGGREGATION_RULE_UNSPECIFIED,
            common_pb2.AGGREGATION_RULE_MEAN,
        ):
            raise ConfigError(k + "rule", "secure aggregation sums; it takes only rule = mean")
        if a.max_sample_weight:
            raise ConfigError(
                k + "max_sample_weight", "secure aggregation averages uniformly; leave it 0"
            )
    robust = (common_pb2.AGGREGATION_RULE_TRIMMED_MEAN, common_pb2.AGGREGATION_RULE_MEDIAN)
    if a.rule in robust:
        shapes = parameter_shapes(spec.model, spec.dataset)
        need = 4 * sum(math.prod(s) for _, s in shapes) * int(spec.min_sites)
        if need > HELD_UPDATES_MAX_BYTES:
            raise ConfigError(
                k + "rule",
                f"holding min_sites updates of this model takes {need} bytes; "
                f"a robust round holds at most {HELD_UPDATES_MAX_BYTES}",
            )


def _validate_evaluation(spec: common_pb2.JobSpec) -> None:
    """Check the evaluation block; with max_evaluations = 0 the sites evaluate nothing."""
    ev = spec.evaluation
    if ev.max_evaluations == 0:
        return
    if not math.isfinite(ev.noise_multiplier) or ev.noise_multiplier < 0:
        raise ConfigError("evaluation.noise_multiplier", "must be a finite number >= 0")
    _finite_positive("evaluation.loss_clip", ev.loss_clip)
