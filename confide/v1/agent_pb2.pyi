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
    __slots__ = ("site_id", "connected", "aggregator", "current_task", "resources", "uptime_s", "datasets", "device", "tasks_done", "tasks_failed", "isolation")
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
    def __init__(self, site_id: _Optional[str] = ..., connected: _Optional[bool] = ..., aggregator: _Optional[str] = ..., current_task: _Optional[str] = ..., resources: _Optional[_Union[_federation_pb2.Resources, _Mapping]] = ..., uptime_s: _Optional[float] = ..., datasets: _Optional[_Iterable[str]] = ..., device: _Optional[str] = ..., tasks_done: _Optional[int] = ..., tasks_failed: _Optional[int] = ..., isolation: _Optional[str] = ...) -> None: ...

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
