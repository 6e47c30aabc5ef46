"""What the facade checks before any call: the address, the arguments, and
how `add` groups files into bounded calls."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbir_client import Client
from cbir_client.client import _BATCH_BYTES, _image_files


@pytest.mark.parametrize(
    "url, tls, target, secure",
    [
        ("http://127.0.0.1:8080", None, "127.0.0.1:8080", False),
        ("https://cbir.example.org", None, "cbir.example.org:443", True),
        ("http://cbir.example.org", None, "cbir.example.org:80", False),
        ("localhost:9000", None, "localhost:9000", False),
        ("localhost:9000", True, "localhost:9000", True),
        ("https://[::1]:8443", None, "[::1]:8443", True),
    ],
)
def test_addresses(url, tls, target, secure):
    assert Client._target(url, tls) == (target, secure)


@pytest.mark.parametrize("url", ["ftp://host:21", "http://:80"])
def test_bad_addresses_are_refused(url):
    with pytest.raises(ValueError, match="url"):
        Client(url)


def test_a_ca_without_tls_is_refused():
    with pytest.raises(ValueError, match="https"):
        Client("http://127.0.0.1:1", ca_cert=b"pem")


def test_bad_arguments_fail_before_any_call():
    # Port 1 answers nothing: each refusal must come from the client itself.
    c = Client("http://127.0.0.1:1", timeout=0.5)
    with pytest.raises(ValueError, match="k must"):
        c.search(b"x", k=0)
    with pytest.raises(ValueError, match="offset"):
        c.search(b"x", offset=-1)
    with pytest.raises(ValueError, match="mode 'fast'"):
        c.search(b"x", mode="fast")
    with pytest.raises(TypeError, match=r"\['rose'\]"):
        c.search(b"x", labels="rose")
    with pytest.raises(TypeError, match="bool"):
        c.search(True)
    with pytest.raises(ValueError, match="sort"):
        next(c.list_images(sort="size"))
    with pytest.raises(ValueError, match="page_size"):
        next(c.list_images(page_size=501))
    with pytest.raises(ValueError, match="batch"):
        c.add(".", batch=0)
    with pytest.raises(FileNotFoundError):
        c.add("/no/such/folder")
    c.close()


def test_walk_finds_images_recursively_once(tmp_path: Path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x.JPG").write_bytes(b"x")
    (tmp_path / "a" / "b" / "y.png").write_bytes(b"y")
    (tmp_path / "a" / "notes.txt").write_bytes(b"n")
    (tmp_path / "loop").symlink_to(tmp_path / "a")
    names = [p.relative_to(tmp_path).as_posix() for p in _image_files(tmp_path)]
    # The linked folder is the same real folder: read once, under one name.
    assert len(names) == 2, names
    assert {n.rsplit("/", 1)[-1] for n in names} == {"x.JPG", "y.png"}


def test_batches_are_bounded_by_count_and_bytes(tmp_path: Path):
    small = []
    for i in range(5):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(b"x")
        small.append(p)
    assert [len(b) for b in Client._batches(small, 2)] == [2, 2, 1]
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(_BATCH_BYTES - 1)
    # Exactly the budget fits; one byte more starts the next call.
    assert [len(b) for b in Client._batches([small[0], big, small[1]], 16)] == [2, 1]
    # A file over the budget alone still goes, in a call of its own.
    with open(big, "wb") as f:
        f.truncate(_BATCH_BYTES + 1)
    assert [len(b) for b in Client._batches([small[0], big, small[1]], 16)] == [1, 1, 1]
