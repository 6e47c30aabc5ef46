from cbir_client.v1 import common_pb2 as _common_pb2
from cbir_client.v1 import index_pb2 as _index_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListStoredImagesResponse(_message.Message):
    __slots__ = ("images", "next_cursor", "total")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[StoredImage]
    next_cursor: str
    total: int
    def __init__(self, images: _Optional[_Iterable[_Union[StoredImage, _Mapping]]] = ..., next_cursor: _Optional[str] = ..., total: _Optional[int] = ...) -> None: ...

class SearchBatchRequest(_message.Message):
    __slots__ = ("queries", "collection")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[SearchRequest]
    collection: str
    def __init__(self, queries: _Optional[_Iterable[_Union[SearchRequest, _Mapping]]] = ..., collection: _Optional[str] = ...) -> None: ...

class SearchBatchItem(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: SearchResponse
    error: _common_pb2.ItemError
    def __init__(self, response: _Optional[_Union[SearchResponse, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.ItemError, _Mapping]] = ...) -> None: ...

class SearchBatchResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[SearchBatchItem]
    def __init__(self, items: _Optional[_Iterable[_Union[SearchBatchItem, _Mapping]]] = ...) -> None: ...

class GetStoredImageRequest(_message.Message):
    __slots__ = ("collection", "id", "include_thumbnail", "include_source")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    id: int
    include_thumbnail: bool
    include_source: bool
    def __init__(self, collection: _Optional[str] = ..., id: _Optional[int] = ..., include_thumbnail: _Optional[bool] = ..., include_source: _Optional[bool] = ...) -> None: ...

class StoredImage(_message.Message):
    __slots__ = ("id", "file_name", "path", "label", "predicted_class", "predicted_name", "created_at_ms", "content_hash", "thumbnail", "collection", "source_image", "has_source")
    ID_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    HAS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    id: int
    file_name: str
    path: str
    label: str
    predicted_class: int
    predicted_name: str
    created_at_ms: int
    content_hash: str
    thumbnail: bytes
    collection: str
    source_image: bytes
    has_source: bool
    def __init__(self, id: _Optional[int] = ..., file_name: _Optional[str] = ..., path: _Optional[str] = ..., label: _Optional[str] = ..., predicted_class: _Optional[int] = ..., predicted_name: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., content_hash: _Optional[str] = ..., thumbnail: _Optional[bytes] = ..., collection: _Optional[str] = ..., source_image: _Optional[bytes] = ..., has_source: _Optional[bool] = ...) -> None: ...

class CreateGatewayCollectionRequest(_message.Message):
    __slots__ = ("name", "description", "if_not_exists")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    IF_NOT_EXISTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    if_not_exists: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., if_not_exists: _Optional[bool] = ...) -> None: ...

