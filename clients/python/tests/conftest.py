"""Fixtures of the client's tests. The system tests need a running system:
`services/cli/tests/it/python_client.rs` starts one, installs this package
into a fresh virtual environment and runs these tests with CBIR_TEST_*
set; run it with `cargo nextest run -p cbir-cli -E 'test(/python_client/)'`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict

import pytest

from cbir_client import Client


def _env(name: str) -> str:
    v = os.environ.get(name)
    if not v:
        pytest.fail(
            f"{name} is not set: this test needs a running system; run the client's tests "
            "through `cargo nextest run -p cbir-cli -E 'test(/python_client/)'`, which starts one"
        )
    return v


@pytest.fixture(scope="session")
def url() -> str:
    return _env("CBIR_TEST_URL")


@pytest.fixture(scope="session")
def keys() -> Dict[str, str]:
    return {
        role: _env(f"CBIR_TEST_{role.upper()}_KEY") for role in ("search", "index", "admin")
    }


@pytest.fixture(scope="session")
def images() -> Path:
    """A folder of class folders (daisy/, rose/, tulip/) of real photos."""
    p = Path(_env("CBIR_TEST_IMAGES"))
    assert p.is_dir(), p
    return p


@pytest.fixture(scope="session")
def admin(url: str, keys: Dict[str, str]):
    with Client(url, api_key=keys["admin"]) as c:
        yield c


@pytest.fixture
def folder(images: Path, tmp_path: Path) -> Path:
    """A copy of the images the test may change."""
    dest = tmp_path / "images"
    shutil.copytree(images, dest)
    return dest


@pytest.fixture(scope="session")
def indexed(admin: Client, images: Path):
    """Collection "py" holding every test image, added once; tests that
    change a collection make their own."""
    report = admin.add(images, collection="py")
    assert not report.failed, report.failed
    return report
