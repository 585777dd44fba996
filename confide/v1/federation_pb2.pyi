from confide.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_TRAIN: _ClassVar[TaskKind]
    TASK_KIND_EVALUATE: _ClassVar[TaskKind]
    TASK_KIND_SHARE_KEYS: _ClassVar[TaskKind]
    TASK_KIND_MASKED_INPUT: _ClassVar[TaskKind]
    TASK_KIND_UNMASK: _ClassVar[TaskKind]
    TASK_KIND_JOB_DONE: _ClassVar[TaskKind]
    TASK_KIND_CHECK_SHARES: _ClassVar[TaskKind]
    TASK_KIND_CONSISTENCY: _ClassVar[TaskKind]
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_TRAIN: TaskKind
TASK_KIND_EVALUATE: TaskKind
TASK_KIND_SHARE_KEYS: TaskKind
TASK_KIND_MASKED_INPUT: TaskKind
TASK_KIND_UNMASK: TaskKind
TASK_KIND_JOB_DONE: TaskKind
TASK_KIND_CHECK_SHARES: TaskKind
TASK_KIND_CONSISTENCY: TaskKind

class RegisterRequest(_message.Message):
    __slots__ = ("agent_version", "datasets", "device", "dataset_sizes", "unusable", "instance")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DATASET_SIZES_FIELD_NUMBER: _ClassVar[int]
    UNUSABLE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    datasets: _containers.RepeatedScalarFieldContainer[str]
    device: str
    dataset_sizes: _containers.RepeatedCompositeFieldContainer[DatasetSize]
    unusable: _containers.RepeatedCompositeFieldContainer[DatasetProblem]
    instance: str
    def __init__(self, agent_version: _Optional[str] = ..., datasets: _Optional[_Iterable[str]] = ..., device: _Optional[str] = ..., dataset_sizes: _Optional[_Iterable[_Union[DatasetSize, _Mapping]]] = ..., unusable: _Optional[_Iterable[_Union[DatasetProblem, _Mapping]]] = ..., instance: _Optional[str] = ...) -> None: ...

class DatasetSize(_message.Message):
    __slots__ = ("name", "train_records", "holdout_records")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TRAIN_RECORDS_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_RECORDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    train_records: int
    holdout_records: int
    def __init__(self, name: _Optional[str] = ..., train_records: _Optional[int] = ..., holdout_records: _Optional[int] = ...) -> None: ...

