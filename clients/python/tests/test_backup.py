"""Export a collection to a file and import it back under another name:
the same images and the same search answers; damaged files, taken names
and missing roles are refused."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import grpc
import pytest

from cbir_client import CbirError, Client, ExportFileError


def test_export_then_import_gives_the_same_answers(url, keys, images: Path, indexed, tmp_path):
    files = sorted(images.rglob("*.jpg"))
    out = tmp_path / "py.cbir"
    seen = []
    with Client(url, api_key=keys["admin"]) as c:
        n = c.export("py", out, progress=lambda done, total: seen.append((done, total)))
        assert n == len(files)
        assert seen[-1] == (n, n)
        assert out.read_bytes()[:8] == b"CBIREXP1"
        assert not (tmp_path / "py.cbir.part").exists()

        r = c.import_(out, "py-restored")
        assert r.imported == n and r.collection.name == "py-restored"
        assert r.collection.count == n
        for q in files[:3]:
            a = c.search(q, k=5, mode="exact", collection="py")
            b = c.search(q, k=5, mode="exact", collection="py-restored")
            assert [(x.path, x.label) for x in a] == [(x.path, x.label) for x in b]
            # The restored collection answers a query's own copy with a
            # distance of 0 where the original says 2^-11 (float rounding
            # of stored against re-embedded features): within 1e-3.
            assert [x.similarity for x in a] == pytest.approx([x.similarity for x in b], abs=1e-3)

        # A file object works as well as a path, into the exported name's
        # place when none is given (taken here: refused).
        buf = io.BytesIO()
        assert c.export("py", buf) == n
        buf.seek(0)
        with pytest.raises(CbirError) as e:
            c.import_(buf)
        assert e.value.code == grpc.StatusCode.ALREADY_EXISTS, e.value
        with pytest.raises(CbirError) as e:
            c.import_(out, "py-restored")
        assert e.value.code == grpc.StatusCode.ALREADY_EXISTS

        # A truncated file is refused by the client and nothing is created.
        broken = tmp_path / "broken.cbir"
        broken.write_bytes(out.read_bytes()[:-100])
        with pytest.raises(ExportFileError, match="truncated"):
            c.import_(broken, "py-broken")
        assert "py-broken" not in {col.name for col in c.collections()}

        with pytest.raises(CbirError) as e:
            c.export("no-such-collection", tmp_path / "none.cbir")
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        assert not (tmp_path / "none.cbir").exists()

    with Client(url, api_key=keys["index"]) as indexer:
        with pytest.raises(CbirError) as e:
            indexer.export("py", tmp_path / "x.cbir")
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(CbirError) as e:
            indexer.import_(out, "py-by-indexer")
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_database_backup_is_a_sqlite_file(url, keys, indexed, tmp_path):
    out = tmp_path / "cbir.db"
    seen = []
    with Client(url, api_key=keys["admin"]) as c:
        n = c.backup_database(out, progress=lambda done, total: seen.append((done, total)))
    data = out.read_bytes()
    assert n == len(data) and seen[-1] == (n, n)
    assert data.startswith(b"SQLite format 3\x00")
    # The copy holds the collections: open it as a database.
    import sqlite3

    with sqlite3.connect(out) as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
    assert tables, "the copy has tables"
    with Client(url, api_key=keys["index"]) as indexer:
        with pytest.raises(CbirError) as e:
            indexer.backup_database(tmp_path / "x.db")
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert not (tmp_path / "x.db").exists()


def test_the_cli_reads_what_the_client_writes_and_back(url, keys, images: Path, indexed, tmp_path):
    """One file format for the CLI, REST and this client."""
    cli = os.environ.get("CBIR_TEST_CLI")
    if not cli:
        pytest.fail("CBIR_TEST_CLI (the cbir binary) is not set: run through the python_client system test")
    env = {**os.environ, "CBIR_GATEWAY_URL": url, "CBIR_API_KEY": keys["admin"]}

    def cbir(*args: str) -> None:
        r = subprocess.run([cli, *args], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr

    with Client(url, api_key=keys["admin"]) as c:
        n = c.export("py", tmp_path / "from-python.cbir")
        cbir("collection", "import", str(tmp_path / "from-python.cbir"), "--name", "py-cli-import")
        cbir("collection", "export", "py", str(tmp_path / "from-cli.cbir"))
        r = c.import_(tmp_path / "from-cli.cbir", "py-from-cli")
        assert r.imported == n
        counts = {col.name: col.count for col in c.collections()}
        assert counts["py-cli-import"] == n and counts["py-from-cli"] == n
        q = sorted(images.rglob("*.jpg"))[0]
        a = c.search(q, k=n, mode="exact", collection="py-cli-import")
        b = c.search(q, k=n, mode="exact", collection="py-from-cli")
        assert [(x.path, x.label) for x in a] == [(x.path, x.label) for x in b]
        assert len(a) == n
