"""Job files: valid jobs parse; every invalid field is refused with its job-file key."""

from __future__ import annotations

import struct

import pytest

from confide.config import parse_toml
from confide.errors import ConfigError, Reason
from confide.jobspec import (
    DEFAULT_STAGE_TIMEOUT_S,
    attempt_limits,
    job_from_toml,
    normalize,
    validate_job,
)
from confide.secagg.encoding import secure_encoding
from confide.secagg.params import DEFAULT_THRESHOLD, job_rules
from confide.secagg.quantize import DEFAULT_BITS, DEFAULT_CLIP_RANGE
from confide.v1 import common_pb2

BASE = """
name = "bc"
rounds = 3
min_sites = 3
[model]
kind = "mlp"
hidden = [16]
[dataset]
name = "breast_cancer"
features = ["a", "b"]
label = "target"
[privacy.sample]
target_epsilon = 3.0
delta = 1e-5
[privacy.update]
clip_norm = 1.0
noise_multiplier = 0.5
[secure_aggregation]
enabled = true
threshold = 0.66
"""


def _job(text=BASE):
    return job_from_toml(parse_toml(text))


def test_full_job_parses():
    """A complete job file becomes the JobSpec the aggregator receives."""
    spec = _job()
    assert spec.model.kind == common_pb2.MODEL_KIND_MLP and list(spec.model.hidden) == [16]
    assert spec.record_privacy.enabled and spec.record_privacy.target_epsilon == 3.0
    assert spec.secure_aggregation.enabled and spec.secure_aggregation.neighbours == 0
    validate_job(spec)


@pytest.mark.parametrize(
    "old, new, key",
    [
        ('kind = "mlp"', 'kind = "gpt"', "model.kind"),
        ("rounds = 3", "rounds = 0", "rounds"),
        (
            "target_epsilon = 3.0",
            "target_epsilon = 3.0\nnoise_multiplier = 1.0",
            "privacy.sample.noise_multiplier",
        ),
        ("delta = 1e-5\n[privacy.update]", "delta = 1.0\n[privacy.update]", "privacy.sample.delta"),
        ("clip_norm = 1.0", "clip_norm = 0.0", "privacy.update.clip_norm"),
        ("clip_norm = 1.0", "clip_norm = -1.0", "privacy.update.clip_norm"),
        ("noise_multiplier = 0.5", "noise_multiplier = -0.5", "privacy.update.noise_multiplier"),
        ('label = "target"', 'label = "target"\nlabl = "x"', "dataset.labl"),
        ("hidden = [16]", "hidden = [0]", "model.hidden"),
        ("threshold = 0.66", "threshold = 4", "secure_aggregation.threshold"),
        ("min_sites = 3", "min_sites = 1", "min_sites"),
    ],
)
def test_invalid_field_is_named(old, new, key):
    """Each invalid value is refused with a ConfigError naming its key."""
    assert old in BASE
    with pytest.raises(ConfigError) as ei:
        _job(BASE.replace(old, new, 1))
    assert ei.value.key == key


def test_validate_job_refuses_what_the_wire_can_carry():
    """validate_job catches invalid values that bypass the TOML reader (e.g. a crafted JobSpec)."""
    spec = _job()
    spec.record_privacy.delta = 2.0
    with pytest.raises(ConfigError) as ei:
        validate_job(spec)
    assert ei.value.key == "privacy.sample.delta"
    spec = _job()
    spec.training.learning_rate = float("nan")
    with pytest.raises(ConfigError) as ei:
        validate_job(spec)
    assert ei.value.key == "training.learning_rate"


GOOD_RECORD = {"noise_multiplier": 1.0, "target_epsilon": 0.0, "max_grad_norm": 1.0, "delta": 1e-5}