class DatasetProblem(_message.Message):
    __slots__ = ("dataset", "reason", "detail")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    reason: str
    detail: str
    def __init__(self, dataset: _Optional[str] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("site_id", "heartbeat_interval_s")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    heartbeat_interval_s: float
    def __init__(self, site_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("cpu_percent", "rss_bytes", "memory_percent", "gpus")
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    cpu_percent: float
    rss_bytes: int
    memory_percent: float
    gpus: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cpu_percent: _Optional[float] = ..., rss_bytes: _Optional[int] = ..., memory_percent: _Optional[float] = ..., gpus: _Optional[_Iterable[str]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("current_task", "resources")
    CURRENT_TASK_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    current_task: str
    resources: Resources
    def __init__(self, current_task: _Optional[str] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OpenTasksRequest(_message.Message):
    __slots__ = ("instance",)
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    instance: str
    def __init__(self, instance: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "job_id", "round", "kind", "signed_job", "signer_certificate", "model_version", "deadline_s", "share_keys", "masked_input", "unmask", "check_shares", "consistency", "lineage", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIGNED_JOB_FIELD_NUMBER: _ClassVar[int]
    SIGNER_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEYS_FIELD_NUMBER: _ClassVar[int]
    MASKED_INPUT_FIELD_NUMBER: _ClassVar[int]
    UNMASK_FIELD_NUMBER: _ClassVar[int]
    CHECK_SHARES_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    job_id: str
    round: int
    kind: TaskKind
    signed_job: _common_pb2.Envelope
    signer_certificate: bytes
    model_version: str
    deadline_s: float
    share_keys: ShareKeysRequest
    masked_input: MaskedInputRequest
    unmask: UnmaskRequest
    check_shares: CheckSharesRequest
    consistency: ConsistencyRequest
    lineage: ModelLineage
    attempt: int
    def __init__(self, task_id: _Optional[str] = ..., job_id: _Optional[str] = ..., round: _Optional[int] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., signed_job: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ..., signer_certificate: _Optional[bytes] = ..., model_version: _Optional[str] = ..., deadline_s: _Optional[float] = ..., share_keys: _Optional[_Union[ShareKeysRequest, _Mapping]] = ..., masked_input: _Optional[_Union[MaskedInputRequest, _Mapping]] = ..., unmask: _Optional[_Union[UnmaskRequest, _Mapping]] = ..., check_shares: _Optional[_Union[CheckSharesRequest, _Mapping]] = ..., consistency: _Optional[_Union[ConsistencyRequest, _Mapping]] = ..., lineage: _Optional[_Union[ModelLineage, _Mapping]] = ..., attempt: _Optional[int] = ...) -> None: ...

class ModelLineage(_message.Message):
    __slots__ = ("version", "parent_chain")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARENT_CHAIN_FIELD_NUMBER: _ClassVar[int]
    version: int
    parent_chain: bytes
    def __init__(self, version: _Optional[int] = ..., parent_chain: _Optional[bytes] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("job_id", "model_version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model_version: str
    def __init__(self, job_id: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class BundleRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class BlobPart(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.BlobHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[_common_pb2.BlobHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadPart(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.Envelope
    chunk: bytes
    def __init__(self, header: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("task_id", "blob", "num_samples", "metrics", "epsilon", "update_epsilon")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    UPDATE_EPSILON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    blob: _common_pb2.BlobHeader
    num_samples: int
    metrics: _containers.ScalarMap[str, float]
    epsilon: float
    update_epsilon: float
    def __init__(self, task_id: _Optional[str] = ..., blob: _Optional[_Union[_common_pb2.BlobHeader, _Mapping]] = ..., num_samples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., epsilon: _Optional[float] = ..., update_epsilon: _Optional[float] = ...) -> None: ...

class TaskReport(_message.Message):
    __slots__ = ("task_id", "kind", "outcome", "reason", "message", "metrics", "num_samples")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    kind: TaskKind
    outcome: _common_pb2.Outcome
    reason: str
    message: str
    metrics: _containers.ScalarMap[str, float]
    num_samples: int
    def __init__(self, task_id: _Optional[str] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., outcome: _Optional[_Union[_common_pb2.Outcome, str]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., num_samples: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RoundKeys(_message.Message):
    __slots__ = ("cipher_public_key", "mask_public_key", "task_id", "attempt")
    CIPHER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    cipher_public_key: bytes
    mask_public_key: bytes
    task_id: str
    attempt: int
    def __init__(self, cipher_public_key: _Optional[bytes] = ..., mask_public_key: _Optional[bytes] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class AdvertiseKeys(_message.Message):
    __slots__ = ("num_samples", "metrics", "epsilon", "update_epsilon", "task_id", "keys")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    UPDATE_EPSILON_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    num_samples: int
    metrics: _containers.ScalarMap[str, float]
    epsilon: float
    update_epsilon: float
    task_id: str
    keys: _common_pb2.Envelope
    def __init__(self, num_samples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., epsilon: _Optional[float] = ..., update_epsilon: _Optional[float] = ..., task_id: _Optional[str] = ..., keys: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class NeighbourKeys(_message.Message):
    __slots__ = ("site_id", "advertised", "certificate")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    ADVERTISED_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    advertised: _common_pb2.Envelope
    certificate: bytes
    def __init__(self, site_id: _Optional[str] = ..., advertised: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ..., certificate: _Optional[bytes] = ...) -> None: ...

class ShareKeysRequest(_message.Message):
    __slots__ = ("sites", "threshold", "num_selected")
    SITES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NUM_SELECTED_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedCompositeFieldContainer[NeighbourKeys]
    threshold: int
    num_selected: int
    def __init__(self, sites: _Optional[_Iterable[_Union[NeighbourKeys, _Mapping]]] = ..., threshold: _Optional[int] = ..., num_selected: _Optional[int] = ...) -> None: ...

class EncryptedShare(_message.Message):
    __slots__ = ("to_site", "ciphertext")
    TO_SITE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    to_site: str
    ciphertext: bytes
    def __init__(self, to_site: _Optional[str] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class ShareKeys(_message.Message):
    __slots__ = ("shares", "task_id")
    SHARES_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    task_id: str
    def __init__(self, shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ..., task_id: _Optional[str] = ...) -> None: ...

class EncryptedShareFrom(_message.Message):
    __slots__ = ("from_site", "ciphertext")
    FROM_SITE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    from_site: str
    ciphertext: bytes
    def __init__(self, from_site: _Optional[str] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class CheckSharesRequest(_message.Message):
    __slots__ = ("shares", "shared")
    SHARES_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShareFrom]
    shared: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, shares: _Optional[_Iterable[_Union[EncryptedShareFrom, _Mapping]]] = ..., shared: _Optional[_Iterable[str]] = ...) -> None: ...

class RejectedShare(_message.Message):
    __slots__ = ("from_site", "reason")
    FROM_SITE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    from_site: str
    reason: str
    def __init__(self, from_site: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SharesChecked(_message.Message):
    __slots__ = ("task_id", "rejected")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedShare]
    def __init__(self, task_id: _Optional[str] = ..., rejected: _Optional[_Iterable[_Union[RejectedShare, _Mapping]]] = ...) -> None: ...

class SitePair(_message.Message):
    __slots__ = ("a", "b")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    a: str
    b: str
    def __init__(self, a: _Optional[str] = ..., b: _Optional[str] = ...) -> None: ...

class MaskedInputRequest(_message.Message):
    __slots__ = ("excluded",)
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    excluded: _containers.RepeatedCompositeFieldContainer[SitePair]
    def __init__(self, excluded: _Optional[_Iterable[_Union[SitePair, _Mapping]]] = ...) -> None: ...

class ConsistencyRequest(_message.Message):
    __slots__ = ("survivors",)
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    survivors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, survivors: _Optional[_Iterable[str]] = ...) -> None: ...

class ConsistencySignature(_message.Message):
    __slots__ = ("task_id", "session_id", "view_sha256", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VIEW_SHA256_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    session_id: bytes
    view_sha256: bytes
    attempt: int
    def __init__(self, task_id: _Optional[str] = ..., session_id: _Optional[bytes] = ..., view_sha256: _Optional[bytes] = ..., attempt: _Optional[int] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("signatures",)
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    signatures: _containers.RepeatedCompositeFieldContainer[_common_pb2.Envelope]
    def __init__(self, signatures: _Optional[_Iterable[_Union[_common_pb2.Envelope, _Mapping]]] = ...) -> None: ...

class RevealedShare(_message.Message):
    __slots__ = ("site_id", "share")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    share: bytes
    def __init__(self, site_id: _Optional[str] = ..., share: _Optional[bytes] = ...) -> None: ...

class UnmaskShares(_message.Message):
    __slots__ = ("seed_shares", "key_shares", "task_id")
    SEED_SHARES_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    seed_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    key_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    task_id: str
    def __init__(self, seed_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ..., key_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ..., task_id: _Optional[str] = ...) -> None: ...
