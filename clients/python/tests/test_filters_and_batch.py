"""Filtered and paged searches and batch searches through the client,
checked against what an exact search says."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cbir_client import CbirError, Client


def all_images(root: Path):
    return sorted(p for p in root.rglob("*") if p.suffix == ".jpg")


def test_filtered_search_is_exact_search_then_filter(url, keys, images: Path, indexed):
    files = all_images(images)
    query = files[0]
    n = len(files)
    with Client(url, api_key=keys["search"], collection="py") as c:
        everything = c.search(query, k=n, mode="exact")
        assert len(everything) == n and not everything.has_more

        def best(keep, k):
            return [r.id for r in everything if keep(r)][:k]

        cases = [
            (dict(labels=["rose"]), lambda r: r.label == "rose"),
            (dict(labels=["rose", "tulip"]), lambda r: r.label in ("rose", "tulip")),
            (dict(not_labels=["daisy"]), lambda r: r.label != "daisy"),
            (dict(path_prefix=f"{images.name}/tulip/"), lambda r: "/tulip/" in r.path),
            (
                dict(labels=["daisy"], not_labels=["rose"], path_prefix=f"{images.name}/daisy/"),
                lambda r: r.label == "daisy",
            ),
        ]
        for opts, keep in cases:
            for mode in ("exact", "probe"):
                got = c.search(query, k=3, mode=mode, **opts)
                assert [r.id for r in got] == best(keep, 3), (opts, mode)
            # The default, refined: the nearest admitted image first, then
            # admitted images by refined score.
            got = c.search(query, k=3, **opts)
            assert got.mode == "refined" and got.ranked_by == "refined_score"
            assert len(got) == min(3, len(best(keep, n))), opts
            assert got[0].id == best(keep, 1)[0], opts
            assert all(keep(r) for r in got), opts
            assert [r.score for r in got[1:]] == sorted((r.score for r in got[1:]), reverse=True)
        # Every image was created before now and after the epoch.
        newest = max(r.created_at_ms for r in everything)
        assert newest > 0
        assert len(c.search(query, k=5, created_from_ms=1, created_to_ms=newest + 1)) == 5
        assert len(c.search(query, k=5, created_from_ms=newest + 1)) == 0
        # Fewer match than asked: all of them, and no more.
        roses = c.search(query, k=10, labels=["rose"])
        assert len(roses) == 4 and not roses.has_more


def test_paging_goes_on_where_the_last_page_ended(url, keys, images: Path, indexed):
    query = all_images(images)[0]
    n = len(indexed.ids)
    with Client(url, api_key=keys["search"], collection="py") as c:
        everything = c.search(query, k=n, mode="exact")
        seen, offset = [], 0
        while True:
            page = c.search(query, k=5, offset=offset, mode="exact")
            assert [r.rank for r in page] == list(range(offset + 1, offset + 1 + len(page)))
            seen.extend(r.id for r in page)
            if not page.has_more:
                break
            offset += 5
        assert seen == [r.id for r in everything]
        page = c.search(query, k=2, offset=2, labels=["tulip"], mode="exact")
        assert [r.id for r in page] == [r.id for r in everything if r.label == "tulip"][2:4]


def test_batch_search_answers_each_query(url, keys, images: Path, indexed):
    files = all_images(images)
    with Client(url, api_key=keys["search"], collection="py") as c:
        qid = indexed.ids[str(files[5])]
        items = c.search_batch([files[0], files[3].read_bytes(), qid, b"junk"], k=3)
        assert len(items) == 4
        assert items[0].results[0].id == indexed.ids[str(files[0])]
        assert items[1].results[0].id == indexed.ids[str(files[3])]
        assert items[2].results[0].id == qid
        for item in items[:3]:
            assert item.error is None and len(item.results) == 3
        assert items[3].results is None
        assert items[3].error.code == grpc.StatusCode.INVALID_ARGUMENT, items[3].error
        # The options apply to every query.
        for item in c.search_batch([files[0], files[6]], k=2, labels=["tulip"]):
            assert [r.label for r in item.results] == ["tulip", "tulip"]
        # The same answers as one search each.
        one = c.search(files[0], k=3)
        assert [r.id for r in items[0].results] == [r.id for r in one]