def _with_record(**fields):
    spec = _job()
    spec.record_privacy.CopyFrom(common_pb2.RecordPrivacy(enabled=True, **fields))
    return spec


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"noise_multiplier": -0.1}, "privacy.sample.noise_multiplier"),
        ({"noise_multiplier": 0.0}, "privacy.sample.noise_multiplier"),
        ({"target_epsilon": 3.0}, "privacy.sample.noise_multiplier"),
        ({"noise_multiplier": 0.0, "target_epsilon": -1.0}, "privacy.sample.target_epsilon"),
        ({"max_grad_norm": 0.0}, "privacy.sample.max_grad_norm"),
        ({"max_grad_norm": -1.0}, "privacy.sample.max_grad_norm"),
        ({"delta": 1.0}, "privacy.sample.delta"),
        ({"delta": 0.0}, "privacy.sample.delta"),
    ],
)
def test_validate_record_privacy_names_the_key(change, key):
    """Each invalid DP-SGD parameter on the wire raises ConfigError whose key names the field
    (the site's own δ < 1/n rule is tested with its plan, tests/agent/privacy)."""
    with pytest.raises(ConfigError) as info:
        validate_job(_with_record(**{**GOOD_RECORD, **change}))
    assert info.value.key == key


def test_validate_record_privacy_accepts_good_values():
    """Valid DP-SGD parameters pass, with either a noise multiplier or a target ε."""
    validate_job(_with_record(**GOOD_RECORD))
    validate_job(_with_record(**{**GOOD_RECORD, "noise_multiplier": 0.0, "target_epsilon": 2.0}))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"clip_norm": 0.0}, "privacy.update.clip_norm"),
        ({"clip_norm": -1.0}, "privacy.update.clip_norm"),
        ({"noise_multiplier": -1.0}, "privacy.update.noise_multiplier"),
        ({"delta": 1.0}, "privacy.update.delta"),
        ({"delta": -1e-5}, "privacy.update.delta"),
    ],
)
def test_validate_update_privacy_names_the_key(change, key):
    """Each invalid update-level parameter on the wire raises ConfigError naming the field."""
    spec = _job()
    good = {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5}
    spec.update_privacy.CopyFrom(common_pb2.UpdatePrivacy(**{**good, **change}))
    with pytest.raises(ConfigError) as info:
        validate_job(spec)
    assert info.value.key == key


PLAIN = BASE.split("[secure_aggregation]")[0]


@pytest.mark.parametrize(
    ("block", "rule", "trim"),
    [
        ('[aggregation]\nrule = "trimmed_mean"\ntrim_fraction = 0.34\n', "TRIMMED_MEAN", 0.34),
        ('[aggregation]\nrule = "median"\n', "MEDIAN", 0.0),
        ("[aggregation]\nmax_sample_weight = 500\nmax_eval_samples = 100\n", "UNSPECIFIED", 0.0),
    ],
)
def test_aggregation_block_parses(block, rule, trim):
    """An [aggregation] block sets the rule, trim fraction and weight caps."""
    spec = _job(PLAIN + block)
    assert spec.aggregation.rule == common_pb2.AggregationRule.Value(f"AGGREGATION_RULE_{rule}")
    assert spec.aggregation.trim_fraction == trim


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (PLAIN + '[aggregation]\nrule = "fedavg"\n', "aggregation.max_sample_weight"),
        (PLAIN + '[aggregation]\nrule = "krum"\n', "aggregation.rule"),
        (
            PLAIN + '[aggregation]\nrule = "trimmed_mean"\ntrim_fraction = 0.3\n',
            "aggregation.trim_fraction",
        ),
        (
            PLAIN + '[aggregation]\nrule = "trimmed_mean"\ntrim_fraction = 0.5\n',
            "aggregation.trim_fraction",
        ),
        (
            PLAIN + '[aggregation]\nrule = "median"\ntrim_fraction = 0.4\n',
            "aggregation.trim_fraction",
        ),
        (
            PLAIN + '[aggregation]\nrule = "median"\nmax_sample_weight = 9\n',
            "aggregation.max_sample_weight",
        ),
        (PLAIN + "[aggregation]\nmax_eval_samples = -1\n", "aggregation.max_eval_samples"),
        (PLAIN + "[aggregation]\nmax_weight = 9\n", "aggregation.max_weight"),
        (BASE + '[aggregation]\nrule = "median"\n', "aggregation.rule"),
        (BASE + "[aggregation]\nmax_sample_weight = 9\n", "aggregation.max_sample_weight"),
    ],
)
def test_invalid_aggregation_is_named(text, key):
    """Uncapped FedAvg weights, a trim that trims nothing, robust rules under SecAgg+: refused."""
    with pytest.raises(ConfigError) as ei:
        _job(text)
    assert ei.value.key == key


