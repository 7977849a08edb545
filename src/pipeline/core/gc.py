"""Garbage collection of a work dir: artifacts no run references, and what crashed runs left.

Kept: every artifact a run record (`<workdir>/runs/*.json`, its `phases` map) names, and,
through their lineage, every artifact they were built from. Garbage:

- `artifact`: a complete artifact outside that set, created more than `min_age_s` ago (a live run
  that is not guarded may have committed it and not yet recorded it), with its Prefect result
  record `<results>/<phase>-<id>` (its cache policy would drop it anyway);
- `incomplete`: a directory without lineage.json in a local store (commits are atomic renames, so
  only a crash leaves one);
- `trash`: a `.trash-*` directory a crashed commit left in a local store;
- `staging`: a staging directory whose owner process is dead (or, without a known owner, older
  than `min_age_s`);
- `item-cache-tmp`: a per-item cache write a crash left: anything in a cache's `.tmp/` whose writer
  (named in it) is dead, and the older layout's `.tmp-<key>-<pid>` folders and `*.tmp` files. Finished
  cache entries are kept: which ones future runs want cannot be known from the run records;
- `run-record-tmp`: a run record's temp file (`runs/.<id>.json.tmp`) older than `min_age_s`.

Runs hold `run_guard(workdir)` while they execute; `collect` deletes nothing while one is live,
and a run that starts during a collection waits for it (one file lock, `runs/.gc.lock`). A run
record that cannot be read stops gc: its artifacts could not be told from garbage.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from pipeline.core.errors import PipelineError
from pipeline.core.store import LINEAGE, ArtifactNotFound, ArtifactStore, owner_dead, owner_tag, staging_owner, tree_size

ACTIVE_DIR = ".active"
GC_LOCK = ".gc.lock"
DEFAULT_MIN_AGE_S = 15 * 60


class GcRefused(PipelineError):
    """gc cannot tell garbage from live data (unreadable run record, a live run)."""


@dataclass
class Garbage:
    kind: str  # artifact, incomplete, trash, staging, item-cache-tmp
    path: str
    bytes: int
    phase: str | None = None
    artifact_id: str | None = None
    extra: list[str] = field(default_factory=list)  # removed with it (the Prefect result record)


@dataclass
class GcPlan:
    garbage: list[Garbage]
    kept: list[tuple[str, str]]  # (phase, artifact_id) referenced directly or through lineage
    missing: list[tuple[str, str]]  # referenced but absent from the store
    young: list[tuple[str, str]]  # unreferenced but younger than min_age_s: kept this time
    n_runs: int
    active_runs: list[str]  # run markers of live runs

    @property
    def bytes(self) -> int:
        return sum(g.bytes for g in self.garbage)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes": self.bytes}


# -- runs --------------------------------------------------------------------------------------
def run_references(runs_dir: Path) -> tuple[set[tuple[str, str]], int]:
    """(phase, artifact_id) of every phase of every run record, and the number of records.
    Raises GcRefused on a record it cannot read."""
    refs: set[tuple[str, str]] = set()
    records = sorted(runs_dir.glob("*.json")) if runs_dir.is_dir() else []
    for path in records:
        try:
            phases = json.loads(path.read_text(encoding="utf-8")).get("phases", {})
            for name, entry in phases.items():
                refs.add((entry.get("phase") or name, entry["artifact_id"]))
        except (OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
            raise GcRefused(f"run record {path} is unreadable ({exc}); fix or remove it before gc") from None
    return refs, len(records)


def _reachable(store: ArtifactStore, roots: set[tuple[str, str]]) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """The roots and every artifact in their lineage; and the referenced ones the store lacks."""
    seen: set[tuple[str, str]] = set()
    missing: set[tuple[str, str]] = set()
    todo = list(roots)
    while todo:
        key = todo.pop()
        if key in seen or key in missing:
            continue
        try:
            rec = store.read_lineage(*key)
        except ArtifactNotFound:
            missing.add(key)
            continue
        seen.add(key)
        todo.extend((i["phase"], i["artifact_id"]) for i in rec.get("inputs", []))
    return seen, missing


@contextmanager
def run_guard(workdir: str | Path) -> Iterator[Path]:
    """Mark a run as live for the duration of the block (waits while a gc is collecting)."""
    import filelock

    runs = Path(workdir) / "runs"
    (runs / ACTIVE_DIR).mkdir(parents=True, exist_ok=True)
    marker = runs / ACTIVE_DIR / f"run-{owner_tag()}-{uuid.uuid4().hex[:8]}"
    with filelock.FileLock(str(runs / GC_LOCK)):
        marker.touch()
    try:
        yield marker
    finally:
        marker.unlink(missing_ok=True)


def active_runs(workdir: Path) -> list[str]:
    """Markers of live runs; markers of dead processes on this host are removed."""
    active = []
    folder = workdir / "runs" / ACTIVE_DIR
    for marker in sorted(folder.iterdir()) if folder.is_dir() else []:
        if staging_owner(marker.name) is None:
            continue
        if owner_dead(marker):
            marker.unlink(missing_ok=True)
        else:
            active.append(str(marker))
    return active


# -- the plan ----------------------------------------------------------------------------------
def _created_age_s(rec: dict[str, Any]) -> float:
    try:
        return time.time() - datetime.fromisoformat(rec["created_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return float("inf")  # no date: old code wrote it; never a live run's


def _size(store: ArtifactStore, path: str) -> int:
    if store.is_local:
        return tree_size(Path(path))
    try:
        return int(store.fs.du(path))
    except (OSError, ValueError):
        return 0


def _store_garbage(store: ArtifactStore, keep: set, results: Path | None, min_age_s: float,
                   young: list) -> list[Garbage]:
    out: list[Garbage] = []
    root = store.root.rstrip("/")
    for phase_dir in sorted(store.fs.ls(root, detail=False)) if store.fs.exists(root) else []:
        phase = phase_dir.rstrip("/").rsplit("/", 1)[-1]
        if phase.startswith(".") or not store.fs.isdir(phase_dir):
            continue
        for adir in sorted(store.fs.ls(phase_dir, detail=False)):
            aid = adir.rstrip("/").rsplit("/", 1)[-1]
            if aid.startswith(".trash-") and store.is_local:
                out.append(Garbage("trash", adir, _size(store, adir), phase))
            elif aid.startswith(".") or (phase, aid) in keep or not store.fs.isdir(adir):
                continue
            elif not store.is_complete(phase, aid):
                if store.is_local:  # remote: may be an upload in progress
                    out.append(Garbage("incomplete", adir, _size(store, adir), phase, aid))
            elif _created_age_s(store.read_lineage(phase, aid)) < min_age_s:
                young.append((phase, aid))
            else:
                record = results / f"{phase}-{aid}" if results is not None else None
                extra = [str(record)] if record is not None and record.is_file() else []
                out.append(Garbage("artifact", adir, _size(store, adir), phase, aid, extra))
    return out


def _item_cache_garbage(items: Path, min_age_s: float) -> list[Garbage]:
    out: list[Garbage] = []
    if not items.is_dir():
        return out
    for tmp_dir in sorted(items.glob("*/.tmp")):
        for path in sorted(tmp_dir.iterdir()):
            if owner_dead(path, min_age_s):
                out.append(Garbage("item-cache-tmp", str(path), tree_size(path) if path.is_dir() else path.stat().st_size))
    now = time.time()
    for path in sorted(items.rglob("*.tmp")):
        if path.is_file() and path.parent.name != ".tmp" and now - path.stat().st_mtime > min_age_s:
            out.append(Garbage("item-cache-tmp", str(path), path.stat().st_size))
    for path in sorted(items.rglob(".tmp-*")):
        pid = path.name.rsplit("-", 1)[-1]
        if path.is_dir() and pid.isdigit() and not _pid_exists(int(pid)):
            out.append(Garbage("item-cache-tmp", str(path), tree_size(path)))
    return out


def _pid_exists(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid)


def plan(workdir: str | Path, store: ArtifactStore, results: Path | None = None,
         min_age_s: float = DEFAULT_MIN_AGE_S) -> GcPlan:
    """What `collect` would delete; deletes nothing (it does forget markers of dead runs).

    The live runs are read first, then the run records: a run that finishes meanwhile (it writes its record,
    then drops its marker) is then seen as live, never as a run whose artifacts no record names yet."""
    workdir = Path(workdir)
    live = active_runs(workdir)
    roots, n_runs = run_references(workdir / "runs")
    keep, missing = _reachable(store, roots)
    young: list[tuple[str, str]] = []
    garbage = _store_garbage(store, keep, results, min_age_s, young)
    root = store.staging_root
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.is_dir() and owner_dead(path, min_age_s):
            garbage.append(Garbage("staging", str(path), tree_size(path)))
    # a remote per-item cache (store.items: s3://...) is never collected: gc deletes nothing remote
    garbage += _item_cache_garbage(workdir / ".cache" / "items", min_age_s)
    now = time.time()
    for path in sorted((workdir / "runs").glob(".*.json.tmp")) if (workdir / "runs").is_dir() else []:
        if now - path.stat().st_mtime > min_age_s:
            garbage.append(Garbage("run-record-tmp", str(path), path.stat().st_size))
    return GcPlan(garbage, sorted(keep), sorted(missing), sorted(young), n_runs, live)


def collect(workdir: str | Path, store: ArtifactStore, results: Path | None = None,
            min_age_s: float = DEFAULT_MIN_AGE_S) -> GcPlan:
    """Plan again under the gc lock and delete the garbage; refuses while a run is live."""
    import filelock

    workdir = Path(workdir)
    (workdir / "runs").mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(workdir / "runs" / GC_LOCK)):
        found = plan(workdir, store, results, min_age_s)
        if found.active_runs:
            raise GcRefused(f"{len(found.active_runs)} run(s) in progress ({found.active_runs[0]}, ...): "
                            "run gc when they have finished")
        for g in found.garbage:
            _remove(store, g)
    return found


def _remove(store: ArtifactStore, g: Garbage) -> None:
    if g.kind == "artifact" and not store.is_local:
        store.fs.rm(f"{g.path}/{LINEAGE}")  # incomplete first: never read as an artifact again
        store.fs.rm(g.path, recursive=True)
    elif g.kind == "artifact":
        trash = Path(g.path).with_name(f".trash-{g.artifact_id}-{uuid.uuid4().hex[:8]}")
        os.replace(g.path, trash)  # atomic: no reader sees a half-deleted artifact
        shutil.rmtree(trash, ignore_errors=True)
    elif Path(g.path).is_dir():
        shutil.rmtree(g.path, ignore_errors=True)
    else:
        Path(g.path).unlink(missing_ok=True)
    for path in g.extra:
        Path(path).unlink(missing_ok=True)
