"""The per-item cache of the per-item phases (crops, embeddings): a local directory or an fsspec URI.

Items are content-addressed (a key says everything that decides them), so an entry never changes
once written. Two kinds of entry, both under `<root>/<key[:2]>/`:

- a directory entry `<key>/` (crops): its files, then a `done` marker written last; a directory
  without `done` is absent. `done` holds each file's size and sha256 (JSON `{name: [size, sha256]}`);
- a file entry `<key><suffix>` (embeddings: `.npy`): one file, written whole: the payload followed by
  a 48-byte trailer (`PIPESUM1`, the payload's size as 8 bytes little-endian, its sha256). Readers of
  the path that parse a self-delimiting format (`np.load`) ignore the trailer; `read_file` strips it.

Reading an entry checks it: `entry()` and `file()` re-hash what they return against the sizes and
hashes recorded at write time, and a corrupt, truncated or unverifiable entry (one written before
checksums) is a miss: it is discarded with a warning and the phase recomputes it, never served as
data (`n_discarded` counts them). `check_entry` / `check_file` are what `pipeline verify` uses.

On a local path the entries live in place: a directory entry is built in `.tmp/<key>-<owner>-d` and
renamed, a file in `.tmp/<key>-<owner>-*.tmp` that replaces it (`<owner>`: host, pid and start time of
the writing process); opening a cache removes what dead writers left in `.tmp/` (so a killed run leaves
no half-written entry behind for long), and `pipeline.core.gc` collects the same after a
crash); readers hard-link from it. On a remote URI (`store.items: s3://bucket/items`, shared by
shard workers on several machines) the remote is authoritative: an entry exists when the remote
holds it (a directory entry: when its `done` is there, uploaded after every other file; a file entry:
one object, one PUT), and a local mirror directory holds the entries this process downloaded or
wrote, in the local layout, so the phases read and hard-link local files as before. What the remote
holds is listed once per cache object (never one request per item), entries found are downloaded in
batches, and new entries are uploaded in batches, always before the cache is closed (`flush`, or the
end of a `with` block): a shard's entries are on the remote when the shard returns.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

import fsspec

from pipeline.core.integrity import DONE, append_trailer, check_entry, check_file, entry_listing, read_file  # noqa: F401
from pipeline.core.store import owner_dead, owner_tag

TMP = ".tmp"


BATCH = 256  # entries per download or upload batch (each batch runs concurrently in s3fs)
log = logging.getLogger(__name__)


def is_remote(uri: str | Path) -> bool:
    """Whether `uri` names a non-local fsspec file system (s3://, gs://, memory://, ...)."""
    text = str(uri)
    return "://" in text and not text.startswith("file://")


def mirror_dir(cache_root: Path, uri: str) -> Path:
    """The local mirror of the remote item cache `uri`: `<cache_root>/items-mirror/<sha256(uri)[:16]>`
    (one per remote, so two remotes never share a mirror)."""
    return Path(cache_root) / "items-mirror" / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]


def runtime_mirror(runtime: dict[str, Any]) -> Path | None:
    """The mirror of the runtime's remote item cache: `item_mirror`, else the work dir's
    (`<workdir>/.cache/items-mirror/...`); None when neither is given."""
    if runtime.get("item_mirror"):
        return Path(runtime["item_mirror"])
    if runtime.get("workdir") and runtime.get("item_cache"):
        return mirror_dir(Path(runtime["workdir"]) / ".cache", str(runtime["item_cache"]))
    return None


def scratch_root(runtime: dict[str, Any]) -> Path:
    """The local directory a shard works in (`<it>/.scratch`): the cache itself when it is local (hard
    links from the scratch into the cache work), else the mirror of the remote cache."""
    uri = str(runtime["item_cache"])
    if not is_remote(uri):
        return Path(uri.removeprefix("file://"))
    mirror = runtime_mirror(runtime)
    if mirror is None:
        raise ValueError(f"the remote item cache {uri} needs a local mirror directory (runtime item_mirror)")
    return mirror


