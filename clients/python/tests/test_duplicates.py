"""Near-duplicates through the client: a copy that differs only in its
bytes (a JPEG comment, the same pixels) is grouped with its original,
different photos of one class are not."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from cbir_client import CbirError, Client


def with_comment(jpeg: bytes) -> bytes:
    """The same image with a COM segment after SOI: other bytes (another
    content hash), the same pixels."""
    assert jpeg[:2] == b"\xff\xd8"
    text = b"a copy"
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def test_copies_are_grouped_and_other_photos_are_not(url, keys, images: Path, tmp_path):
    src = sorted(images.rglob("*.jpg"))
    folder = tmp_path / "dupes"
    shutil.copytree(images, folder)
    original = folder / "rose" / src[4].name
    copy = folder / "rose" / "copy-of-a-rose.jpg"
    copy.write_bytes(with_comment(original.read_bytes()))
    seen = []
    with Client(url, api_key=keys["index"], collection="py-dupes") as c:
        r = c.add(folder)
        assert not r.failed and r.created == len(src) + 1
        op = c.find_duplicates(progress=lambda done, total: seen.append((done, total)))
        assert op and seen and seen[-1][0] == seen[-1][1]
        report = c.duplicates()
        assert report.state == "STATE_SUCCEEDED" and 0 < report.min_similarity < 1
        groups = [{img.id for img, _ in g} for g in report.groups]
        assert groups == [{r.ids[str(original)], r.ids[str(copy)]}], report.groups
        sims = [s for _, s in report.groups[0]]
        assert sims[0] == pytest.approx(1.0) and sims[1] > 0.99
    with Client(url, api_key=keys["search"], collection="py-dupes") as reader:
        assert len(reader.duplicates().groups) == 1
        with pytest.raises(CbirError) as e:
            reader.find_duplicates()
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