def test_a_crafted_spec_cannot_bypass_the_aggregation_checks():
    """validate_job refuses an out-of-range trim fraction or an unknown rule set on the wire."""
    spec = _job(PLAIN)
    spec.aggregation.rule = common_pb2.AGGREGATION_RULE_TRIMMED_MEAN
    spec.aggregation.trim_fraction = float("nan")
    with pytest.raises(ConfigError) as ei:
        validate_job(spec)
    assert ei.value.key == "aggregation.trim_fraction"
    spec.aggregation.rule = 99
    with pytest.raises(ConfigError) as ei:
        validate_job(spec)
    assert ei.value.key == "aggregation.rule"


def test_evaluation_defaults_to_each_round_and_the_final_model_noised():
    """Without [evaluation] a job asks rounds + 1 evaluations at z = 10, losses clipped at 5."""
    ev = _job().evaluation
    assert (ev.max_evaluations, ev.noise_multiplier, ev.loss_clip) == (4, 10.0, 5.0)
    exact = _job(BASE + "[evaluation]\nmax_evaluations = 1\nnoise_multiplier = 0.0\n").evaluation
    assert (exact.max_evaluations, exact.noise_multiplier) == (1, 0.0)


@pytest.mark.parametrize(
    "block, key",
    [
        ("max_evaluations = -1", "evaluation.max_evaluations"),
        ("noise_multiplier = -1.0", "evaluation.noise_multiplier"),
        ("loss_clip = 0.0", "evaluation.loss_clip"),
        ("loss_clips = 1.0", "evaluation.loss_clips"),
    ],
)
def test_invalid_evaluation_field_is_named(block, key):
    """A bad [evaluation] value is refused naming its key."""
    with pytest.raises(ConfigError) as ei:
        _job(BASE + "[evaluation]\n" + block + "\n")
    assert ei.value.key == key


@pytest.mark.parametrize(
    "field, value, key",
    [
        ("noise_multiplier", float("nan"), "evaluation.noise_multiplier"),
        ("noise_multiplier", -1.0, "evaluation.noise_multiplier"),
        ("loss_clip", 0.0, "evaluation.loss_clip"),
        ("loss_clip", float("inf"), "evaluation.loss_clip"),
    ],
)
def test_validate_job_refuses_a_crafted_evaluation_block(field, value, key):
    """A wire JobSpec asking evaluations with a bad z or L is refused (sites re-validate)."""
    spec = _job()
    setattr(spec.evaluation, field, value)
    with pytest.raises(ConfigError) as ei:
        validate_job(spec)
    assert ei.value.key == key
    spec.evaluation.max_evaluations = 0  # asks for none: the rest is not looked at
    validate_job(spec)


def _wire_secure_job() -> common_pb2.JobSpec:
    """A secure job as a client other than the job-file reader may send it: defaults unset."""
    spec = _job()
    spec.secure_aggregation.CopyFrom(common_pb2.SecureAggregation(enabled=True))
    spec.ClearField("attempts")
    spec.training.server_optimizer = common_pb2.SERVER_OPTIMIZER_UNSPECIFIED
    return spec


def test_normalize_resolves_every_wire_default_once():
    """normalize fills the secure-aggregation, attempt and optimizer defaults, leaves what the
    job names, does not touch its input, and normalizing twice changes nothing."""
    raw = _wire_secure_job()
    validate_job(raw)
    before = raw.SerializeToString()
    out = normalize(raw)
    assert raw.SerializeToString() == before
    sa = out.secure_aggregation
    assert (sa.threshold, sa.clip_range, sa.bits, sa.stage_timeout_s) == (
        DEFAULT_THRESHOLD,
        DEFAULT_CLIP_RANGE,
        DEFAULT_BITS,
        DEFAULT_STAGE_TIMEOUT_S,
    )
    assert attempt_limits(out) == attempt_limits(raw) == (3, 2)
    assert out.attempts.HasField("max_round_attempts") and out.attempts.HasField("max_job_retries")
    assert out.training.server_optimizer == common_pb2.SERVER_OPTIMIZER_FEDAVG
    assert normalize(out) == out
    named = _job()  # the job file names threshold 0.66, clip range 1.0, 16 bits, 60 s
    assert normalize(named).secure_aggregation == named.secure_aggregation
    plain = _job(PLAIN)
    assert normalize(plain).secure_aggregation == plain.secure_aggregation


