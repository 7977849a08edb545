"""Integrity of what the factory wrote: checksums of per-item cache entries, checks of an artifact's
files against its lineage, and a full disk told apart from other I/O errors.

- A per-item cache directory entry records `{name: [size, sha256]}` in its `done` marker; a file entry
  carries a 48-byte trailer (`PIPESUM1`, payload size as uint64 LE, sha256 of the payload). `check_entry`
  and `check_file` say why one cannot be trusted (None when intact).
- `check_outputs` re-hashes an artifact's files against the `outputs` its lineage.json recorded
  (missing, size, hash) and lists files it does not record.
- `disk_full_cause` finds ENOSPC / EFBIG / EDQUOT in an exception (or its cause chain, or the text a
  C++/Rust writer gives: pyarrow, safetensors, torch); `DiskFull` is the one clear message the runner
  raises instead: the path, the free space, what the phase had written, the file-size limit if any.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from pipeline.core.errors import PipelineError

DONE = "done"
MAGIC = b"PIPESUM1"
TRAILER = len(MAGIC) + 8 + 32  # magic, payload size (uint64 LE), sha256 of the payload
_CHUNK = 1 << 20


# -- per-item cache entries --------------------------------------------------------------------
def _digest(path: Path, limit: int | None = None) -> tuple[int, bytes]:
    """(bytes read, sha256) of a file's first `limit` bytes (all of it without a limit)."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK if limit is None else min(_CHUNK, limit - n)):
            h.update(chunk)
            n += len(chunk)
    return n, h.digest()


def entry_listing(folder: Path) -> dict[str, list]:
    """{relative posix name: [size, sha256 hex]} of every file of a directory entry but `done`."""
    out: dict[str, list] = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file() and p.name != DONE:
            size, digest = _digest(p)
            out[p.relative_to(folder).as_posix()] = [size, digest.hex()]
    return out


def check_entry(folder: Path) -> str | None:
    """Why directory entry `folder` cannot be trusted (missing, changed, extra or unrecorded files), else None."""
    import json

    folder = Path(folder)
    try:
        recorded = json.loads((folder / DONE).read_text(encoding="utf-8") or "null")
    except (OSError, ValueError) as exc:
        return f"unreadable done marker ({type(exc).__name__})"
    if not isinstance(recorded, dict):
        return "no checksums in its done marker (written before checksums were recorded)"
    found = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file() and p.name != DONE}
    for name in sorted(set(recorded) | set(found)):
        if name not in found:
            return f"{name} is missing"
        if name not in recorded:
            return f"{name} is not part of the entry"
        try:
            size, digest = _digest(found[name])
        except OSError as exc:
            return f"{name} is unreadable ({exc.strerror or type(exc).__name__})"
        want = list(recorded[name]) if isinstance(recorded[name], list) else [None, None]
        if size != want[0]:
            return f"{name}: {size} bytes, {want[0]} recorded"
        if digest.hex() != want[1]:
            return f"{name}: sha256 differs from the recorded one"
    return None


def check_file(path: Path) -> str | None:
    """Why file entry `path` cannot be trusted (truncated, changed, written without a trailer), else None."""
    try:
        total = Path(path).stat().st_size
        if total < TRAILER:
            return f"{total} bytes: shorter than its checksum trailer"
        with open(path, "rb") as fh:
            fh.seek(total - TRAILER)
            tail = fh.read(TRAILER)
        if not tail.startswith(MAGIC):
            return "no checksum trailer (truncated, or written before checksums were recorded)"
        size = int.from_bytes(tail[len(MAGIC):len(MAGIC) + 8], "little")
        if size != total - TRAILER:
            return f"payload of {total - TRAILER} bytes, {size} recorded"
        _, digest = _digest(Path(path), size)
    except OSError as exc:
        return f"unreadable ({exc.strerror or type(exc).__name__})"
    return None if digest == tail[-32:] else "sha256 of the payload differs from the recorded one"


def read_file(path: Path) -> bytes:
    """The payload of an intact file entry (its trailer stripped); ValueError if it is not intact."""
    why = check_file(path)
    if why is not None:
        raise ValueError(f"item cache file {path}: {why}")
    return Path(path).read_bytes()[:-TRAILER]


