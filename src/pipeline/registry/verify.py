"""`pipeline verify`: is what the work dir holds still what was written?

- every complete artifact's files are re-hashed against the `outputs` (size, sha256) its lineage.json
  recorded: missing, resized and changed files, and files lineage does not record;
- every per-item cache entry (`<workdir>/.cache/items/<phase>/`, and the local mirrors of remote caches)
  is checked against the sizes and hashes recorded when it was written (`pipeline.core.integrity`);
- optionally the MLflow registry: every registered version's model files are present and match the
  sha256 tag they were registered with, and every alias points at such a version.

With `fix`, a damaged artifact is removed whole (with its Prefect result record), so the next run
recomputes it with the same id and bytes; a damaged cache entry is removed (recomputed when next
needed). The registry is only reported, never changed. Fixing takes the gc lock and refuses while a
run is live (it could be reading what would be removed).
"""
from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from pipeline.core.gc import GC_LOCK, GcRefused, active_runs
from pipeline.core.integrity import DONE, check_entry, check_file
from pipeline.core.store import LINEAGE, ArtifactNotFound, ArtifactStore


@dataclass
class Finding:
    kind: str  # artifact | item-cache | registry
    path: str  # the damaged file (or entry, or model version)
    problem: str  # missing | size | hash | unexpected | lineage | corrupt | alias
    detail: str = ""
    target: str = ""  # what --fix removes: the artifact directory or the cache entry
    fixed: bool = False


