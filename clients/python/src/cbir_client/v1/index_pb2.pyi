from cbir_client.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageSort(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_SORT_UNSPECIFIED: _ClassVar[ImageSort]
    IMAGE_SORT_TIME: _ClassVar[ImageSort]
    IMAGE_SORT_NAME: _ClassVar[ImageSort]
    IMAGE_SORT_LABEL: _ClassVar[ImageSort]
IMAGE_SORT_UNSPECIFIED: ImageSort
IMAGE_SORT_TIME: ImageSort
IMAGE_SORT_NAME: ImageSort
IMAGE_SORT_LABEL: ImageSort

class ImageFilter(_message.Message):
    __slots__ = ("labels_in", "labels_not_in", "path_prefix", "created_from_ms", "created_to_ms")
    LABELS_IN_FIELD_NUMBER: _ClassVar[int]
    LABELS_NOT_IN_FIELD_NUMBER: _ClassVar[int]
    PATH_PREFIX_FIELD_NUMBER: _ClassVar[int]
    CREATED_FROM_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_TO_MS_FIELD_NUMBER: _ClassVar[int]
    labels_in: _containers.RepeatedScalarFieldContainer[str]
    labels_not_in: _containers.RepeatedScalarFieldContainer[str]
    path_prefix: str
    created_from_ms: int
    created_to_ms: int
    def __init__(self, labels_in: _Optional[_Iterable[str]] = ..., labels_not_in: _Optional[_Iterable[str]] = ..., path_prefix: _Optional[str] = ..., created_from_ms: _Optional[int] = ..., created_to_ms: _Optional[int] = ...) -> None: ...

class ListImagesRequest(_message.Message):
    __slots__ = ("collection", "sort", "descending", "page_size", "cursor", "filter", "include_thumbnail")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    DESCENDING_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    collection: str
    sort: ImageSort
    descending: bool
    page_size: int
    cursor: str
    filter: ImageFilter
    include_thumbnail: bool
    def __init__(self, collection: _Optional[str] = ..., sort: _Optional[_Union[ImageSort, str]] = ..., descending: _Optional[bool] = ..., page_size: _Optional[int] = ..., cursor: _Optional[str] = ..., filter: _Optional[_Union[ImageFilter, _Mapping]] = ..., include_thumbnail: _Optional[bool] = ...) -> None: ...

class ListImagesResponse(_message.Message):
    __slots__ = ("images", "next_cursor", "total")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[ImageRecord]
    next_cursor: str
    total: int
    def __init__(self, images: _Optional[_Iterable[_Union[ImageRecord, _Mapping]]] = ..., next_cursor: _Optional[str] = ..., total: _Optional[int] = ...) -> None: ...

class IndexSearchBatchRequest(_message.Message):
    __slots__ = ("queries",)
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[IndexSearchRequest]
    def __init__(self, queries: _Optional[_Iterable[_Union[IndexSearchRequest, _Mapping]]] = ...) -> None: ...

class IndexSearchBatchItem(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: IndexSearchResponse
    error: _common_pb2.ItemError
    def __init__(self, response: _Optional[_Union[IndexSearchResponse, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.ItemError, _Mapping]] = ...) -> None: ...

class IndexSearchBatchResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[IndexSearchBatchItem]
    def __init__(self, items: _Optional[_Iterable[_Union[IndexSearchBatchItem, _Mapping]]] = ...) -> None: ...

class FindDuplicatesRequest(_message.Message):
    __slots__ = ("collection", "min_similarity")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    collection: str
    min_similarity: float
    def __init__(self, collection: _Optional[str] = ..., min_similarity: _Optional[float] = ...) -> None: ...

class FindDuplicatesResponse(_message.Message):
    __slots__ = ("operation_id",)
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    def __init__(self, operation_id: _Optional[str] = ...) -> None: ...

class ListDuplicatesRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class DuplicateMember(_message.Message):
    __slots__ = ("image", "similarity")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    image: ImageRecord
    similarity: float
    def __init__(self, image: _Optional[_Union[ImageRecord, _Mapping]] = ..., similarity: _Optional[float] = ...) -> None: ...

class DuplicateGroup(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[DuplicateMember]
    def __init__(self, members: _Optional[_Iterable[_Union[DuplicateMember, _Mapping]]] = ...) -> None: ...

class ListDuplicatesResponse(_message.Message):
    __slots__ = ("operation", "min_similarity", "groups", "total_groups")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_GROUPS_FIELD_NUMBER: _ClassVar[int]
    operation: _common_pb2.OperationProgress
    min_similarity: float
    groups: _containers.RepeatedCompositeFieldContainer[DuplicateGroup]
    total_groups: int
    def __init__(self, operation: _Optional[_Union[_common_pb2.OperationProgress, _Mapping]] = ..., min_similarity: _Optional[float] = ..., groups: _Optional[_Iterable[_Union[DuplicateGroup, _Mapping]]] = ..., total_groups: _Optional[int] = ...) -> None: ...

class ExportCollectionRequest(_message.Message):
    __slots__ = ("collection", "batch_size")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    batch_size: int
    def __init__(self, collection: _Optional[str] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ExportHeader(_message.Message):
    __slots__ = ("version", "collection", "count")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    version: int
    collection: Collection
    count: int
    def __init__(self, version: _Optional[int] = ..., collection: _Optional[_Union[Collection, _Mapping]] = ..., count: _Optional[int] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("header", "images", "target_name")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TARGET_NAME_FIELD_NUMBER: _ClassVar[int]
    header: ExportHeader
    images: ImageBatch
    target_name: str
    def __init__(self, header: _Optional[_Union[ExportHeader, _Mapping]] = ..., images: _Optional[_Union[ImageBatch, _Mapping]] = ..., target_name: _Optional[str] = ...) -> None: ...

class ImageBatch(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[ImageRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[ImageRecord, _Mapping]]] = ...) -> None: ...

class ImportCollectionResponse(_message.Message):
    __slots__ = ("collection", "imported")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMPORTED_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    imported: int
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ..., imported: _Optional[int] = ...) -> None: ...

class BackupDatabaseRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackupChunk(_message.Message):
    __slots__ = ("data", "total_bytes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    total_bytes: int
    def __init__(self, data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class Collection(_message.Message):
    __slots__ = ("name", "physical_name", "model", "dims", "count", "description", "created_at_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    physical_name: str
    model: _common_pb2.ModelRef
    dims: int
    count: int
    description: str
    created_at_ms: int
    def __init__(self, name: _Optional[str] = ..., physical_name: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., dims: _Optional[int] = ..., count: _Optional[int] = ..., description: _Optional[str] = ..., created_at_ms: _Optional[int] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "model", "dims", "description", "if_not_exists")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    IF_NOT_EXISTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: _common_pb2.ModelRef
    dims: int
    description: str
    if_not_exists: bool
    def __init__(self, name: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., dims: _Optional[int] = ..., description: _Optional[str] = ..., if_not_exists: _Optional[bool] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class GetCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[Collection]
    def __init__(self, collections: _Optional[_Iterable[_Union[Collection, _Mapping]]] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ImageRecord(_message.Message):
    __slots__ = ("id", "content_hash", "file_name", "path", "label", "predicted_class", "feature", "thumbnail", "created_at_ms", "class_probabilities", "source_image", "has_source")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CLASS_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    HAS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    id: int
    content_hash: str
    file_name: str
    path: str
    label: str
    predicted_class: int
    feature: _containers.RepeatedScalarFieldContainer[float]
    thumbnail: bytes
    created_at_ms: int
    class_probabilities: _containers.RepeatedScalarFieldContainer[float]
    source_image: bytes
    has_source: bool
    def __init__(self, id: _Optional[int] = ..., content_hash: _Optional[str] = ..., file_name: _Optional[str] = ..., path: _Optional[str] = ..., label: _Optional[str] = ..., predicted_class: _Optional[int] = ..., feature: _Optional[_Iterable[float]] = ..., thumbnail: _Optional[bytes] = ..., created_at_ms: _Optional[int] = ..., class_probabilities: _Optional[_Iterable[float]] = ..., source_image: _Optional[bytes] = ..., has_source: _Optional[bool] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "records", "replace")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    records: _containers.RepeatedCompositeFieldContainer[ImageRecord]
    replace: bool
    def __init__(self, collection: _Optional[str] = ..., records: _Optional[_Iterable[_Union[ImageRecord, _Mapping]]] = ..., replace: _Optional[bool] = ...) -> None: ...

class UpsertResult(_message.Message):
    __slots__ = ("id", "content_hash", "created")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    id: int
    content_hash: str
    created: bool
    def __init__(self, id: _Optional[int] = ..., content_hash: _Optional[str] = ..., created: _Optional[bool] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[UpsertResult]
    def __init__(self, results: _Optional[_Iterable[_Union[UpsertResult, _Mapping]]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class IndexSearchRequest(_message.Message):
    __slots__ = ("collection", "vector", "predicted_class", "class_probabilities", "top_k", "mode", "min_similarity", "exclude_id", "model", "filter", "offset", "expansion_only", "expansion")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    CLASS_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    EXPANSION_ONLY_FIELD_NUMBER: _ClassVar[int]
    EXPANSION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    predicted_class: int
    class_probabilities: _containers.RepeatedScalarFieldContainer[float]
    top_k: int
    mode: _common_pb2.SearchMode
    min_similarity: float
    exclude_id: int
    model: _common_pb2.ModelRef
    filter: ImageFilter
    offset: int
    expansion_only: bool
    expansion: _containers.RepeatedCompositeFieldContainer[ExpansionTerm]
    def __init__(self, collection: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ..., predicted_class: _Optional[int] = ..., class_probabilities: _Optional[_Iterable[float]] = ..., top_k: _Optional[int] = ..., mode: _Optional[_Union[_common_pb2.SearchMode, str]] = ..., min_similarity: _Optional[float] = ..., exclude_id: _Optional[int] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., filter: _Optional[_Union[ImageFilter, _Mapping]] = ..., offset: _Optional[int] = ..., expansion_only: _Optional[bool] = ..., expansion: _Optional[_Iterable[_Union[ExpansionTerm, _Mapping]]] = ...) -> None: ...

class ExpansionTerm(_message.Message):
    __slots__ = ("id", "rank", "weight", "vector")
    ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    id: int
    rank: float
    weight: float
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, id: _Optional[int] = ..., rank: _Optional[float] = ..., weight: _Optional[float] = ..., vector: _Optional[_Iterable[float]] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("id", "file_name", "path", "label", "distance", "similarity", "partition", "content_hash", "created_at_ms", "score")
    ID_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    id: int
    file_name: str
    path: str
    label: str
    distance: float
    similarity: float
    partition: int
    content_hash: str
    created_at_ms: int
    score: float
    def __init__(self, id: _Optional[int] = ..., file_name: _Optional[str] = ..., path: _Optional[str] = ..., label: _Optional[str] = ..., distance: _Optional[float] = ..., similarity: _Optional[float] = ..., partition: _Optional[int] = ..., content_hash: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class SearchStats(_message.Message):
    __slots__ = ("partitions_searched", "partitions_total", "vectors_scanned", "vectors_total", "took_us")
    PARTITIONS_SEARCHED_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    VECTORS_SCANNED_FIELD_NUMBER: _ClassVar[int]
    VECTORS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TOOK_US_FIELD_NUMBER: _ClassVar[int]
    partitions_searched: int
    partitions_total: int
    vectors_scanned: int
    vectors_total: int
    took_us: int
    def __init__(self, partitions_searched: _Optional[int] = ..., partitions_total: _Optional[int] = ..., vectors_scanned: _Optional[int] = ..., vectors_total: _Optional[int] = ..., took_us: _Optional[int] = ...) -> None: ...

class IndexSearchResponse(_message.Message):
    __slots__ = ("hits", "stats", "mode", "has_more", "ranked_by", "expansion", "expansion_k")
    HITS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    RANKED_BY_FIELD_NUMBER: _ClassVar[int]
    EXPANSION_FIELD_NUMBER: _ClassVar[int]
    EXPANSION_K_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    stats: SearchStats
    mode: _common_pb2.SearchMode
    has_more: bool
    ranked_by: _common_pb2.RankedBy
    expansion: _containers.RepeatedCompositeFieldContainer[ExpansionTerm]
    expansion_k: int
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., stats: _Optional[_Union[SearchStats, _Mapping]] = ..., mode: _Optional[_Union[_common_pb2.SearchMode, str]] = ..., has_more: _Optional[bool] = ..., ranked_by: _Optional[_Union[_common_pb2.RankedBy, str]] = ..., expansion: _Optional[_Iterable[_Union[ExpansionTerm, _Mapping]]] = ..., expansion_k: _Optional[int] = ...) -> None: ...

class GetImageRequest(_message.Message):
    __slots__ = ("collection", "id", "include_feature", "include_thumbnail", "include_source")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FEATURE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    id: int
    include_feature: bool
    include_thumbnail: bool
    include_source: bool
    def __init__(self, collection: _Optional[str] = ..., id: _Optional[int] = ..., include_feature: _Optional[bool] = ..., include_thumbnail: _Optional[bool] = ..., include_source: _Optional[bool] = ...) -> None: ...

class GetImageResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: ImageRecord
    def __init__(self, image: _Optional[_Union[ImageRecord, _Mapping]] = ...) -> None: ...

class UpdateLabelRequest(_message.Message):
    __slots__ = ("collection", "id", "label")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    collection: str
    id: int
    label: str
    def __init__(self, collection: _Optional[str] = ..., id: _Optional[int] = ..., label: _Optional[str] = ...) -> None: ...

class UpdateLabelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class PartitionStats(_message.Message):
    __slots__ = ("class_index", "class_name", "count", "bytes_in_memory")
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_MEMORY_FIELD_NUMBER: _ClassVar[int]
    class_index: int
    class_name: str
    count: int
    bytes_in_memory: int
    def __init__(self, class_index: _Optional[int] = ..., class_name: _Optional[str] = ..., count: _Optional[int] = ..., bytes_in_memory: _Optional[int] = ...) -> None: ...

class LabelCount(_message.Message):
    __slots__ = ("label", "count")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    label: str
    count: int
    def __init__(self, label: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("collection", "partitions", "bytes_in_memory", "dims", "count", "labels", "refinement")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_MEMORY_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REFINEMENT_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    partitions: _containers.RepeatedCompositeFieldContainer[PartitionStats]
    bytes_in_memory: int
    dims: int
    count: int
    labels: _containers.RepeatedCompositeFieldContainer[LabelCount]
    refinement: Refinement
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ..., partitions: _Optional[_Iterable[_Union[PartitionStats, _Mapping]]] = ..., bytes_in_memory: _Optional[int] = ..., dims: _Optional[int] = ..., count: _Optional[int] = ..., labels: _Optional[_Iterable[_Union[LabelCount, _Mapping]]] = ..., refinement: _Optional[_Union[Refinement, _Mapping]] = ...) -> None: ...

class Refinement(_message.Message):
    __slots__ = ("stale", "operation_id", "bytes")
    STALE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    stale: int
    operation_id: str
    bytes: int
    def __init__(self, stale: _Optional[int] = ..., operation_id: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class RefineCollectionRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class RefineCollectionResponse(_message.Message):
    __slots__ = ("operation_id",)
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    def __init__(self, operation_id: _Optional[str] = ...) -> None: ...

class ClearRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class ClearResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: int
    def __init__(self, removed: _Optional[int] = ...) -> None: ...

class NeighboursRequest(_message.Message):
    __slots__ = ("collection_id", "k", "queries")
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    collection_id: int
    k: int
    queries: _containers.RepeatedCompositeFieldContainer[NeighbourQuery]
    def __init__(self, collection_id: _Optional[int] = ..., k: _Optional[int] = ..., queries: _Optional[_Iterable[_Union[NeighbourQuery, _Mapping]]] = ...) -> None: ...

class NeighbourQuery(_message.Message):
    __slots__ = ("vector",)
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, vector: _Optional[_Iterable[float]] = ...) -> None: ...

class Neighbour(_message.Message):
    __slots__ = ("id", "dot")
    ID_FIELD_NUMBER: _ClassVar[int]
    DOT_FIELD_NUMBER: _ClassVar[int]
    id: int
    dot: float
    def __init__(self, id: _Optional[int] = ..., dot: _Optional[float] = ...) -> None: ...

class NeighbourList(_message.Message):
    __slots__ = ("neighbours",)
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    neighbours: _containers.RepeatedCompositeFieldContainer[Neighbour]
    def __init__(self, neighbours: _Optional[_Iterable[_Union[Neighbour, _Mapping]]] = ...) -> None: ...

class NeighboursResponse(_message.Message):
    __slots__ = ("lists",)
    LISTS_FIELD_NUMBER: _ClassVar[int]
    lists: _containers.RepeatedCompositeFieldContainer[NeighbourList]
    def __init__(self, lists: _Optional[_Iterable[_Union[NeighbourList, _Mapping]]] = ...) -> None: ...

class MarkStaleRequest(_message.Message):
    __slots__ = ("collection_id", "changes")
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    collection_id: int
    changes: _containers.RepeatedCompositeFieldContainer[StaleChange]
    def __init__(self, collection_id: _Optional[int] = ..., changes: _Optional[_Iterable[_Union[StaleChange, _Mapping]]] = ...) -> None: ...

class StaleChange(_message.Message):
    __slots__ = ("id", "neighbours")
    ID_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    id: int
    neighbours: _containers.RepeatedCompositeFieldContainer[Neighbour]
    def __init__(self, id: _Optional[int] = ..., neighbours: _Optional[_Iterable[_Union[Neighbour, _Mapping]]] = ...) -> None: ...

class MarkStaleResponse(_message.Message):
    __slots__ = ("marked",)
    MARKED_FIELD_NUMBER: _ClassVar[int]
    marked: int
    def __init__(self, marked: _Optional[int] = ...) -> None: ...

class RebuildRequest(_message.Message):
    __slots__ = ("collection", "model")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    collection: str
    model: _common_pb2.ModelRef
    def __init__(self, collection: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class RebuildResponse(_message.Message):
    __slots__ = ("operation_id",)
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    def __init__(self, operation_id: _Optional[str] = ...) -> None: ...

class WatchOperationRequest(_message.Message):
    __slots__ = ("operation_id",)
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    def __init__(self, operation_id: _Optional[str] = ...) -> None: ...

class SaveIndexJobRequest(_message.Message):
    __slots__ = ("job", "lease_ms")
    JOB_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.IndexJob
    lease_ms: int
    def __init__(self, job: _Optional[_Union[_common_pb2.IndexJob, _Mapping]] = ..., lease_ms: _Optional[int] = ...) -> None: ...

class SaveIndexJobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadIndexJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class LoadIndexJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.IndexJob
    def __init__(self, job: _Optional[_Union[_common_pb2.IndexJob, _Mapping]] = ...) -> None: ...

class ListIndexJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListIndexJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.IndexJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[_common_pb2.IndexJob, _Mapping]]] = ...) -> None: ...
