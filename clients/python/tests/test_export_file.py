"""The export file format without a server: what `export` writes is what
`import_` reads, framed as prost's `encode_length_delimited`, and a
damaged file is refused before the server sees a truncated stream."""

from __future__ import annotations

import io

import pytest
from google.protobuf.internal import encoder

from cbir_client import ExportFileError
from cbir_client import export_file
from cbir_client.v1 import index_pb2


def chunks(n_batches: int = 3, per_batch: int = 2):
    header = index_pb2.ExportChunk(
        header=index_pb2.ExportHeader(
            version=1,
            collection=index_pb2.Collection(name="c", dims=4),
            count=n_batches * per_batch,
        )
    )
    out = [header]
    for b in range(n_batches):
        recs = [
            index_pb2.ImageRecord(
                id=b * per_batch + i + 1,
                file_name=f"{b}-{i}.jpg",
                feature=[0.5] * 4,
                thumbnail=bytes(range(256)) * (b + 1),
            )
            for i in range(per_batch)
        ]
        out.append(index_pb2.ExportChunk(images=index_pb2.ImageBatch(records=recs)))
    return out


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 2**31, 2**63 - 1])
def test_varint_is_protobufs(n):
    assert export_file.varint(n) == encoder._VarintBytes(n)


def test_round_trip_and_progress():
    f = io.BytesIO()
    seen = []
    n = export_file.write(chunks(), f, lambda done, total: seen.append((done, total)))
    assert n == 6
    assert seen == [(0, 6), (2, 6), (4, 6), (6, 6)]
    data = f.getvalue()
    assert data.startswith(b"CBIREXP1")
    # The first chunk's length prefix, then the header itself.
    first = chunks()[0].SerializeToString()
    assert data[8 : 8 + len(export_file.varint(len(first))) + len(first)] == (
        export_file.varint(len(first)) + first
    )
    back = list(export_file.read(io.BytesIO(data), target_name="restored"))
    want = chunks()
    want[0].target_name = "restored"
    assert back == want


def test_without_a_target_name_the_header_is_unchanged():
    f = io.BytesIO()
    export_file.write(chunks(), f)
    back = list(export_file.read(io.BytesIO(f.getvalue())))
    assert back[0].target_name == ""
    assert back == chunks()


def test_a_stream_without_header_is_not_written():
    with pytest.raises(ExportFileError, match="header"):
        export_file.write(chunks()[1:], io.BytesIO())
    with pytest.raises(ExportFileError, match="empty"):
        export_file.write([], io.BytesIO())


def full() -> bytes:
    f = io.BytesIO()
    export_file.write(chunks(), f)
    return f.getvalue()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "not an export file"),
        (b"PK\x03\x04zipzipzip", "not an export file"),
        (b"CBIREXP1", "no header"),
        (full()[:-5], "truncated"),
        (b"CBIREXP1\x85", "truncated"),
        (b"CBIREXP1" + b"\xff" * 11, "longer than 10 bytes"),
        (b"CBIREXP1" + export_file.varint(1 << 40), "damaged"),
        (b"CBIREXP1\x03\xff\xff\xff", "does not parse"),
        (
            b"CBIREXP1" + export_file.varint(len(chunks()[1].SerializeToString()))
            + chunks()[1].SerializeToString(),
            "does not start with its header",
        ),
    ],
)
def test_damaged_files_raise_and_keep_the_error(data, message):
    reader = export_file.read(io.BytesIO(data))
    with pytest.raises(ExportFileError, match=message):
        list(reader)
    assert reader.error is not None and message in str(reader.error)
