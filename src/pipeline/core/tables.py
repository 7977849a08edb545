"""Parquet conventions shared by every phase: the writer options, one writer and the file names.

Artifacts must be byte-identical for identical inputs, so every phase writes its tables with the
same options through `write_table`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "use_dictionary": True, "write_statistics": True}

# File names of the tables the phases write (artifact-relative).
MANIFEST = "manifest.parquet"  # audit: accepted images
QUARANTINE = "quarantine.parquet"  # audit: rejected files and dropped shapes
SPLIT = "split.parquet"  # split: manifest rows + split column
CROPS = "crops.parquet"  # crops: one row per crop
SKIPPED = "skipped.parquet"  # crops: photos that gave no crop
CONTEXTS = "contexts.parquet"  # contexts: text per crop
EMBEDDINGS = "embeddings.parquet"  # embeddings: row index per crop
METADATA = "metadata.parquet"  # index: crop metadata in index order


def write_table(table: pa.Table, path: Path | str) -> Path:
    """Write `table` to `path` with PARQUET_OPTIONS (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **PARQUET_OPTIONS)
    return path