@dataclass
class VerifyReport:
    findings: list[Finding] = field(default_factory=list)
    n_artifacts: int = 0
    n_files: int = 0
    n_bytes: int = 0
    n_entries: int = 0
    n_versions: int = 0

    @property
    def ok(self) -> bool:
        return all(f.fixed for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# -- artifacts ---------------------------------------------------------------------------------
def _artifact_dirs(store: ArtifactStore) -> Iterator[tuple[str, str]]:
    root = store.root.rstrip("/")
    if not store.fs.exists(root):
        return
    for phase_dir in sorted(store.fs.ls(root, detail=False)):
        phase = phase_dir.rstrip("/").rsplit("/", 1)[-1]
        if phase.startswith(".") or not store.fs.isdir(phase_dir):
            continue
        for adir in sorted(store.fs.ls(phase_dir, detail=False)):
            aid = adir.rstrip("/").rsplit("/", 1)[-1]
            if not aid.startswith(".") and store.fs.isdir(adir):
                yield phase, aid


def check_artifacts(store: ArtifactStore, report: VerifyReport, progress: Callable[[str], None] | None = None) -> None:
    """Re-hash every complete artifact of the store into `report` (incomplete ones are gc's business)."""
    for phase, aid in _artifact_dirs(store):
        if not store.is_complete(phase, aid):
            continue
        target = store.dir_path(phase, aid)
        try:
            outputs = store.read_lineage(phase, aid).get("outputs", [])
            problems = store.check(phase, aid, extra=True)
        except (ArtifactNotFound, ValueError, KeyError, TypeError, AttributeError) as exc:
            report.findings.append(Finding("artifact", f"{target}/{LINEAGE}", "lineage", f"unreadable: {exc}", target))
            continue
        report.n_artifacts += 1
        report.n_files += len(outputs)
        report.n_bytes += sum(int(o.get("size", 0)) for o in outputs)
        for p in problems:
            report.findings.append(Finding("artifact", f"{target}/{p['path']}", p["problem"], p["detail"], target))
        if progress:
            progress(f"{phase}/{aid[:12]}: {'ok' if not problems else f'{len(problems)} problem(s)'}")


# -- per-item caches ---------------------------------------------------------------------------
def cache_roots(workdir: Path) -> list[Path]:
    """The local per-item cache roots: <workdir>/.cache/items and each remote cache's local mirror."""
    cache = Path(workdir) / ".cache"
    roots = [cache / "items"] if (cache / "items").is_dir() else []
    mirrors = cache / "items-mirror"
    return roots + (sorted(p for p in mirrors.iterdir() if p.is_dir()) if mirrors.is_dir() else [])


def check_item_caches(roots: list[Path], report: VerifyReport) -> None:
    """Check every entry under `<root>/<phase>/<key[:2]>/`: directory entries with their `done` marker,
    file entries with their checksum trailer. Temp and half-written entries (no `done`) are skipped."""
    for root in roots:
        for phase in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for prefix in sorted(p for p in phase.iterdir() if p.is_dir() and not p.name.startswith(".")):
                for entry in sorted(prefix.iterdir()):
                    if entry.name.startswith(".") or entry.name.endswith(".tmp"):
                        continue
                    if entry.is_dir():
                        if not (entry / DONE).is_file():
                            continue  # never complete: not an entry (gc removes crash leftovers)
                        why = check_entry(entry)
                    else:
                        why = check_file(entry)
                    report.n_entries += 1
                    if why is not None:
                        report.findings.append(Finding("item-cache", str(entry), "corrupt", why, str(entry)))


# -- the registry ------------------------------------------------------------------------------
def _version_files(client, mv, dst: Path) -> Path:
    """Download the files of model version `mv` (its source, relative to its run's artifacts) into dst."""
    base = client.get_run(mv.run_id).info.artifact_uri.rstrip("/")
    source = str(mv.source).rstrip("/")
    rel = source[len(base) + 1:] if source.startswith(base + "/") else source.rsplit("/", 1)[-1]
    local = Path(client.download_artifacts(mv.run_id, rel, str(dst)))
    if not local.is_dir() or not any(local.iterdir()):
        raise FileNotFoundError(f"no files under {source}")
    return local


def check_registry(tracking_uri: str, report: VerifyReport, cache_dir: Path) -> None:
    """Every registered version's files present (and, for classifiers, matching the sha256 tag they were
    registered with); every alias on such a version."""
    from pipeline.registry.versions import SHA_TAG, model_sha256, registry_client

    client = registry_client(tracking_uri)
    for rm in client.search_registered_models():
        good: set[str] = set()
        for mv in client.search_model_versions(f"name = '{rm.name}'"):
            report.n_versions += 1
            where = f"registry {rm.name} version {mv.version}"
            dst = Path(cache_dir) / f"verify-{uuid.uuid4().hex[:8]}"
            try:
                local = _version_files(client, mv, dst)
                sha = model_sha256(local / "artifacts" / "model_dir") if mv.tags.get(SHA_TAG) else None
            except Exception as exc:  # noqa: BLE001 - any failure to fetch the files is the finding
                report.findings.append(Finding("registry", where, "missing", f"model files unavailable: {exc}"))
                continue
            finally:
                shutil.rmtree(dst, ignore_errors=True)
            if sha is not None and sha != mv.tags[SHA_TAG]:
                report.findings.append(Finding("registry", where, "hash", "model files differ from the registered sha256"))
                continue
            good.add(str(mv.version))
        for alias, version in (getattr(rm, "aliases", None) or {}).items():
            if str(version) not in good:
                report.findings.append(Finding("registry", f"registry {rm.name} @{alias}", "alias",
                                               f"points at version {version}, which has no intact model files"))


# -- fixing ------------------------------------------------------------------------------------
def _remove_artifact(store: ArtifactStore, target: str, results: Path | None) -> None:
    phase, aid = target.rstrip("/").split("/")[-2:]
    if store.is_local:
        trash = Path(target).with_name(f".trash-{aid}-{uuid.uuid4().hex[:8]}")
        os.replace(target, trash)  # atomic: never read half-deleted
        shutil.rmtree(trash, ignore_errors=True)
    else:
        if store.fs.exists(f"{target}/{LINEAGE}"):
            store.fs.rm(f"{target}/{LINEAGE}")  # incomplete first: never read as an artifact again
        store.fs.rm(target, recursive=True)
    if results is not None:
        (results / f"{phase}-{aid}").unlink(missing_ok=True)


def _remove_entry(path: str) -> None:
    p = Path(path)
    if p.is_dir():
        bad = p.with_name(f".tmp-bad-{p.name}-{os.getpid()}")
        os.replace(p, bad)
        shutil.rmtree(bad, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def fix(store: ArtifactStore, report: VerifyReport, results: Path | None) -> None:
    """Remove what `report` found damaged (artifacts whole, cache entries); registry findings stay."""
    done: set[str] = set()
    for f in report.findings:
        if f.kind == "registry" or not f.target:
            continue
        if f.target not in done:
            if f.kind == "artifact":
                _remove_artifact(store, f.target, results)
            else:
                _remove_entry(f.target)
            done.add(f.target)
        f.fixed = True


def verify(workdir: str | Path, store: ArtifactStore, results: Path | None = None, do_fix: bool = False,
           tracking_uri: str | None = None, progress: Callable[[str], None] | None = None) -> VerifyReport:
    """Check the work dir (see the module docstring); with `do_fix`, remove what is damaged."""
    import filelock

    workdir = Path(workdir)
    report = VerifyReport()
    check_artifacts(store, report, progress)
    check_item_caches(cache_roots(workdir), report)
    if tracking_uri:
        check_registry(tracking_uri, report, workdir / ".cache")
    if do_fix and any(f.kind != "registry" for f in report.findings):
        (workdir / "runs").mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(str(workdir / "runs" / GC_LOCK)):
            live = active_runs(workdir)
            if live:
                raise GcRefused(f"{len(live)} run(s) in progress ({live[0]}, ...): run verify --fix when they have finished")
            fix(store, report, results)
    return report
