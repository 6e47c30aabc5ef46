"""Browsing a collection page by page through the client."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cbir_client import CbirError, Client


def all_images(root: Path):
    return sorted(p for p in root.rglob("*") if p.suffix == ".jpg")


def test_list_images_pages_through_everything(url, keys, images: Path, indexed):
    files = all_images(images)
    with Client(url, api_key=keys["search"], collection="py") as c:
        listed = list(c.list_images(page_size=5))
        assert sorted(i.id for i in listed) == sorted(indexed.ids.values())
        assert len({i.id for i in listed}) == len(files)
        times = [(i.created_at_ms, i.id) for i in listed]
        assert times == sorted(times)

        by_name = list(c.list_images(sort="name", page_size=3))
        names = [(i.file_name, i.id) for i in by_name]
        assert names == sorted(names)
        assert [i.id for i in c.list_images(sort="name", descending=True)] == [
            i.id for i in reversed(by_name)
        ]
        daisies = list(c.list_images(labels=["daisy"], page_size=2))
        assert {i.label for i in daisies} == {"daisy"} and len(daisies) == 4
        assert {i.path for i in c.list_images(path_prefix=f"{images.name}/rose/")} == {
            f"{images.name}/rose/{p.name}" for p in files if p.parent.name == "rose"
        }
        with_thumbs = list(c.list_images(page_size=2, thumbnails=True))
        assert all(i.thumbnail[:2] == b"\xff\xd8" for i in with_thumbs)
        assert c.stats()["labels"] == {"daisy": 4, "rose": 4, "tulip": 4}
        with pytest.raises(CbirError) as e:
            next(c.list_images(collection="no-such-collection"))
        assert e.value.code == grpc.StatusCode.NOT_FOUND