def test_readers_refuse_an_unnormalized_job_rather_than_default():
    """The SecAgg+ rules and the encoding read a normalized job; given zeros they raise,
    naming the key, and never substitute a default of their own."""
    raw = _wire_secure_job()
    with pytest.raises(ConfigError) as info:
        secure_encoding(raw)
    assert info.value.key == "secure_aggregation.clip_range"
    with pytest.raises(ConfigError) as info:
        job_rules(raw).validate()
    assert info.value.key.startswith("secure_aggregation.")
    job_rules(normalize(raw)).validate()
    assert secure_encoding(normalize(raw)).clip_range == DEFAULT_CLIP_RANGE


@pytest.mark.parametrize(
    "old, new, key, why",
    [
        ("name = ", "target_accuracy = 0.9\nname = ", "target_accuracy", "not implemented"),
        ("[dataset]", '[training]\ndevice = "cuda"\n[dataset]', "training.device", "worker"),
    ],
)
def test_a_retired_key_in_a_job_file_is_refused_saying_why(old, new, key, why):
    """Keys Confide once accepted and ignored are refused by name, with the reason."""
    with pytest.raises(ConfigError) as err:
        _job(BASE.replace(old, new, 1))
    assert err.value.key == key and why in err.value.problem
    assert err.value.reason is Reason.UNKNOWN_KEY


def test_a_code_hash_on_a_built_in_model_is_refused():
    """A built-in model naming a code bundle by hash is refused: the hash would do nothing
    (a bundle job is MODEL_KIND_BUNDLE, tests/confide/test_jobfile.py)."""
    spec = _job()
    spec.model.code_sha256 = bytes(range(32))
    with pytest.raises(ConfigError) as err:
        validate_job(spec)
    assert err.value.key == "model.code"
    assert "only to a bundle model" in err.value.problem


def _with_raw_field(spec: common_pb2.JobSpec, path: str, raw: bytes) -> common_pb2.JobSpec:
    """The spec, reparsed from bytes with ``raw`` (a field this version may not know) added to
    the message at ``path`` (``""``: the JobSpec itself)."""
    target = spec
    for name in filter(None, path.split(".")):
        target = getattr(target, name)
    target.MergeFromString(raw)
    return common_pb2.JobSpec.FromString(spec.SerializeToString())


@pytest.mark.parametrize(
    "path, raw, key",
    [
        ("training", b"\x32\x04auto", "training.device"),  # field 6, string
        ("", b"\x59" + struct.pack("<d", 0.9), "target_accuracy"),  # field 11, double
    ],
)
def test_a_retired_field_on_the_wire_is_refused_naming_its_key(path, raw, key):
    """A JobSpec from an older client that still carries a retired field is refused by key."""
    spec = _with_raw_field(_job(), path, raw)
    with pytest.raises(ConfigError) as err:
        validate_job(spec)
    assert err.value.key == key and err.value.reason is Reason.UNKNOWN_KEY


@pytest.mark.parametrize(
    "path, key",
    [
        ("", "job"),
        ("record_privacy", "privacy.sample"),
        ("update_privacy", "privacy.update"),
        ("secure_aggregation", "secure_aggregation"),
        ("dataset", "dataset"),
    ],
)
def test_a_field_this_version_does_not_know_is_refused_not_ignored(path, key):
    """An unknown field (a newer operator's key) anywhere in a JobSpec is refused, naming the
    table and the field number, instead of being dropped by every site."""
    spec = _with_raw_field(_job(), path, b"\xa2\x06\x03new")  # field 100, string
    with pytest.raises(ConfigError) as err:
        validate_job(spec)
    assert err.value.key == key and "field number 100" in err.value.problem
    assert err.value.reason is Reason.UNKNOWN_KEY
