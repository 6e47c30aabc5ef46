from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_INTERACTIVE: _ClassVar[Priority]
    PRIORITY_BULK: _ClassVar[Priority]

class SearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_MODE_UNSPECIFIED: _ClassVar[SearchMode]
    SEARCH_MODE_PARTITION: _ClassVar[SearchMode]
    SEARCH_MODE_PROBE: _ClassVar[SearchMode]
    SEARCH_MODE_EXACT: _ClassVar[SearchMode]
    SEARCH_MODE_REFINED: _ClassVar[SearchMode]

class RankedBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RANKED_BY_UNSPECIFIED: _ClassVar[RankedBy]
    RANKED_BY_DISTANCE: _ClassVar[RankedBy]
    RANKED_BY_REFINED_SCORE: _ClassVar[RankedBy]
PRIORITY_UNSPECIFIED: Priority
PRIORITY_INTERACTIVE: Priority
PRIORITY_BULK: Priority
SEARCH_MODE_UNSPECIFIED: SearchMode
SEARCH_MODE_PARTITION: SearchMode
SEARCH_MODE_PROBE: SearchMode
SEARCH_MODE_EXACT: SearchMode
SEARCH_MODE_REFINED: SearchMode
RANKED_BY_UNSPECIFIED: RankedBy
RANKED_BY_DISTANCE: RankedBy
RANKED_BY_REFINED_SCORE: RankedBy

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ImageInput(_message.Message):
    __slots__ = ("id", "data")
    ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    data: bytes
    def __init__(self, id: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class ClassScore(_message.Message):
    __slots__ = ("index", "name", "probability")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    probability: float
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("feature", "probabilities", "predicted_class", "predicted_name", "confidence", "top5", "width", "height")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    TOP5_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    feature: _containers.RepeatedScalarFieldContainer[float]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    predicted_class: int
    predicted_name: str
    confidence: float
    top5: _containers.RepeatedCompositeFieldContainer[ClassScore]
    width: int
    height: int
    def __init__(self, feature: _Optional[_Iterable[float]] = ..., probabilities: _Optional[_Iterable[float]] = ..., predicted_class: _Optional[int] = ..., predicted_name: _Optional[str] = ..., confidence: _Optional[float] = ..., top5: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class OperationProgress(_message.Message):
    __slots__ = ("operation_id", "state", "done", "failed", "total", "items_per_second", "message", "started_at_ms", "updated_at_ms")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[OperationProgress.State]
        STATE_PENDING: _ClassVar[OperationProgress.State]
        STATE_RUNNING: _ClassVar[OperationProgress.State]
        STATE_SUCCEEDED: _ClassVar[OperationProgress.State]
        STATE_FAILED: _ClassVar[OperationProgress.State]
        STATE_CANCELLED: _ClassVar[OperationProgress.State]
    STATE_UNSPECIFIED: OperationProgress.State
    STATE_PENDING: OperationProgress.State
    STATE_RUNNING: OperationProgress.State
    STATE_SUCCEEDED: OperationProgress.State
    STATE_FAILED: OperationProgress.State
    STATE_CANCELLED: OperationProgress.State
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ITEMS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    state: OperationProgress.State
    done: int
    failed: int
    total: int
    items_per_second: float
    message: str
    started_at_ms: int
    updated_at_ms: int
    def __init__(self, operation_id: _Optional[str] = ..., state: _Optional[_Union[OperationProgress.State, str]] = ..., done: _Optional[int] = ..., failed: _Optional[int] = ..., total: _Optional[int] = ..., items_per_second: _Optional[float] = ..., message: _Optional[str] = ..., started_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class FailedFile(_message.Message):
    __slots__ = ("path", "reason")
    PATH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    path: str
    reason: str
    def __init__(self, path: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class IndexJob(_message.Message):
    __slots__ = ("id", "collection", "path", "state", "done", "failed", "total", "images_per_second", "failures", "message", "started_at_ms", "updated_at_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    collection: str
    path: str
    state: OperationProgress.State
    done: int
    failed: int
    total: int
    images_per_second: float
    failures: _containers.RepeatedCompositeFieldContainer[FailedFile]
    message: str
    started_at_ms: int
    updated_at_ms: int
    def __init__(self, id: _Optional[str] = ..., collection: _Optional[str] = ..., path: _Optional[str] = ..., state: _Optional[_Union[OperationProgress.State, str]] = ..., done: _Optional[int] = ..., failed: _Optional[int] = ..., total: _Optional[int] = ..., images_per_second: _Optional[float] = ..., failures: _Optional[_Iterable[_Union[FailedFile, _Mapping]]] = ..., message: _Optional[str] = ..., started_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...