class ItemCache:
    """One per-item cache root (`<item_cache>/<phase>`), local or remote (see the module docstring).

    `scan`: on a remote, list what it holds on the first question (once). A shard passes False: its
    items are the misses its plan listed, so it asks the remote nothing and writes them all."""

    def __init__(self, root: str | Path, mirror: str | Path | None = None, scan: bool = True) -> None:
        self.uri = str(root)
        self.is_local = not is_remote(self.uri)
        if self.is_local:  # the path as given: the same entries, the same names as ever
            self.fs, self.root = None, self.uri.removeprefix("file://")
            self.local = Path(self.root)
        elif mirror is None:
            raise ValueError(f"the remote item cache {self.uri} needs a local mirror directory")
        else:
            self.fs, root_path = fsspec.core.url_to_fs(self.uri)
            self.root, self.local = root_path.rstrip("/"), Path(mirror)
        # what the remote holds: {folder relative to the root: the names in it} ("ab/<key>": a directory
        # entry's files, "ab": the file entries of that prefix), listed once
        self._remote: dict[str, set[str]] | None = None if scan else {}
        self._files: list[tuple[str, str]] = []  # pending uploads: (local path, remote path)
        self._markers: list[tuple[str, str]] = []  # pending `done` markers: uploaded after every file
        self.n_discarded = 0  # entries found corrupt on reading (recomputed by the caller)
        self.sweep()

    @classmethod
    def from_runtime(cls, runtime: dict[str, Any], name: str, scan: bool = True) -> ItemCache | None:
        """The cache of phase `name` under `runtime["item_cache"]` (mirror: `runtime_mirror(runtime)/name`);
        None without a per-item cache."""
        uri = runtime.get("item_cache")
        if not uri:
            return None
        uri = str(uri).rstrip("/")
        mirror = runtime_mirror(runtime)
        mirror = mirror / name if mirror is not None else None
        return cls(f"{uri}/{name}" if is_remote(uri) else Path(uri.removeprefix("file://")) / name, mirror, scan)

    # -- temp files ------------------------------------------------------------------------
    @property
    def tmp_dir(self) -> Path:
        """Where entries are written before their atomic rename: `<local>/.tmp` (same file system)."""
        return self.local / TMP

    def _tmp(self, key: str, kind: str) -> Path:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return self.tmp_dir / f"{key}-{owner_tag()}-{kind}"

    def sweep(self) -> int:
        """Remove what writers that died (this host) left in `.tmp/`; returns how many."""
        removed = 0
        for path in sorted(self.tmp_dir.iterdir()) if self.tmp_dir.is_dir() else []:
            if owner_dead(path):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                removed += 1
        return removed

    # -- addressing ------------------------------------------------------------------------
    def entry_path(self, key: str) -> Path:
        """The local directory of entry `key` (in the cache, or in the mirror of a remote)."""
        return self.local / key[:2] / key

    def file_path(self, key: str, suffix: str) -> Path:
        """The local file of entry `key` (in the cache, or in the mirror of a remote)."""
        return self.local / key[:2] / f"{key}{suffix}"

    def _rel(self, key: str, name: str = "", suffix: str = "") -> str:
        return f"{key[:2]}/{key}/{name}" if name else f"{key[:2]}/{key}{suffix}"

    def _remote_names(self) -> dict[str, set[str]]:
        if self._remote is None:  # one listing of the whole prefix, whatever the number of items
            self.fs.invalidate_cache(self.root)
            try:
                found = self.fs.find(self.root)
            except FileNotFoundError:
                found = []
            self._remote = {}
            self._note(p for p in found if p.startswith(self.root + "/"))
        return self._remote

    def _note(self, paths: Iterable[str]) -> None:
        """Record remote objects (full paths under the root) in the listing."""
        for path in paths:
            folder, _, name = path[len(self.root) + 1:].rpartition("/")
            self._remote.setdefault(folder, set()).add(name)

    # -- presence (no download) --------------------------------------------------------------
    def has_entry(self, key: str) -> bool:
        """Whether directory entry `key` is complete (its `done` marker written)."""
        if self.is_local:
            return (self.entry_path(key) / DONE).is_file()
        return DONE in self._remote_names().get(f"{key[:2]}/{key}", ())

    def has_file(self, key: str, suffix: str) -> bool:
        """Whether file entry `key` is there."""
        if self.is_local:
            return self.file_path(key, suffix).is_file()
        return f"{key}{suffix}" in self._remote_names().get(key[:2], ())

    # -- reading -----------------------------------------------------------------------------
    def entry(self, key: str) -> Path | None:
        """The local directory of complete, intact entry `key` (downloaded first from a remote), else None.
        A corrupt entry is discarded with a warning: a miss, so the caller recomputes it."""
        if not self.has_entry(key):
            return None
        path = self.entry_path(key)
        if not self.is_local and not (path / DONE).is_file():
            self.prefetch_entries([key])
        why = check_entry(path)
        if why is None:
            return path
        self._discard(key, path, why, f"{key[:2]}/{key}")
        return None

    def file(self, key: str, suffix: str) -> Path | None:
        """The local path of intact file entry `key` (downloaded first from a remote), else None. A
        corrupt one is discarded with a warning: a miss, so the caller recomputes it."""
        if not self.has_file(key, suffix):
            return None
        path = self.file_path(key, suffix)
        if not self.is_local and not path.is_file():
            self.prefetch_files([key], suffix)
        why = check_file(path)
        if why is None:
            return path
        self._discard(key, path, why, key[:2], f"{key}{suffix}")
        return None

    def _discard(self, key: str, path: Path, why: str, folder: str, name: str | None = None) -> None:
        """Remove a corrupt entry (locally; a remote one is overwritten when the caller stores it again)."""
        self.n_discarded += 1
        log.warning("item cache %s: entry %s is corrupt (%s); discarded, it will be recomputed", self.uri, key, why)
        if path.is_dir():
            bad = self._tmp(f"bad{key}", "d")
            with contextlib.suppress(OSError):
                os.replace(path, bad)  # out of sight at once, then removed
                shutil.rmtree(bad, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if self._remote is not None:
            names = self._remote.get(folder, set())
            if name is None:
                self._remote.pop(folder, None)
            else:
                names.discard(name)

    def prefetch_entries(self, keys: Iterable[str]) -> int:
        """Download the remote's complete entries among `keys` that the mirror lacks, in concurrent
        batches; returns how many. A mirror entry appears whole (a renamed temp dir) or not at all."""
        if self.is_local:
            return 0
        remote = self._remote_names()
        todo = sorted({k for k in keys if self.has_entry(k) and not (self.entry_path(k) / DONE).is_file()})
        for batch in _batches(todo, BATCH):
            tmps = {k: self._tmp(k, "d") for k in batch}
            pairs = [(f"{self.root}/{self._rel(k, n)}", str(tmps[k] / n)) for k in batch
                     for n in sorted(remote[f"{k[:2]}/{k}"])]
            for tmp in tmps.values():
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            try:
                self.fs.get([r for r, _ in pairs], [lp for _, lp in pairs])
                for k, tmp in tmps.items():
                    _rename_dir(tmp, self.entry_path(k))
            finally:
                for tmp in tmps.values():
                    shutil.rmtree(tmp, ignore_errors=True)
        return len(todo)

    def prefetch_files(self, keys: Iterable[str], suffix: str) -> int:
        """Download the remote's file entries among `keys` that the mirror lacks, in concurrent batches;
        returns how many. Each lands in a temp file that replaces the mirror's path when complete."""
        if self.is_local:
            return 0
        todo = sorted({k for k in keys if self.has_file(k, suffix) and not self.file_path(k, suffix).is_file()})
        for batch in _batches(todo, BATCH):
            tmps = {k: self._tmp(k, "f.tmp") for k in batch}
            try:
                self.fs.get([f"{self.root}/{self._rel(k, suffix=suffix)}" for k in batch], [str(tmps[k]) for k in batch])
                for k, tmp in tmps.items():
                    self.file_path(k, suffix).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp, self.file_path(k, suffix))
            finally:
                for tmp in tmps.values():
                    tmp.unlink(missing_ok=True)
        return len(todo)

    # -- writing -----------------------------------------------------------------------------
    def write_entry(self, key: str, fill: Callable[[Path], None]) -> Path:
        """Store directory entry `key`: `fill(tmp)` writes its files into a temp dir, the `done` marker
        follows, then an atomic rename (a concurrent writer's entry wins). On a remote the entry is then
        queued for upload: its files first, `done` after them."""
        entry = self.entry_path(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp(key, "d")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            fill(tmp)
            (tmp / DONE).write_text(json.dumps(entry_listing(tmp), sort_keys=True), encoding="utf-8")
        except BaseException:  # a full disk, an error in fill: no half entry stays behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            tmp.rename(entry)
        except OSError:  # another run stored it first
            shutil.rmtree(tmp, ignore_errors=True)
        if not self.is_local:
            names = sorted(p.name for p in entry.iterdir() if p.name != DONE)
            self._files += [(str(entry / n), f"{self.root}/{self._rel(key, n)}") for n in names]
            self._markers.append((str(entry / DONE), f"{self.root}/{self._rel(key, DONE)}"))
            self._maybe_flush()
        return entry

    def save_file(self, key: str, suffix: str, write: Callable[[BinaryIO], None]) -> Path:
        """Store file entry `key`: `write(fh)` fills a temp file, its checksum trailer is appended, and it
        replaces the entry's path atomically. On a remote the finished file is queued for upload (one
        object, one PUT)."""
        path = self.file_path(key, suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix=f"{key}-{owner_tag()}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
            append_trailer(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if not self.is_local:
            self._files.append((str(path), f"{self.root}/{self._rel(key, suffix=suffix)}"))
            self._maybe_flush()
        return path

    def _maybe_flush(self) -> None:
        if len(self._files) >= BATCH * 4 or len(self._markers) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Upload what was written since the last flush: every file, then the `done` markers (concurrent
        PUTs in batches), so no reader on another machine sees an entry before all its files."""
        files, markers, self._files, self._markers = self._files, self._markers, [], []
        for pairs in (files, markers):
            for batch in _batches(pairs, BATCH * 4):
                self.fs.put([lp for lp, _ in batch], [r for _, r in batch])
            if self._remote is not None:
                self._note(r for _, r in pairs)

    def __enter__(self) -> ItemCache:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.flush()
        else:  # the finished entries are shared even when the run fails (a retry finds them)
            with contextlib.suppress(Exception):
                self.flush()


def as_item_cache(cache: ItemCache | str | Path | None) -> ItemCache | None:
    """`cache` as an ItemCache (a local path becomes a local one); None stays None."""
    if cache is None or isinstance(cache, ItemCache):
        return cache
    return ItemCache(cache)


def _rename_dir(tmp: Path, entry: Path) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(entry)
    except OSError:  # already there: another reader downloaded it first
        pass


def _batches(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