class NewImage(_message.Message):
    __slots__ = ("file_name", "path", "label", "data")
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    path: str
    label: str
    data: bytes
    def __init__(self, file_name: _Optional[str] = ..., path: _Optional[str] = ..., label: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class AddImagesRequest(_message.Message):
    __slots__ = ("collection", "images", "create_collection", "replace")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    CREATE_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    images: _containers.RepeatedCompositeFieldContainer[NewImage]
    create_collection: bool
    replace: bool
    def __init__(self, collection: _Optional[str] = ..., images: _Optional[_Iterable[_Union[NewImage, _Mapping]]] = ..., create_collection: _Optional[bool] = ..., replace: _Optional[bool] = ...) -> None: ...

class AddImageResult(_message.Message):
    __slots__ = ("file_name", "path", "id", "created", "predicted_class", "predicted_name", "error")
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_NAME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    path: str
    id: int
    created: bool
    predicted_class: int
    predicted_name: str
    error: str
    def __init__(self, file_name: _Optional[str] = ..., path: _Optional[str] = ..., id: _Optional[int] = ..., created: _Optional[bool] = ..., predicted_class: _Optional[int] = ..., predicted_name: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class AddImagesResponse(_message.Message):
    __slots__ = ("results", "added", "failed")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[AddImageResult]
    added: int
    failed: int
    def __init__(self, results: _Optional[_Iterable[_Union[AddImageResult, _Mapping]]] = ..., added: _Optional[int] = ..., failed: _Optional[int] = ...) -> None: ...

class StartIndexJobRequest(_message.Message):
    __slots__ = ("collection", "path", "create_collection")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CREATE_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    path: str
    create_collection: bool
    def __init__(self, collection: _Optional[str] = ..., path: _Optional[str] = ..., create_collection: _Optional[bool] = ...) -> None: ...

class GetIndexJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class StoredImageQuery(_message.Message):
    __slots__ = ("collection", "id", "exclude_self")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SELF_FIELD_NUMBER: _ClassVar[int]
    collection: str
    id: int
    exclude_self: bool
    def __init__(self, collection: _Optional[str] = ..., id: _Optional[int] = ..., exclude_self: _Optional[bool] = ...) -> None: ...

class VectorQuery(_message.Message):
    __slots__ = ("values", "predicted_class", "class_probabilities")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    CLASS_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    predicted_class: int
    class_probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ..., predicted_class: _Optional[int] = ..., class_probabilities: _Optional[_Iterable[float]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("image", "stored", "vector", "collection", "top_k", "min_similarity", "mode", "filter", "offset")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    stored: StoredImageQuery
    vector: VectorQuery
    collection: str
    top_k: int
    min_similarity: float
    mode: _common_pb2.SearchMode
    filter: _index_pb2.ImageFilter
    offset: int
    def __init__(self, image: _Optional[bytes] = ..., stored: _Optional[_Union[StoredImageQuery, _Mapping]] = ..., vector: _Optional[_Union[VectorQuery, _Mapping]] = ..., collection: _Optional[str] = ..., top_k: _Optional[int] = ..., min_similarity: _Optional[float] = ..., mode: _Optional[_Union[_common_pb2.SearchMode, str]] = ..., filter: _Optional[_Union[_index_pb2.ImageFilter, _Mapping]] = ..., offset: _Optional[int] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("id", "file_name", "path", "label", "distance", "similarity", "partition", "partition_name", "created_at_ms", "rank", "score")
    ID_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    PARTITION_NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    id: int
    file_name: str
    path: str
    label: str
    distance: float
    similarity: float
    partition: int
    partition_name: str
    created_at_ms: int
    rank: int
    score: float
    def __init__(self, id: _Optional[int] = ..., file_name: _Optional[str] = ..., path: _Optional[str] = ..., label: _Optional[str] = ..., distance: _Optional[float] = ..., similarity: _Optional[float] = ..., partition: _Optional[int] = ..., partition_name: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., rank: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class QueryInfo(_message.Message):
    __slots__ = ("predicted_class", "predicted_name", "confidence", "top5")
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    TOP5_FIELD_NUMBER: _ClassVar[int]
    predicted_class: int
    predicted_name: str
    confidence: float
    top5: _containers.RepeatedCompositeFieldContainer[_common_pb2.ClassScore]
    def __init__(self, predicted_class: _Optional[int] = ..., predicted_name: _Optional[str] = ..., confidence: _Optional[float] = ..., top5: _Optional[_Iterable[_Union[_common_pb2.ClassScore, _Mapping]]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("results", "query", "stats", "took_ms", "collection", "mode", "has_more", "ranked_by")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    TOOK_MS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    RANKED_BY_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    query: QueryInfo
    stats: _index_pb2.SearchStats
    took_ms: float
    collection: str
    mode: _common_pb2.SearchMode
    has_more: bool
    ranked_by: _common_pb2.RankedBy
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ..., query: _Optional[_Union[QueryInfo, _Mapping]] = ..., stats: _Optional[_Union[_index_pb2.SearchStats, _Mapping]] = ..., took_ms: _Optional[float] = ..., collection: _Optional[str] = ..., mode: _Optional[_Union[_common_pb2.SearchMode, str]] = ..., has_more: _Optional[bool] = ..., ranked_by: _Optional[_Union[_common_pb2.RankedBy, str]] = ...) -> None: ...
