"""The hand-written facade over the generated gRPC stub of SearchService."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    IO,
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)
from urllib.parse import urlsplit

import grpc

from cbir_client import export_file
from cbir_client.v1 import common_pb2, index_pb2, search_pb2, search_pb2_grpc

__all__ = [
    "AddReport",
    "BatchItem",
    "CbirError",
    "Client",
    "DuplicateReport",
    "Collection",
    "Image",
    "ImportResult",
    "SearchResult",
    "SearchResults",
    "IMAGE_EXTENSIONS",
]

#: File extensions `Client.add` sends (the gateway's folder walk takes the same).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".jfif"}
)

# The gateway takes up to 64 files and 256 MiB per call by default
# (limits.max_files_per_request, limits.max_request_bytes); a batch stays
# well under both so that the defaults never refuse one.
_MAX_BATCH = 64
_BATCH_BYTES = 64 << 20
# Exports and stored originals come back in messages larger than gRPC's
# 4 MiB default; the gateway bounds what it sends by the same setting.
_MAX_MESSAGE = 256 << 20

_MODES = {
    "refined": common_pb2.SEARCH_MODE_REFINED,
    "partition": common_pb2.SEARCH_MODE_PARTITION,
    "probe": common_pb2.SEARCH_MODE_PROBE,
    "exact": common_pb2.SEARCH_MODE_EXACT,
}
_MODE_NAMES = {v: k for k, v in _MODES.items()}
_SORTS = {
    "time": index_pb2.IMAGE_SORT_TIME,
    "name": index_pb2.IMAGE_SORT_NAME,
    "label": index_pb2.IMAGE_SORT_LABEL,
}

Query = Union[str, "os.PathLike[str]", bytes, int]
T = TypeVar("T")


class CbirError(Exception):
    """A call the server refused or could not answer.

    `code` is the gRPC status code (a `grpc.StatusCode`, e.g.
    `grpc.StatusCode.NOT_FOUND`), `message` the server's explanation, which
    names the field or setting at fault and what to do.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def _error(e: grpc.RpcError) -> CbirError:
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = e.details() if hasattr(e, "details") else str(e)
    return CbirError(code or grpc.StatusCode.UNKNOWN, details or "")


@dataclass(frozen=True)
class SearchResult:
    """One neighbour of a query; `rank` is 1-based, paging offset included."""

    id: int
    file_name: str
    path: str
    label: str
    similarity: float
    distance: float
    rank: int
    created_at_ms: int = 0
    partition: int = 0
    partition_name: str = ""
    #: What ordered the results (`SearchResults.ranked_by`), higher first.
    score: float = 0.0


class SearchResults(List[SearchResult]):
    """The results of one query, best first, and what the search reports."""

    def __init__(self, results: Iterable[SearchResult], response: Any) -> None:
        super().__init__(results)
        #: More results follow: ask again with `offset=offset + k`.
        self.has_more: bool = response.has_more
        self.collection: str = response.collection
        #: "refined", "probe", "exact" or "partition": the mode the search ran in.
        self.mode: str = _MODE_NAMES.get(response.mode, "")
        #: "distance" (closest first) or "refined_score" (refined mode: the
        #: nearest image first, then by `score`); `similarity` is always
        #: the query-to-image one.
        self.ranked_by: str = (
            "refined_score"
            if response.ranked_by == common_pb2.RANKED_BY_REFINED_SCORE
            else "distance"
        )
        self.took_ms: float = response.took_ms
        #: The class the network sees in the query image ("" for a vector).
        self.predicted_name: str = response.query.predicted_name
        self.confidence: float = response.query.confidence
        #: The generated `SearchResponse`, for what the facade leaves out.
        self.raw = response


@dataclass
class BatchItem:
    """One query of `search_batch`: its results, or why it failed."""

    query: Query
    results: Optional[SearchResults]
    error: Optional[CbirError]


@dataclass(frozen=True)
class Image:
    """One stored image."""

    id: int
    file_name: str
    path: str
    label: str
    collection: str
    predicted_class: int
    predicted_name: str
    created_at_ms: int
    content_hash: str
    #: A small JPEG, when asked for (`thumbnail=True`).
    thumbnail: bytes = b""
    #: The kept original or rendition, when asked for and kept.
    source_image: bytes = b""


