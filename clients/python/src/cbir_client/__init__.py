"""A Python client of the CBIR image search system (its gRPC API).

    from cbir_client import Client
    with Client("http://127.0.0.1:8080", api_key="...") as c:
        c.add("photos/", collection="mine")
        for r in c.search("query.jpg", k=10, collection="mine"):
            print(r.rank, r.similarity, r.path, r.label)

The generated messages and stub are in `cbir_client.v1` for what the
facade leaves out.
"""

from cbir_client.client import (
    IMAGE_EXTENSIONS,
    AddReport,
    BatchItem,
    CbirError,
    Client,
    Collection,
    DuplicateReport,
    Image,
    ImportResult,
    SearchResult,
    SearchResults,
)
from cbir_client.export_file import ExportFileError

__all__ = [
    "AddReport",
    "BatchItem",
    "CbirError",
    "Client",
    "Collection",
    "DuplicateReport",
    "ExportFileError",
    "Image",
    "ImportResult",
    "SearchResult",
    "SearchResults",
    "IMAGE_EXTENSIONS",
]
__version__ = "0.1.0"
