"""The export file format, the same for the CLI, REST and this client: the
8 bytes `CBIREXP1`, then `ExportChunk` messages, each prefixed by its length
as a protobuf varint (what prost's `encode_length_delimited` writes); the
first chunk is the header."""

from __future__ import annotations

from typing import IO, Callable, Iterable, Iterator, Optional

from cbir_client.v1 import index_pb2

MAGIC = b"CBIREXP1"
# A chunk holds at most one gRPC message, which the gateway bounds at
# 256 MiB by default; a larger length is a damaged file, not a reason to
# allocate that much.
MAX_CHUNK = 256 << 20


class ExportFileError(ValueError):
    """The file is not an export file, or is damaged."""


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def write(
    chunks: Iterable[index_pb2.ExportChunk],
    f: IO[bytes],
    progress: Optional[Callable[[int, int], None]] = None,
) -> int:
    """Writes `chunks` (header first) to `f`; the number of image records."""
    f.write(MAGIC)
    total = done = 0
    first = True
    for c in chunks:
        which = c.WhichOneof("chunk")
        if first and which != "header":
            raise ExportFileError(f"the export stream starts with {which!r}, not its header")
        first = False
        if which == "header":
            total = c.header.count
        elif which == "images":
            done += len(c.images.records)
        data = c.SerializeToString()
        f.write(varint(len(data)))
        f.write(data)
        if progress is not None:
            progress(done, total)
    if first:
        raise ExportFileError("the export stream was empty: no header came")
    return done


def _read_varint(f: IO[bytes]) -> Optional[int]:
    """The next varint, or None at a clean end of file."""
    n = shift = 0
    for i in range(10):
        b = f.read(1)
        if not b:
            if i == 0:
                return None
            raise ExportFileError("the file ends inside a chunk's length: it is truncated")
        n |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return n
        shift += 7
    raise ExportFileError("a chunk length is longer than 10 bytes: the file is damaged")


class ChunkReader:
    """The chunks of an export file, read as they are sent. A damaged file
    raises `ExportFileError` (kept in `error`): raising, not stopping, makes
    gRPC cancel the import instead of committing a truncated one."""

    def __init__(self, f: IO[bytes], target_name: str = "") -> None:
        self._f = f
        self._target = target_name
        self._first = True
        self.error: Optional[ExportFileError] = None

    def __iter__(self) -> Iterator[index_pb2.ExportChunk]:
        return self

    def __next__(self) -> index_pb2.ExportChunk:
        try:
            return self._next()
        except ExportFileError as e:
            self.error = e
            raise

    def _next(self) -> index_pb2.ExportChunk:
        if self._first:
            magic = self._f.read(len(MAGIC))
            if magic != MAGIC:
                raise ExportFileError(
                    f"not an export file: it starts with {magic[:8]!r}, not {MAGIC!r}"
                )
        n = _read_varint(self._f)
        if n is None:
            if self._first:
                raise ExportFileError("the export file has no header chunk")
            raise StopIteration
        if n > MAX_CHUNK:
            raise ExportFileError(f"a chunk claims {n} bytes (at most {MAX_CHUNK}): the file is damaged")
        data = self._f.read(n)
        if len(data) != n:
            raise ExportFileError(
                f"the file ends inside a chunk ({len(data)} of {n} bytes): it is truncated"
            )
        c = index_pb2.ExportChunk()
        try:
            c.ParseFromString(data)
        except Exception as e:  # protobuf's DecodeError, by implementation
            raise ExportFileError(f"a chunk does not parse: {e}") from None
        if self._first:
            if c.WhichOneof("chunk") != "header":
                raise ExportFileError("the export file does not start with its header chunk")
            if self._target:
                c.target_name = self._target
            self._first = False
        return c


def read(f: IO[bytes], target_name: str = "") -> ChunkReader:
    """The chunks of the export file `f`; `target_name` (when given) goes
    into the header, naming the collection to create."""
    return ChunkReader(f, target_name)
