"""The blob store a relay's settings name: files under ``data_dir/blobs``, or S3.

Apart from both stores so that neither knows the other (the S3 one, and boto3 with it,
is imported only when configured).
"""

from __future__ import annotations

from pathlib import Path

from mailflow.blobs import Blobs, BlobStore


def open_blob_store(blob_url: str, blob_dir: Path, cache_bytes: int) -> Blobs:
    """The store ``blob_url`` names (``s3://bucket/prefix``), else files in ``blob_dir``."""
    if blob_url:
        from mailflow.s3_blobs import S3BlobStore

        return S3BlobStore(blob_url, cache_bytes=cache_bytes)
    return BlobStore(blob_dir, cache_bytes=cache_bytes)
