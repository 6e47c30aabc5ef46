"""The client over TLS (`https://` and a private CA), against a system
whose gateway serves TLS only (see conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from cbir_client import CbirError, Client


@pytest.fixture(scope="module")
def tls_url() -> str:
    v = os.environ.get("CBIR_TEST_TLS_URL")
    if not v:
        pytest.fail("CBIR_TEST_TLS_URL is not set: run through the python_client system test")
    return v


@pytest.fixture(scope="module")
def ca() -> Path:
    return Path(os.environ["CBIR_TEST_TLS_CA"])


def test_https_with_the_private_ca(tls_url: str, ca: Path, images: Path):
    assert tls_url.startswith("https://")
    one = sorted(images.rglob("*.jpg"))[0]
    for ca_cert in (ca, ca.read_bytes()):
        with Client(tls_url, ca_cert=ca_cert, collection="secure") as c:
            r = c.add(one)
            assert r.added == 1 and not r.failed
            assert c.search(one, k=1)[0].id == r.ids[str(one)]


def test_an_untrusted_or_plain_connection_is_refused(tls_url: str):
    # The system's certificate authorities do not know the private CA.
    with Client(tls_url, timeout=10) as c:
        with pytest.raises(CbirError) as e:
            c.collections()
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
    # Plain HTTP/2 to a TLS port.
    with Client(tls_url.replace("https://", "http://"), timeout=10) as c:
        with pytest.raises(CbirError) as e:
            c.collections()
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
