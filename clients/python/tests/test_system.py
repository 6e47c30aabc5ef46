"""The client against a running system (see conftest.py): add a folder,
search it, fix a label, delete images, and the errors and refused roles a
user meets, each through the real gateway, index and inference services."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from cbir_client import CbirError, Client


def rel(root: Path, p: Path) -> str:
    """The stored path of `p` added with its folder `root`."""
    return (Path(root.name) / p.relative_to(root)).as_posix()


def all_images(root: Path):
    return sorted(p for p in root.rglob("*") if p.suffix == ".jpg")


def test_generated_code_is_up_to_date():
    script = Path(__file__).resolve().parents[1] / "generate.sh"
    r = subprocess.run(
        [str(script), "--check"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_add_reports_counts_ids_and_failures(url, keys, folder: Path):
    files = all_images(folder)
    (folder / "daisy" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (folder / "daisy" / "notes.txt").write_text("not an image: skipped")
    done = []
    with Client(url, api_key=keys["index"], collection="py-add") as c:
        r = c.add(folder, batch=5, progress=lambda d, t: done.append((d, t)))
        assert r.added == len(files) and r.created == len(files), r
        assert [p for p, _ in r.failed] == [str(folder / "daisy" / "broken.jpg")], r.failed
        assert r.failed[0][1], "a failure says why"
        assert set(r.ids) == {str(p) for p in files}
        assert len(set(r.ids.values())) == len(files)
        # 13 files in calls of at most 5.
        assert done == [(5, 13), (10, 13), (13, 13)]
        img = c.get(r.ids[str(files[0])])
        assert img.path == rel(folder, files[0])
        assert img.file_name == files[0].name
        assert img.label == files[0].parent.name
        assert img.collection == "py-add"

        # The same folder again: nothing new, the same ids.
        again = c.add(folder)
        assert again.created == 0 and again.ids == r.ids

        # Without labels from folders, into another collection.
        plain = c.add(folder / "rose", collection="py-add-plain", labels_from_folders=False)
        assert plain.added == len(list((folder / "rose").glob("*.jpg")))
        got = [c.get(i, collection="py-add-plain") for i in plain.ids.values()]
        assert {i.label for i in got} == {""}
        assert {i.path.split("/")[0] for i in got} == {"rose"}
        # One file: labelled with its folder's name all the same.
        one = c.add(files[-1], collection="py-add-one")
        img = c.get(one.ids[str(files[-1])], collection="py-add-one")
        assert img.label == files[-1].parent.name
        assert img.path == f"{files[-1].parent.name}/{files[-1].name}"


def test_concurrent_adds_of_one_folder_agree(url, keys, folder: Path):
    """Writers racing on the same images get the same ids, stored once."""
    reports, errors = [], []

    def run():
        try:
            with Client(url, api_key=keys["index"]) as c:
                reports.append(c.add(folder, collection="py-race", batch=3))
        except Exception as e:  # reported below with the others
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(r.ids == reports[0].ids and not r.failed for r in reports)
    assert sum(r.created for r in reports) == len(all_images(folder))
    with Client(url, api_key=keys["search"]) as c:
        assert c.stats("py-race")["count"] == len(all_images(folder))


def test_search_finds_the_query_first(url, keys, images: Path, indexed):
    query = all_images(images)[0]
    qid = indexed.ids[str(query)]
    with Client(url, api_key=keys["search"], collection="py") as c:
        for q in (query, str(query), query.read_bytes()):
            res = c.search(q, k=5, mode="exact")
            assert len(res) == 5
            assert res[0].id == qid and res[0].path == rel(images, query)
            assert res[0].label == query.parent.name
            assert [r.rank for r in res] == [1, 2, 3, 4, 5]
            sims = [r.similarity for r in res]
            assert sims == sorted(sims, reverse=True) and sims[0] > 0.9
            assert all(r.distance >= 0 for r in res)
            assert res.mode == "exact" and res.collection == "py"
            assert res.predicted_name
        # A stored image as the query: itself first.
        res = c.search(qid, k=3)
        assert res[0].id == qid


def test_relabel_and_delete_show_in_the_next_search(url, keys, images: Path):
    with Client(url, api_key=keys["admin"], collection="py-edit") as c:
        r = c.add(images)
        files = all_images(images)
        ids = [r.ids[str(p)] for p in files]
        query = files[0]

        img = c.relabel(ids[1], "wrong flower")
        assert img.label == "wrong flower" and img.id == ids[1]
        assert c.get(ids[1]).label == "wrong flower"
        labels = {h.id: h.label for h in c.search(query, k=len(ids), mode="exact")}
        assert labels[ids[1]] == "wrong flower"

        assert c.delete(ids[1:3]) == 2
        assert c.delete([ids[1], ids[2]]) == 0, "deleted ids are skipped"
        assert c.delete(ids[3]) == 1
        found = {h.id for h in c.search(query, k=len(ids), mode="exact")}
        assert found == set(ids) - {ids[1], ids[2], ids[3]}
        with pytest.raises(CbirError) as e:
            c.get(ids[1])
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        assert str(ids[1]) in e.value.message


def test_roles_are_enforced(url, keys, images: Path, indexed):
    one = all_images(images)[0]
    with Client(url, api_key=keys["search"], collection="py") as reader:
        assert reader.search(one, k=1)
        with pytest.raises(CbirError) as e:
            reader.add(one)
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED, e.value
        with pytest.raises(CbirError) as e:
            reader.relabel(indexed.ids[str(one)], "x")
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    with Client(url, api_key=keys["index"], collection="py") as indexer:
        with pytest.raises(CbirError) as e:
            indexer.delete([indexed.ids[str(one)]])
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    with Client(url, collection="py") as anonymous:
        with pytest.raises(CbirError) as e:
            anonymous.add(one)
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    with Client(url, api_key="not-a-key", collection="py") as stranger:
        with pytest.raises(CbirError) as e:
            stranger.search(one)
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    with Client(url, api_key=keys["search"], collection="py") as reader:
        # Nothing changed.
        assert reader.get(indexed.ids[str(one)]).label == one.parent.name


def test_bad_requests_name_what_is_wrong(url, keys, indexed):
    with Client(url, api_key=keys["search"], collection="py") as c:
        with pytest.raises(CbirError) as e:
            c.search(b"definitely not an image", k=3)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT, e.value
        with pytest.raises(CbirError) as e:
            c.search(next(iter(indexed.ids.values())), k=1_000_000)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "top_k" in e.value.message
        with pytest.raises(CbirError) as e:
            c.get(987654321)
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(CbirError) as e:
            c.search(b"x", collection="no-such-collection")
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        assert "no-such-collection" in e.value.message
    with Client("http://127.0.0.1:1", timeout=5) as down:
        with pytest.raises(CbirError) as e:
            down.collections()
        assert e.value.code == grpc.StatusCode.UNAVAILABLE


def test_collections_and_stats(url, keys, indexed):
    with Client(url, api_key=keys["search"]) as c:
        by_name = {col.name: col for col in c.collections()}
        py = by_name["py"]
        assert py.count == len(indexed.ids)
        assert py.dims > 0 and py.model
        s = c.stats("py")
        assert s["count"] == len(indexed.ids) and s["dims"] == py.dims
