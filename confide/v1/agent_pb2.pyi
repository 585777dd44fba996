from confide.v1 import federation_pb2 as _federation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("site_id", "connected", "aggregator", "current_task", "resources", "uptime_s", "datasets", "device", "tasks_done", "tasks_failed", "isolation", "unusable", "runtime_problem")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    AGGREGATOR_FIELD_NUMBER: _ClassVar[int]
    CURRENT_TASK_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TASKS_DONE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FAILED_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_FIELD_NUMBER: _ClassVar[int]
    UNUSABLE_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    connected: bool
    aggregator: str
    current_task: str
    resources: _federation_pb2.Resources
    uptime_s: float
    datasets: _containers.RepeatedScalarFieldContainer[str]
    device: str
    tasks_done: int
    tasks_failed: int
    isolation: str
    unusable: _containers.RepeatedCompositeFieldContainer[_federation_pb2.DatasetProblem]
    runtime_problem: str
    def __init__(self, site_id: _Optional[str] = ..., connected: _Optional[bool] = ..., aggregator: _Optional[str] = ..., current_task: _Optional[str] = ..., resources: _Optional[_Union[_federation_pb2.Resources, _Mapping]] = ..., uptime_s: _Optional[float] = ..., datasets: _Optional[_Iterable[str]] = ..., device: _Optional[str] = ..., tasks_done: _Optional[int] = ..., tasks_failed: _Optional[int] = ..., isolation: _Optional[str] = ..., unusable: _Optional[_Iterable[_Union[_federation_pb2.DatasetProblem, _Mapping]]] = ..., runtime_problem: _Optional[str] = ...) -> None: ...

class BudgetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DatasetBudget(_message.Message):
    __slots__ = ("dataset", "max_epsilon", "spent_epsilon", "remaining_epsilon", "delta", "spent_update_epsilon", "rounds")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    MAX_EPSILON_FIELD_NUMBER: _ClassVar[int]
    SPENT_EPSILON_FIELD_NUMBER: _ClassVar[int]
    REMAINING_EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    SPENT_UPDATE_EPSILON_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    max_epsilon: float
    spent_epsilon: float
    remaining_epsilon: float
    delta: float
    spent_update_epsilon: float
    rounds: int
    def __init__(self, dataset: _Optional[str] = ..., max_epsilon: _Optional[float] = ..., spent_epsilon: _Optional[float] = ..., remaining_epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., spent_update_epsilon: _Optional[float] = ..., rounds: _Optional[int] = ...) -> None: ...

class BudgetReply(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetBudget]
    def __init__(self, datasets: _Optional[_Iterable[_Union[DatasetBudget, _Mapping]]] = ...) -> None: ...

class JobsRequest(_message.Message):
    __slots__ = ("include_decided",)
    INCLUDE_DECIDED_FIELD_NUMBER: _ClassVar[int]
    include_decided: bool
    def __init__(self, include_decided: _Optional[bool] = ...) -> None: ...

class ApprovalRequestInfo(_message.Message):
    __slots__ = ("job_id", "digest", "signer", "code_sha256", "dataset", "privacy", "rounds", "requested_at", "expires_at", "state", "decided_at", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    CODE_SHA256_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    digest: str
    signer: str
    code_sha256: str
    dataset: str
    privacy: str
    rounds: int
    requested_at: float
    expires_at: float
    state: str
    decided_at: float
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., digest: _Optional[str] = ..., signer: _Optional[str] = ..., code_sha256: _Optional[str] = ..., dataset: _Optional[str] = ..., privacy: _Optional[str] = ..., rounds: _Optional[int] = ..., requested_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., state: _Optional[str] = ..., decided_at: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class JobsReply(_message.Message):
    __slots__ = ("jobs", "mode")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[ApprovalRequestInfo]
    mode: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[ApprovalRequestInfo, _Mapping]]] = ..., mode: _Optional[str] = ...) -> None: ...

class ApproveRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DenyRequest(_message.Message):
    __slots__ = ("job_id", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DecisionReply(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: ApprovalRequestInfo
    def __init__(self, job: _Optional[_Union[ApprovalRequestInfo, _Mapping]] = ...) -> None: ...