@dataclass(frozen=True)
class Collection:
    name: str
    count: int
    dims: int
    model: str
    description: str
    created_at_ms: int


@dataclass
class AddReport:
    """What `add` did: counts, the id of each file, and each failure."""

    #: Files stored, new or already there (see `created`).
    added: int = 0
    #: Of `added`, those that were not stored before (same content hash).
    created: int = 0
    #: (path, reason) of each file that could not be added.
    failed: List[Tuple[str, str]] = field(default_factory=list)
    #: The stored id of each added file, by its path as given.
    ids: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class DuplicateReport:
    """The near-duplicate groups of the latest run on a collection."""

    min_similarity: float
    #: The run's state ("STATE_SUCCEEDED", ...); "" when none ran.
    state: str
    #: Largest first; each member as (image, similarity to the first).
    groups: List[List[Tuple[Image, float]]]


@dataclass(frozen=True)
class ImportResult:
    collection: Collection
    imported: int


def _image(m: Any, collection: str = "") -> Image:
    return Image(
        id=m.id,
        file_name=m.file_name,
        path=m.path,
        label=m.label,
        collection=getattr(m, "collection", "") or collection,
        predicted_class=m.predicted_class,
        predicted_name=getattr(m, "predicted_name", ""),
        created_at_ms=m.created_at_ms,
        content_hash=m.content_hash,
        thumbnail=m.thumbnail,
        source_image=m.source_image,
    )


def _collection(c: Any) -> Collection:
    model = f"{c.model.name}:{c.model.version}" if c.model.name else ""
    return Collection(
        name=c.name,
        count=c.count,
        dims=c.dims,
        model=model,
        description=c.description,
        created_at_ms=c.created_at_ms,
    )


def _results(r: Any) -> SearchResults:
    return SearchResults(
        (
            SearchResult(
                id=h.id,
                file_name=h.file_name,
                path=h.path,
                label=h.label,
                similarity=h.similarity,
                distance=h.distance,
                rank=h.rank,
                created_at_ms=h.created_at_ms,
                partition=h.partition,
                partition_name=h.partition_name,
                score=h.score,
            )
            for h in r.results
        ),
        r,
    )


def _filter(
    labels: Optional[Sequence[str]],
    not_labels: Optional[Sequence[str]],
    path_prefix: Optional[str],
    created_from_ms: Optional[int],
    created_to_ms: Optional[int],
) -> Optional[index_pb2.ImageFilter]:
    # A bare string would be taken as a list of one-letter labels.
    for name, v in (("labels", labels), ("not_labels", not_labels)):
        if isinstance(v, (str, bytes)):
            raise TypeError(f"{name} is a list of labels: write [{v!r}]")
    if not (labels or not_labels or path_prefix or created_from_ms or created_to_ms):
        return None
    return index_pb2.ImageFilter(
        labels_in=list(labels or []),
        labels_not_in=list(not_labels or []),
        path_prefix=path_prefix or "",
        created_from_ms=created_from_ms or 0,
        created_to_ms=created_to_ms or 0,
    )


def _mode(mode: Union[str, int, None]) -> int:
    if mode is None:
        return common_pb2.SEARCH_MODE_UNSPECIFIED
    if isinstance(mode, str):
        try:
            return _MODES[mode.lower()]
        except KeyError:
            raise ValueError(
                f"mode {mode!r} is not one of {sorted(_MODES)} (or None for the server's default)"
            ) from None
    return int(mode)


def _image_files(root: Path) -> List[Path]:
    """Every image file under `root`, recursively, sorted; links followed,
    each real folder read once (a folder of links is a common split)."""
    out: List[Path] = []
    seen = set()
    stack = [root]
    while stack:
        d = stack.pop()
        real = os.path.realpath(d)
        if real in seen:
            continue
        seen.add(real)
        with os.scandir(d) as entries:
            for e in entries:
                p = Path(e.path)
                try:
                    is_dir = e.is_dir()
                    is_file = e.is_file()
                except OSError:
                    continue
                if is_dir:
                    stack.append(p)
                elif is_file and p.suffix.lower() in IMAGE_EXTENSIONS:
                    out.append(p)
    out.sort()
    return out