def append_trailer(path: Path) -> None:
    """Append the checksum trailer to a freshly written file entry."""
    size, digest = _digest(Path(path))
    with open(path, "ab") as fh:
        fh.write(MAGIC + size.to_bytes(8, "little") + digest)


# -- artifacts ---------------------------------------------------------------------------------
def check_outputs(fs: Any, directory: str, outputs: list[dict[str, Any]], names: Iterable[str] | None = None,
                  extra: bool = False) -> list[dict[str, Any]]:
    """Problems of an artifact's files against its lineage `outputs` ([{path, size, sha256}]): one
    {path, problem: missing | size | hash | unexpected, detail} per bad file. `names`: check only these
    paths (default: all recorded); `extra`: also list files lineage does not record."""
    wanted = None if names is None else set(names)
    problems: list[dict[str, Any]] = []
    base = directory.rstrip("/")
    for out in outputs:
        if wanted is not None and out["path"] not in wanted:
            continue
        path = f"{base}/{out['path']}"
        try:
            size = fs.size(path)
            if size != out["size"]:
                problems.append({"path": out["path"], "problem": "size", "detail": f"{size} bytes, {out['size']} recorded"})
                continue
            h = hashlib.sha256()
            with fs.open(path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
        except FileNotFoundError:
            problems.append({"path": out["path"], "problem": "missing", "detail": "recorded in lineage.json"})
            continue
        except OSError as exc:
            problems.append({"path": out["path"], "problem": "missing", "detail": f"unreadable: {exc}"})
            continue
        if h.hexdigest() != out["sha256"]:
            problems.append({"path": out["path"], "problem": "hash", "detail": "sha256 differs from lineage.json"})
    if extra:
        recorded = {o["path"] for o in outputs} | {"lineage.json"}
        for path in sorted(fs.find(base)):
            rel = path[len(base.rstrip("/")) + 1:] if path.startswith(base) else path
            if rel not in recorded:
                problems.append({"path": rel, "problem": "unexpected", "detail": "not recorded in lineage.json"})
    return problems


# -- a full disk -------------------------------------------------------------------------------
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
_DISK_FULL_TEXT = ("no space left on device", "file too large", "disk quota exceeded",
                   "os error 28", "os error 27", "os error 122")


class DiskFull(PipelineError):
    """A write failed for lack of space (ENOSPC), the file-size limit (EFBIG) or a quota (EDQUOT)."""


def disk_full_cause(exc: BaseException) -> BaseException | None:
    """The exception in `exc`'s chain that reports a full disk, else None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DiskFull):
            return e
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return e
        if any(t in str(e).lower() for t in _DISK_FULL_TEXT):
            return e
        todo += [e.__cause__, e.__context__]
    return None


def _existing(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _fsize_limit() -> int | None:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        return None if soft == resource.RLIM_INFINITY else int(soft)
    except (ImportError, OSError, ValueError):
        return None


def disk_full_error(cause: BaseException, phase: str, where: Path, written: int | None) -> DiskFull:
    """The one message for a phase that ran out of space: which path, how much was free, what it had
    written (a lower bound of what it needs), and the file-size limit when one is set."""
    if isinstance(cause, DiskFull):
        return cause
    path = getattr(cause, "filename", None) or where
    code = getattr(cause, "errno", None)
    what = {errno.ENOSPC: "no space left on device", errno.EFBIG: "file too large (the file-size limit)",
            errno.EDQUOT: "disk quota exceeded"}.get(code, str(cause).strip().splitlines()[0][:200])
    try:
        free = shutil.disk_usage(_existing(Path(path))).free
        room = f"{free:,} bytes free there"
    except OSError:
        room = "free space unknown"
    need = f"; the phase had written {written:,} bytes when it failed, so it needs more than that" if written else ""
    limit = _fsize_limit()
    cap = f"; this process may not write files over {limit:,} bytes (ulimit -f)" if limit is not None else ""
    return DiskFull(f"phase {phase}: writing {path} failed: {what} ({room}{need}{cap}). Nothing of the phase "
                    f"was kept (no partial artifact or cache entry); free space and re-run: finished phases are "
                    f"reused.")


def staged_bytes(path: Path) -> int:
    """Bytes under `path` (0 if it is gone)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total
