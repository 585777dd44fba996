from confide.v1 import common_pb2 as _common_pb2
from confide.v1 import federation_pb2 as _federation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_PENDING: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_DONE: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class BlobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BLOB_KIND_UNSPECIFIED: _ClassVar[BlobKind]
    BLOB_KIND_CODE_BUNDLE: _ClassVar[BlobKind]
    BLOB_KIND_MODEL: _ClassVar[BlobKind]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_PENDING: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_DONE: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
BLOB_KIND_UNSPECIFIED: BlobKind
BLOB_KIND_CODE_BUNDLE: BlobKind
BLOB_KIND_MODEL: BlobKind

class SubmitJobReply(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class SiteRound(_message.Message):
    __slots__ = ("site_id", "outcome", "reason", "num_samples", "epsilon", "update_epsilon", "metrics", "weight", "update_norm", "clipped", "detail")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    UPDATE_EPSILON_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_NORM_FIELD_NUMBER: _ClassVar[int]
    CLIPPED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    outcome: _common_pb2.Outcome
    reason: str
    num_samples: int
    epsilon: float
    update_epsilon: float
    metrics: _containers.ScalarMap[str, float]
    weight: float
    update_norm: float
    clipped: bool
    detail: str
    def __init__(self, site_id: _Optional[str] = ..., outcome: _Optional[_Union[_common_pb2.Outcome, str]] = ..., reason: _Optional[str] = ..., num_samples: _Optional[int] = ..., epsilon: _Optional[float] = ..., update_epsilon: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ..., weight: _Optional[float] = ..., update_norm: _Optional[float] = ..., clipped: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class RoundStatus(_message.Message):
    __slots__ = ("round", "state", "sites", "aggregated", "accuracy", "loss", "eval_samples", "seconds", "model_version")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    AGGREGATED_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    EVAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    round: int
    state: str
    sites: _containers.RepeatedCompositeFieldContainer[SiteRound]
    aggregated: int
    accuracy: float
    loss: float
    eval_samples: int
    seconds: float
    model_version: str
    def __init__(self, round: _Optional[int] = ..., state: _Optional[str] = ..., sites: _Optional[_Iterable[_Union[SiteRound, _Mapping]]] = ..., aggregated: _Optional[int] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., eval_samples: _Optional[int] = ..., seconds: _Optional[float] = ..., model_version: _Optional[str] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "spec", "state", "error", "rounds", "model_version", "final_accuracy", "final_loss", "final_eval_samples", "epsilon_by_site", "submitted_by", "rounds_total", "versions", "waiting")
    class EpsilonBySiteEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FINAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    FINAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    FINAL_EVAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    EPSILON_BY_SITE_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_BY_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec: _common_pb2.JobSpec
    state: JobState
    error: str
    rounds: _containers.RepeatedCompositeFieldContainer[RoundStatus]
    model_version: str
    final_accuracy: float
    final_loss: float
    final_eval_samples: int
    epsilon_by_site: _containers.ScalarMap[str, float]
    submitted_by: str
    rounds_total: int
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    waiting: str
    def __init__(self, job_id: _Optional[str] = ..., spec: _Optional[_Union[_common_pb2.JobSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., error: _Optional[str] = ..., rounds: _Optional[_Iterable[_Union[RoundStatus, _Mapping]]] = ..., model_version: _Optional[str] = ..., final_accuracy: _Optional[float] = ..., final_loss: _Optional[float] = ..., final_eval_samples: _Optional[int] = ..., epsilon_by_site: _Optional[_Mapping[str, float]] = ..., submitted_by: _Optional[str] = ..., rounds_total: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., waiting: _Optional[str] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("version", "sha256", "accuracy", "loss", "eval_samples", "created")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    EVAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    version: int
    sha256: str
    accuracy: float
    loss: float
    eval_samples: int
    created: float
    def __init__(self, version: _Optional[int] = ..., sha256: _Optional[str] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., eval_samples: _Optional[int] = ..., created: _Optional[float] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class JobList(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListRoundsRequest(_message.Message):
    __slots__ = ("job_id", "page_size", "page_token")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    page_size: int
    page_token: str
    def __init__(self, job_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class RoundList(_message.Message):
    __slots__ = ("rounds", "next_page_token")
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rounds: _containers.RepeatedCompositeFieldContainer[RoundStatus]
    next_page_token: str
    def __init__(self, rounds: _Optional[_Iterable[_Union[RoundStatus, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListSitesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SiteInfo(_message.Message):
    __slots__ = ("site_id", "connected", "last_heartbeat", "datasets", "device", "current_task", "resources", "dataset_sizes", "unusable")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_TASK_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    DATASET_SIZES_FIELD_NUMBER: _ClassVar[int]
    UNUSABLE_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    connected: bool
    last_heartbeat: float
    datasets: _containers.RepeatedScalarFieldContainer[str]
    device: str
    current_task: str
    resources: _federation_pb2.Resources
    dataset_sizes: _containers.RepeatedCompositeFieldContainer[_federation_pb2.DatasetSize]
    unusable: _containers.RepeatedCompositeFieldContainer[_federation_pb2.DatasetProblem]
    def __init__(self, site_id: _Optional[str] = ..., connected: _Optional[bool] = ..., last_heartbeat: _Optional[float] = ..., datasets: _Optional[_Iterable[str]] = ..., device: _Optional[str] = ..., current_task: _Optional[str] = ..., resources: _Optional[_Union[_federation_pb2.Resources, _Mapping]] = ..., dataset_sizes: _Optional[_Iterable[_Union[_federation_pb2.DatasetSize, _Mapping]]] = ..., unusable: _Optional[_Iterable[_Union[_federation_pb2.DatasetProblem, _Mapping]]] = ...) -> None: ...

class SiteList(_message.Message):
    __slots__ = ("sites", "next_page_token")
    SITES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedCompositeFieldContainer[SiteInfo]
    next_page_token: str
    def __init__(self, sites: _Optional[_Iterable[_Union[SiteInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AuditRequest(_message.Message):
    __slots__ = ("after_seq", "limit", "page_size", "page_token")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    limit: int
    page_size: int
    page_token: str
    def __init__(self, after_seq: _Optional[int] = ..., limit: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("seq", "at", "event", "actor", "job_id", "round", "reason", "detail", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at: float
    event: str
    actor: str
    job_id: str
    round: int
    reason: str
    detail: str
    hash: bytes
    def __init__(self, seq: _Optional[int] = ..., at: _Optional[float] = ..., event: _Optional[str] = ..., actor: _Optional[str] = ..., job_id: _Optional[str] = ..., round: _Optional[int] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., hash: _Optional[bytes] = ...) -> None: ...

class AuditList(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class BlobUploadHeader(_message.Message):
    __slots__ = ("kind", "blob")
    KIND_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    kind: BlobKind
    blob: _common_pb2.BlobHeader
    def __init__(self, kind: _Optional[_Union[BlobKind, str]] = ..., blob: _Optional[_Union[_common_pb2.BlobHeader, _Mapping]] = ...) -> None: ...

class BlobUpload(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: BlobUploadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[BlobUploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadBlobReply(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...