class Client:
    """A connection to a CBIR gateway's gRPC API.

    `url` is the gateway's address as the web UI is reached
    (`http://127.0.0.1:8080`, `https://cbir.example.org`); `https://` (or
    `tls=True`) uses TLS, trusting the system's certificate authorities or
    `ca_cert` (a PEM file or its bytes) for a private one. `api_key` is sent
    with every call. `collection` is the default collection of every call
    that takes one ("" or None: the gateway's default collection).
    `timeout` bounds each call in seconds (exports and imports excepted).

    Use as a context manager, or call `close()`.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        api_key: Optional[str] = None,
        tls: Optional[bool] = None,
        ca_cert: Union[str, "os.PathLike[str]", bytes, None] = None,
        collection: Optional[str] = None,
        timeout: float = 120.0,
    ) -> None:
        target, use_tls = self._target(url, tls)
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
        ]
        if use_tls:
            root = None
            if ca_cert is not None:
                root = ca_cert if isinstance(ca_cert, bytes) else Path(ca_cert).read_bytes()
            creds = grpc.ssl_channel_credentials(root_certificates=root)
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            if ca_cert is not None:
                raise ValueError("ca_cert is given but the connection is not TLS: use an https:// url")
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = search_pb2_grpc.SearchServiceStub(self._channel)
        self._metadata: Tuple[Tuple[str, str], ...] = (
            (("x-api-key", api_key),) if api_key else ()
        )
        self.collection = collection or ""
        self.timeout = timeout

    @classmethod
    def from_env(cls, **kwargs: Any) -> "Client":
        """A client for `CBIR_GATEWAY_URL` with `CBIR_API_KEY` (the CLI's
        variables); keyword arguments override them."""
        kwargs.setdefault("url", os.environ.get("CBIR_GATEWAY_URL", "http://127.0.0.1:8080"))
        kwargs.setdefault("api_key", os.environ.get("CBIR_API_KEY") or None)
        return cls(**kwargs)

    @staticmethod
    def _target(url: str, tls: Optional[bool]) -> Tuple[str, bool]:
        if "://" not in url:
            url = ("https://" if tls else "http://") + url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"url {url!r}: the scheme must be http:// or https://")
        if not parts.hostname:
            raise ValueError(f"url {url!r} names no host")
        use_tls = parts.scheme == "https" if tls is None else tls
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.hostname
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{port}", use_tls

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any, timeout: Optional[float] = None) -> T:
        try:
            return method(
                request,
                metadata=self._metadata,
                timeout=self.timeout if timeout is None else timeout,
            )
        except grpc.RpcError as e:
            raise _error(e) from None

    def _coll(self, collection: Optional[str]) -> str:
        return self.collection if collection is None else collection

    # -- search -----------------------------------------------------------

    def _search_request(
        self,
        query: Query,
        k: int,
        labels: Optional[Sequence[str]],
        not_labels: Optional[Sequence[str]],
        path_prefix: Optional[str],
        mode: Union[str, int, None],
        offset: int,
        collection: Optional[str],
        min_similarity: float,
        created_from_ms: Optional[int],
        created_to_ms: Optional[int],
    ) -> search_pb2.SearchRequest:
        if k < 1:
            raise ValueError(f"k must be at least 1 (got {k})")
        if offset < 0:
            raise ValueError(f"offset must be 0 or more (got {offset})")
        req = search_pb2.SearchRequest(
            collection=self._coll(collection),
            top_k=k,
            min_similarity=min_similarity,
            mode=_mode(mode),
            offset=offset,
        )
        f = _filter(labels, not_labels, path_prefix, created_from_ms, created_to_ms)
        if f is not None:
            req.filter.CopyFrom(f)
        if isinstance(query, bool):
            raise TypeError("query is a file path, the image's bytes or a stored image id, not a bool")
        if isinstance(query, int):
            req.stored.CopyFrom(search_pb2.StoredImageQuery(id=query))
        elif isinstance(query, (bytes, bytearray, memoryview)):
            req.image = bytes(query)
        else:
            req.image = Path(query).read_bytes()
        return req

    def search(
        self,
        query: Query,
        k: int = 10,
        labels: Optional[Sequence[str]] = None,
        not_labels: Optional[Sequence[str]] = None,
        path_prefix: Optional[str] = None,
        mode: Union[str, int, None] = None,
        offset: int = 0,
        collection: Optional[str] = None,
        min_similarity: float = 0.0,
        created_from_ms: Optional[int] = None,
        created_to_ms: Optional[int] = None,
    ) -> SearchResults:
        """The `k` stored images most similar to `query`, best first.

        `query` is an image file's path, its bytes, or the id (an int) of an
        image stored in the collection. `labels` / `not_labels` keep only
        images whose label is (not) one of them ("" is unlabelled),
        `path_prefix` those whose stored path starts with it, and
        `created_from_ms` / `created_to_ms` (Unix milliseconds) those
        created in that range; the filter applies inside the search, so k
        results come back whenever k images match. `mode` is "partition",
        "probe" or "exact" (None: the server's default). `offset` skips the
        best results already shown (paging: see `SearchResults.has_more`).
        """
        req = self._search_request(
            query,
            k,
            labels,
            not_labels,
            path_prefix,
            mode,
            offset,
            collection,
            min_similarity,
            created_from_ms,
            created_to_ms,
        )
        return _results(self._call(self._stub.Search, req))

    def search_batch(
        self,
        queries: Sequence[Query],
        k: int = 10,
        labels: Optional[Sequence[str]] = None,
        not_labels: Optional[Sequence[str]] = None,
        path_prefix: Optional[str] = None,
        mode: Union[str, int, None] = None,
        offset: int = 0,
        collection: Optional[str] = None,
        min_similarity: float = 0.0,
        created_from_ms: Optional[int] = None,
        created_to_ms: Optional[int] = None,
    ) -> List[BatchItem]:
        """Many queries in one call (the server embeds them in batches),
        with the options of `search` applied to each; one `BatchItem` per
        query, in order. A query that fails carries its error and leaves
        the others answered."""
        reqs = [
            self._search_request(
                q,
                k,
                labels,
                not_labels,
                path_prefix,
                mode,
                offset,
                collection,
                min_similarity,
                created_from_ms,
                created_to_ms,
            )
            for q in queries
        ]
        r = self._call(
            self._stub.SearchBatch,
            search_pb2.SearchBatchRequest(queries=reqs, collection=self._coll(collection)),
        )
        if len(r.items) != len(reqs):
            raise CbirError(
                grpc.StatusCode.INTERNAL,
                f"the server answered {len(r.items)} items for {len(reqs)} queries",
            )
        out = []
        for q, item in zip(queries, r.items):
            if item.HasField("error") and item.error.code != 0:
                code = _CODES.get(item.error.code, grpc.StatusCode.UNKNOWN)
                out.append(BatchItem(q, None, CbirError(code, item.error.message)))
            else:
                out.append(BatchItem(q, _results(item.response), None))
        return out

    # -- adding images ----------------------------------------------------

    def add(
        self,
        folder: Union[str, "os.PathLike[str]"],
        collection: Optional[str] = None,
        labels_from_folders: bool = True,
        batch: int = 16,
        replace: bool = False,
        progress: Optional[Callable[[int, int], None]] = None,
    ) -> AddReport:
        """Adds every image file under `folder` (recursively) to `collection`,
        creating the collection when it does not exist.

        With `labels_from_folders`, each image is labelled with its parent
        folder's name, as the CLI and the web UI do (`flowers/daisy/1.jpg`
        gets "daisy"). Its stored path starts at the folder's name, as
        with the web UI: `add("~/data/flowers")` stores
        "flowers/daisy/1.jpg". Files go in calls of at most `batch` images
        (and about 64 MiB). A file that cannot be read or used is reported
        in `failed` and the others go on; an error of the whole call (a
        refused key, an unreachable server) raises `CbirError`. An image
        stored already (same content) keeps its path and label unless
        `replace`. `progress(done, total)` is called after each batch.
        """
        if not 1 <= batch <= _MAX_BATCH:
            raise ValueError(f"batch must be 1..{_MAX_BATCH} (got {batch})")
        started = time.monotonic()
        root = Path(folder)
        if root.is_dir():
            files = _image_files(root)
        elif root.is_file():
            files, root = [root], root.parent
        else:
            raise FileNotFoundError(f"no file or folder {str(folder)!r}")
        coll = self._coll(collection)
        report = AddReport()
        if not files:
            return report
        self._call(
            self._stub.CreateCollection,
            search_pb2.CreateGatewayCollectionRequest(name=coll, if_not_exists=True),
        )
        done = 0
        for chunk in self._batches(files, batch):
            images, sent = [], []
            for p in chunk:
                try:
                    data = p.read_bytes()
                except OSError as e:
                    report.failed.append((str(p), f"cannot read: {e}"))
                    continue
                # As the web UI sends a picked folder: from its name on.
                rel = (Path(root.name) / p.relative_to(root)).as_posix()
                label = p.parent.name if labels_from_folders else ""
                images.append(
                    search_pb2.NewImage(file_name=p.name, path=rel, label=label, data=data)
                )
                sent.append(p)
            if images:
                r = self._call(
                    self._stub.AddImages,
                    search_pb2.AddImagesRequest(
                        collection=coll,
                        images=images,
                        create_collection=True,
                        replace=replace,
                    ),
                )
                for p, res in zip(sent, r.results):
                    if res.error:
                        report.failed.append((str(p), res.error))
                    else:
                        report.added += 1
                        report.created += int(res.created)
                        report.ids[str(p)] = res.id
            done += len(chunk)
            if progress is not None:
                progress(done, len(files))
        report.seconds = time.monotonic() - started
        return report

    @staticmethod
    def _batches(files: List[Path], batch: int) -> Iterator[List[Path]]:
        cur: List[Path] = []
        size = 0
        for p in files:
            try:
                n = p.stat().st_size
            except OSError:
                n = 0
            if cur and (len(cur) >= batch or size + n > _BATCH_BYTES):
                yield cur
                cur, size = [], 0
            cur.append(p)
            size += n
        if cur:
            yield cur

    # -- one image at a time ----------------------------------------------

    def get(
        self,
        id: int,
        collection: Optional[str] = None,
        thumbnail: bool = False,
        source: bool = False,
    ) -> Image:
        """One stored image's metadata; its thumbnail (a small JPEG) with
        `thumbnail`, the kept original or rendition with `source`."""
        r = self._call(
            self._stub.GetImage,
            search_pb2.GetStoredImageRequest(
                collection=self._coll(collection),
                id=id,
                include_thumbnail=thumbnail,
                include_source=source,
            ),
        )
        return _image(r)

    def delete(self, ids: Union[int, Iterable[int]], collection: Optional[str] = None) -> int:
        """Deletes images by id; the number deleted (ids the collection does
        not hold are skipped). They are gone from searches once answered."""
        id_list = [ids] if isinstance(ids, int) else list(ids)
        r = self._call(
            self._stub.DeleteImages,
            index_pb2.DeleteRequest(collection=self._coll(collection), ids=id_list),
        )
        return r.deleted

    def relabel(self, id: int, label: str, collection: Optional[str] = None) -> Image:
        """Sets an image's label ("" removes it); the image as now stored."""
        r = self._call(
            self._stub.UpdateLabel,
            index_pb2.UpdateLabelRequest(collection=self._coll(collection), id=id, label=label),
        )
        return _image(r)

    def list_images(
        self,
        collection: Optional[str] = None,
        sort: str = "time",
        descending: bool = False,
        labels: Optional[Sequence[str]] = None,
        not_labels: Optional[Sequence[str]] = None,
        path_prefix: Optional[str] = None,
        created_from_ms: Optional[int] = None,
        created_to_ms: Optional[int] = None,
        page_size: int = 200,
        thumbnails: bool = False,
    ) -> Iterator[Image]:
        """Every image of a collection (matching the filter), sorted by
        "time", "name" or "label", fetched `page_size` (1..500) at a time
        as the iterator is consumed."""
        if sort not in _SORTS:
            raise ValueError(f"sort {sort!r} is not one of {sorted(_SORTS)}")
        if not 1 <= page_size <= 500:
            raise ValueError(f"page_size must be 1..500 (got {page_size})")
        coll = self._coll(collection)
        req = index_pb2.ListImagesRequest(
            collection=coll,
            sort=_SORTS[sort],
            descending=descending,
            page_size=page_size,
            include_thumbnail=thumbnails,
        )
        f = _filter(labels, not_labels, path_prefix, created_from_ms, created_to_ms)
        if f is not None:
            req.filter.CopyFrom(f)
        while True:
            page = self._call(self._stub.ListImages, req)
            for m in page.images:
                yield _image(m, coll)
            if not page.next_cursor:
                return
            req.cursor = page.next_cursor

    # -- near-duplicates --------------------------------------------------

    def find_duplicates(
        self,
        collection: Optional[str] = None,
        min_similarity: float = 0.0,
        wait: bool = True,
        progress: Optional[Callable[[int, int], None]] = None,
    ) -> str:
        """Starts grouping the collection's near-duplicates (index role):
        images whose similarity is at least `min_similarity` (0: the
        server's documented default). With `wait`, follows the operation
        until it ends, calling `progress(done, total)`, and raises
        `CbirError` when it failed. The operation's id; `duplicates()`
        lists the groups."""
        r = self._call(
            self._stub.FindDuplicates,
            index_pb2.FindDuplicatesRequest(
                collection=self._coll(collection), min_similarity=min_similarity
            ),
        )
        if wait:
            self._follow(r.operation_id, progress)
        return r.operation_id

    def _follow(self, operation_id: str, progress: Optional[Callable[[int, int], None]]) -> None:
        states = common_pb2.OperationProgress
        try:
            stream = self._stub.WatchOperation(
                index_pb2.WatchOperationRequest(operation_id=operation_id),
                metadata=self._metadata,
            )
            for p in stream:
                if progress is not None:
                    progress(p.done, p.total)
                if p.state == states.STATE_SUCCEEDED:
                    return
                if p.state in (states.STATE_FAILED, states.STATE_CANCELLED):
                    raise CbirError(
                        grpc.StatusCode.ABORTED if p.state == states.STATE_CANCELLED
                        else grpc.StatusCode.INTERNAL,
                        p.message or f"operation {operation_id} ended without success",
                    )
        except grpc.RpcError as e:
            raise _error(e) from None
        raise CbirError(
            grpc.StatusCode.UNAVAILABLE,
            f"the progress of operation {operation_id} stopped before it ended: watch it again",
        )

    def duplicates(self, collection: Optional[str] = None) -> DuplicateReport:
        """The groups of the latest `find_duplicates` run, largest first;
        each member with its similarity to the group's first image."""
        r = self._call(
            self._stub.ListDuplicates,
            index_pb2.ListDuplicatesRequest(collection=self._coll(collection)),
        )
        coll = self._coll(collection)
        return DuplicateReport(
            min_similarity=r.min_similarity,
            state=common_pb2.OperationProgress.State.Name(r.operation.state)
            if r.HasField("operation")
            else "",
            groups=[
                [(_image(m.image, coll), m.similarity) for m in g.members] for g in r.groups
            ],
        )

    # -- collections ------------------------------------------------------

    def collections(self) -> List[Collection]:
        r = self._call(self._stub.ListCollections, index_pb2.ListCollectionsRequest())
        return [_collection(c) for c in r.collections]

    def create_collection(
        self, name: str, description: str = "", if_not_exists: bool = True
    ) -> Collection:
        """Creates a collection bound to the model the server serves."""
        r = self._call(
            self._stub.CreateCollection,
            search_pb2.CreateGatewayCollectionRequest(
                name=name, description=description, if_not_exists=if_not_exists
            ),
        )
        return _collection(r.collection)

    def delete_collection(self, name: str) -> None:
        self._call(self._stub.DeleteCollection, index_pb2.DeleteCollectionRequest(name=name))

    def stats(self, collection: Optional[str] = None) -> Dict[str, Any]:
        """The image count and the images per label ("" = unlabelled)."""
        r = self._call(
            self._stub.GetStats, index_pb2.StatsRequest(collection=self._coll(collection))
        )
        return {
            "count": r.count,
            "dims": r.dims,
            "labels": {lc.label: lc.count for lc in r.labels},
        }

    # -- backup and restore -----------------------------------------------

    def export(
        self,
        collection: Optional[str],
        file: Union[str, "os.PathLike[str]", IO[bytes]],
        progress: Optional[Callable[[int, int], None]] = None,
    ) -> int:
        """Writes the whole collection (metadata, features, thumbnails, kept
        originals, its model) to `file`, a path or a binary file object, in
        the export file format the CLI and REST use; the number of images.
        A path is written to a temporary name first and renamed at the end,
        so a failed export leaves no partial file there.
        `progress(done, total)` is called after each chunk."""
        req = index_pb2.ExportCollectionRequest(collection=self._coll(collection))
        try:
            stream = self._stub.ExportCollection(req, metadata=self._metadata)
            if hasattr(file, "write"):
                return export_file.write(stream, file, progress)  # type: ignore[arg-type]
            return _write_then_rename(
                Path(file), lambda f: export_file.write(stream, f, progress)
            )
        except grpc.RpcError as e:
            raise _error(e) from None

    def backup_database(
        self,
        file: Union[str, "os.PathLike[str]", IO[bytes]],
        progress: Optional[Callable[[int, int], None]] = None,
    ) -> int:
        """A consistent copy of the server's embedded SQLite database (every
        collection), taken while it serves, written to `file` (a path,
        written under a temporary name first, or a binary file object);
        the number of bytes. A server on MySQL/MariaDB refuses it
        (FAILED_PRECONDITION): back that database up with its own tools."""
        req = index_pb2.BackupDatabaseRequest()

        def copy(f: IO[bytes]) -> int:
            n = 0
            for chunk in self._stub.BackupDatabase(req, metadata=self._metadata):
                f.write(chunk.data)
                n += len(chunk.data)
                if progress is not None:
                    progress(n, chunk.total_bytes)
            return n

        try:
            if hasattr(file, "write"):
                return copy(file)  # type: ignore[arg-type]
            return _write_then_rename(Path(file), copy)
        except grpc.RpcError as e:
            raise _error(e) from None

    def import_(
        self,
        file: Union[str, "os.PathLike[str]", IO[bytes]],
        name: Optional[str] = None,
    ) -> ImportResult:
        """Restores an export file (a path or a binary file object) as a new
        collection `name` (the exported collection's name when None). The
        server refuses a name that exists, and an export whose model it does
        not serve."""
        if hasattr(file, "read"):
            return self._import(file, name)  # type: ignore[arg-type]
        with open(file, "rb") as f:
            return self._import(f, name)

    def _import(self, f: IO[bytes], name: Optional[str]) -> ImportResult:
        chunks = export_file.read(f, target_name=name or "")
        try:
            r = self._stub.ImportCollection(chunks, metadata=self._metadata)
        except grpc.RpcError as e:
            # A malformed file stops the request stream; its own error is
            # the clearer one.
            if chunks.error is not None:
                raise chunks.error from None
            raise _error(e) from None
        return ImportResult(collection=_collection(r.collection), imported=r.imported)


def _write_then_rename(dest: Path, write: Callable[[IO[bytes]], int]) -> int:
    """`write` into DEST.part, renamed to `dest` once complete, so that a
    failed download leaves no partial file under the name asked for."""
    tmp = dest.with_name(dest.name + ".part")
    try:
        with open(tmp, "wb") as f:
            n = write(f)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


# google.rpc.Code numbers of a batch item's error.
_CODES = {c.value[0]: c for c in grpc.StatusCode}
