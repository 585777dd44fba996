from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]
    DTYPE_UINT32: _ClassVar[DType]
    DTYPE_UINT64: _ClassVar[DType]

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_REGISTER: _ClassVar[Stage]
    STAGE_HEARTBEAT: _ClassVar[Stage]
    STAGE_OPEN_TASKS: _ClassVar[Stage]
    STAGE_TASK_REPORT: _ClassVar[Stage]
    STAGE_UPDATE: _ClassVar[Stage]
    STAGE_ADVERTISE_KEYS: _ClassVar[Stage]
    STAGE_SHARE_KEYS: _ClassVar[Stage]
    STAGE_MASKED_INPUT: _ClassVar[Stage]
    STAGE_UNMASK: _ClassVar[Stage]
    STAGE_JOB: _ClassVar[Stage]
    STAGE_SECAGG_KEYS: _ClassVar[Stage]
    STAGE_SHARES_CHECKED: _ClassVar[Stage]
    STAGE_CONSISTENCY: _ClassVar[Stage]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_OK: _ClassVar[Outcome]
    OUTCOME_FAILED: _ClassVar[Outcome]
    OUTCOME_REFUSED: _ClassVar[Outcome]

class ModelKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_KIND_UNSPECIFIED: _ClassVar[ModelKind]
    MODEL_KIND_LOGREG: _ClassVar[ModelKind]
    MODEL_KIND_MLP: _ClassVar[ModelKind]
    MODEL_KIND_CNN: _ClassVar[ModelKind]
    MODEL_KIND_FIXED_DELTA: _ClassVar[ModelKind]
    MODEL_KIND_BUNDLE: _ClassVar[ModelKind]

class ServerOptimizer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVER_OPTIMIZER_UNSPECIFIED: _ClassVar[ServerOptimizer]
    SERVER_OPTIMIZER_FEDAVG: _ClassVar[ServerOptimizer]
    SERVER_OPTIMIZER_FEDADAM: _ClassVar[ServerOptimizer]

