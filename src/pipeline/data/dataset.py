"""Raw dataset snapshots: a dataset's id is the hash of its file list (paths, sizes, sha256).

Hashing every file on every run is what makes "one changed image changes every downstream id"
true. A stat cache (path, size, mtime_ns -> sha256, JSON in the work dir) keeps nightly re-runs
over unchanged files from re-reading them.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.hashing import canonical_json, sha256_bytes, sha256_file

FILES_SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("sha256", pa.string())])


class HashCache:
    """(absolute path, size, mtime_ns) -> sha256, persisted as JSON (never pickle)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list[Any]] = {}
        if path and path.is_file():
            try:
                self.entries = json.loads(path.read_text())
            except (OSError, ValueError):
                self.entries = {}
        self.hits = 0

    def sha256(self, file: Path) -> str:
        st = file.stat()
        key = str(file.resolve())
        entry = self.entries.get(key)
        if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            self.hits += 1
            return entry[2]
        digest = sha256_file(file)
        self.entries[key] = [st.st_size, st.st_mtime_ns, digest]
        return digest

    def save(self) -> None:
        """Write the cache atomically through a temporary file of this call's own: runs sharing a work dir
        save at once (a shared temporary name let one run move another's file away mid-save)."""
        if self.path:
            import tempfile

            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(json.dumps(self.entries))
                os.replace(name, self.path)
            except BaseException:
                Path(name).unlink(missing_ok=True)
                raise


def list_files(root: Path) -> list[Path]:
    """Files under root, sorted, hidden files and folders skipped; symlinked folders are listed as
    entries, never followed."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        out += [Path(dirpath) / d for d in dirnames if not d.startswith(".") and os.path.islink(os.path.join(dirpath, d))]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not os.path.islink(os.path.join(dirpath, d)))
        for name in sorted(filenames):
            if not name.startswith("."):
                out.append(Path(dirpath) / name)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def snapshot(root: Path, cache: HashCache | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """[{path, size, sha256}] for every file under root (a symlink inside the root is hashed by its
    target; one that leads outside the root, a FIFO or a folder link is listed, never opened)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    cache = cache or HashCache(None)
    files = list_files(root)
    if progress:
        from tqdm import tqdm

        files = tqdm(files, desc="hash dataset", unit="file", leave=False)
    rows = []
    root_real = os.path.realpath(root)
    for f in files:
        rel = f.relative_to(root).as_posix()
        rel = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")  # non-UTF-8 names
        if f.is_symlink() and os.path.commonpath([root_real, os.path.realpath(f)]) != root_real:
            rows.append({"path": rel, "size": -1, "sha256": "symlink outside the root"})  # never opened
            continue
        try:
            if not stat.S_ISREG(f.stat().st_mode):  # a FIFO would block, a folder link is not followed
                rows.append({"path": rel, "size": -1, "sha256": "not a regular file"})
                continue
            rows.append({"path": rel, "size": f.stat().st_size, "sha256": cache.sha256(f)})
        except OSError:  # dangling symlink or unreadable: still listed, the audit quarantines it
            rows.append({"path": rel, "size": -1, "sha256": "unreadable"})
    cache.save()
    return rows


def snapshot_id(rows: list[dict[str, Any]]) -> str:
    return sha256_bytes(canonical_json(rows).encode())


def write_snapshot(rows: list[dict[str, Any]], out_dir: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=FILES_SCHEMA), out_dir / "files.parquet")