class Accountant(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCOUNTANT_UNSPECIFIED: _ClassVar[Accountant]
    ACCOUNTANT_RDP: _ClassVar[Accountant]
    ACCOUNTANT_PRV: _ClassVar[Accountant]

class UpdateMechanism(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_MECHANISM_UNSPECIFIED: _ClassVar[UpdateMechanism]
    UPDATE_MECHANISM_DISCRETE_GAUSSIAN: _ClassVar[UpdateMechanism]
    UPDATE_MECHANISM_CONTINUOUS_GAUSSIAN: _ClassVar[UpdateMechanism]

class AggregationRule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_RULE_UNSPECIFIED: _ClassVar[AggregationRule]
    AGGREGATION_RULE_FEDAVG: _ClassVar[AggregationRule]
    AGGREGATION_RULE_MEAN: _ClassVar[AggregationRule]
    AGGREGATION_RULE_TRIMMED_MEAN: _ClassVar[AggregationRule]
    AGGREGATION_RULE_MEDIAN: _ClassVar[AggregationRule]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT64: DType
DTYPE_INT32: DType
DTYPE_INT64: DType
DTYPE_UINT32: DType
DTYPE_UINT64: DType
STAGE_UNSPECIFIED: Stage
STAGE_REGISTER: Stage
STAGE_HEARTBEAT: Stage
STAGE_OPEN_TASKS: Stage
STAGE_TASK_REPORT: Stage
STAGE_UPDATE: Stage
STAGE_ADVERTISE_KEYS: Stage
STAGE_SHARE_KEYS: Stage
STAGE_MASKED_INPUT: Stage
STAGE_UNMASK: Stage
STAGE_JOB: Stage
STAGE_SECAGG_KEYS: Stage
STAGE_SHARES_CHECKED: Stage
STAGE_CONSISTENCY: Stage
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_OK: Outcome
OUTCOME_FAILED: Outcome
OUTCOME_REFUSED: Outcome
MODEL_KIND_UNSPECIFIED: ModelKind
MODEL_KIND_LOGREG: ModelKind
MODEL_KIND_MLP: ModelKind
MODEL_KIND_CNN: ModelKind
MODEL_KIND_FIXED_DELTA: ModelKind
MODEL_KIND_BUNDLE: ModelKind
SERVER_OPTIMIZER_UNSPECIFIED: ServerOptimizer
SERVER_OPTIMIZER_FEDAVG: ServerOptimizer
SERVER_OPTIMIZER_FEDADAM: ServerOptimizer
ACCOUNTANT_UNSPECIFIED: Accountant
ACCOUNTANT_RDP: Accountant
ACCOUNTANT_PRV: Accountant
UPDATE_MECHANISM_UNSPECIFIED: UpdateMechanism
UPDATE_MECHANISM_DISCRETE_GAUSSIAN: UpdateMechanism
UPDATE_MECHANISM_CONTINUOUS_GAUSSIAN: UpdateMechanism
AGGREGATION_RULE_UNSPECIFIED: AggregationRule
AGGREGATION_RULE_FEDAVG: AggregationRule
AGGREGATION_RULE_MEAN: AggregationRule
AGGREGATION_RULE_TRIMMED_MEAN: AggregationRule
AGGREGATION_RULE_MEDIAN: AggregationRule

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class BlobHeader(_message.Message):
    __slots__ = ("tensors", "total_bytes", "sha256")
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    total_bytes: int
    sha256: bytes
    def __init__(self, tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("federation", "sender", "job_id", "round", "stage", "issued_at_ms", "payload", "signature")
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    federation: str
    sender: str
    job_id: str
    round: int
    stage: Stage
    issued_at_ms: int
    payload: bytes
    signature: bytes
    def __init__(self, federation: _Optional[str] = ..., sender: _Optional[str] = ..., job_id: _Optional[str] = ..., round: _Optional[int] = ..., stage: _Optional[_Union[Stage, str]] = ..., issued_at_ms: _Optional[int] = ..., payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("kind", "hidden", "fixed_delta_params", "code_sha256", "parameters", "initial_sha256")
    KIND_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    FIXED_DELTA_PARAMS_FIELD_NUMBER: _ClassVar[int]
    CODE_SHA256_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_SHA256_FIELD_NUMBER: _ClassVar[int]
    kind: ModelKind
    hidden: _containers.RepeatedScalarFieldContainer[int]
    fixed_delta_params: int
    code_sha256: bytes
    parameters: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    initial_sha256: bytes
    def __init__(self, kind: _Optional[_Union[ModelKind, str]] = ..., hidden: _Optional[_Iterable[int]] = ..., fixed_delta_params: _Optional[int] = ..., code_sha256: _Optional[bytes] = ..., parameters: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., initial_sha256: _Optional[bytes] = ...) -> None: ...

class DatasetSpec(_message.Message):
    __slots__ = ("name", "features", "label", "num_classes", "input_shape", "feature_mean", "feature_scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_MEAN_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    features: _containers.RepeatedScalarFieldContainer[str]
    label: str
    num_classes: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    feature_mean: _containers.RepeatedScalarFieldContainer[float]
    feature_scale: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., label: _Optional[str] = ..., num_classes: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ..., feature_mean: _Optional[_Iterable[float]] = ..., feature_scale: _Optional[_Iterable[float]] = ...) -> None: ...

class RecordPrivacy(_message.Message):
    __slots__ = ("enabled", "noise_multiplier", "target_epsilon", "max_grad_norm", "delta", "accountant")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    TARGET_EPSILON_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    noise_multiplier: float
    target_epsilon: float
    max_grad_norm: float
    delta: float
    accountant: Accountant
    def __init__(self, enabled: _Optional[bool] = ..., noise_multiplier: _Optional[float] = ..., target_epsilon: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., delta: _Optional[float] = ..., accountant: _Optional[_Union[Accountant, str]] = ...) -> None: ...

class UpdatePrivacy(_message.Message):
    __slots__ = ("clip_norm", "noise_multiplier", "delta", "mechanism")
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    clip_norm: float
    noise_multiplier: float
    delta: float
    mechanism: UpdateMechanism
    def __init__(self, clip_norm: _Optional[float] = ..., noise_multiplier: _Optional[float] = ..., delta: _Optional[float] = ..., mechanism: _Optional[_Union[UpdateMechanism, str]] = ...) -> None: ...

class SecureAggregation(_message.Message):
    __slots__ = ("enabled", "threshold", "neighbours", "clip_range", "bits", "stage_timeout_s")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    CLIP_RANGE_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    STAGE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    threshold: float
    neighbours: int
    clip_range: float
    bits: int
    stage_timeout_s: float
    def __init__(self, enabled: _Optional[bool] = ..., threshold: _Optional[float] = ..., neighbours: _Optional[int] = ..., clip_range: _Optional[float] = ..., bits: _Optional[int] = ..., stage_timeout_s: _Optional[float] = ...) -> None: ...

class EvaluationSpec(_message.Message):
    __slots__ = ("max_evaluations", "noise_multiplier", "loss_clip")
    MAX_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    LOSS_CLIP_FIELD_NUMBER: _ClassVar[int]
    max_evaluations: int
    noise_multiplier: float
    loss_clip: float
    def __init__(self, max_evaluations: _Optional[int] = ..., noise_multiplier: _Optional[float] = ..., loss_clip: _Optional[float] = ...) -> None: ...

class TrainingSpec(_message.Message):
    __slots__ = ("local_epochs", "batch_size", "learning_rate", "server_optimizer", "server_learning_rate", "seed", "fix_unsupported_layers")
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SERVER_OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    SERVER_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FIX_UNSUPPORTED_LAYERS_FIELD_NUMBER: _ClassVar[int]
    local_epochs: int
    batch_size: int
    learning_rate: float
    server_optimizer: ServerOptimizer
    server_learning_rate: float
    seed: int
    fix_unsupported_layers: bool
    def __init__(self, local_epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., server_optimizer: _Optional[_Union[ServerOptimizer, str]] = ..., server_learning_rate: _Optional[float] = ..., seed: _Optional[int] = ..., fix_unsupported_layers: _Optional[bool] = ...) -> None: ...

class AttemptLimits(_message.Message):
    __slots__ = ("max_round_attempts", "max_job_retries")
    MAX_ROUND_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_JOB_RETRIES_FIELD_NUMBER: _ClassVar[int]
    max_round_attempts: int
    max_job_retries: int
    def __init__(self, max_round_attempts: _Optional[int] = ..., max_job_retries: _Optional[int] = ...) -> None: ...

class AggregationSpec(_message.Message):
    __slots__ = ("rule", "trim_fraction", "max_sample_weight", "max_eval_samples")
    RULE_FIELD_NUMBER: _ClassVar[int]
    TRIM_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_EVAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    rule: AggregationRule
    trim_fraction: float
    max_sample_weight: int
    max_eval_samples: int
    def __init__(self, rule: _Optional[_Union[AggregationRule, str]] = ..., trim_fraction: _Optional[float] = ..., max_sample_weight: _Optional[int] = ..., max_eval_samples: _Optional[int] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("name", "model", "dataset", "rounds", "min_sites", "round_timeout_s", "training", "record_privacy", "update_privacy", "secure_aggregation", "attempts", "aggregation", "evaluation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    MIN_SITES_FIELD_NUMBER: _ClassVar[int]
    ROUND_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    RECORD_PRIVACY_FIELD_NUMBER: _ClassVar[int]
    UPDATE_PRIVACY_FIELD_NUMBER: _ClassVar[int]
    SECURE_AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: ModelSpec
    dataset: DatasetSpec
    rounds: int
    min_sites: int
    round_timeout_s: float
    training: TrainingSpec
    record_privacy: RecordPrivacy
    update_privacy: UpdatePrivacy
    secure_aggregation: SecureAggregation
    attempts: AttemptLimits
    aggregation: AggregationSpec
    evaluation: EvaluationSpec
    def __init__(self, name: _Optional[str] = ..., model: _Optional[_Union[ModelSpec, _Mapping]] = ..., dataset: _Optional[_Union[DatasetSpec, _Mapping]] = ..., rounds: _Optional[int] = ..., min_sites: _Optional[int] = ..., round_timeout_s: _Optional[float] = ..., training: _Optional[_Union[TrainingSpec, _Mapping]] = ..., record_privacy: _Optional[_Union[RecordPrivacy, _Mapping]] = ..., update_privacy: _Optional[_Union[UpdatePrivacy, _Mapping]] = ..., secure_aggregation: _Optional[_Union[SecureAggregation, _Mapping]] = ..., attempts: _Optional[_Union[AttemptLimits, _Mapping]] = ..., aggregation: _Optional[_Union[AggregationSpec, _Mapping]] = ..., evaluation: _Optional[_Union[EvaluationSpec, _Mapping]] = ...) -> None: ...
