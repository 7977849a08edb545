"""The content-addressed artifact store.

Layout: `<root>/<phase>/<artifact_id>/` holds the artifact's files and `lineage.json`, written
last. A directory without `lineage.json` is incomplete and never reused. Artifacts are built in a
local staging directory and committed atomically (a rename on a local store; on a remote fsspec
store the files are uploaded first and `lineage.json` last).

Staging directories are named `<phase>-<host>-<pid>-<start>-<random>` after the process that
builds in them (host tag, pid and process start time, so a recycled pid is not mistaken for the
owner). Opening a staging directory first removes those of this host whose owner has died: a
killed run leaves nothing behind for long, and a live run's directory is never touched.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import socket
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import fsspec
import psutil
from pydantic import BaseModel

from pipeline.core.hashing import canonical_json, sha256_bytes, sha256_file

LINEAGE = "lineage.json"
STAGING = ".staging"


class ArtifactRef(BaseModel):
    """What tasks pass between each other: a small reference, never the data."""

    phase: str
    artifact_id: str
    uri: str  # the artifact directory (local path or fsspec URI)
    content_hash: str  # sha256 of the output file listing in lineage.json
    cache_hit: bool = False

    @property
    def short(self) -> str:
        return self.artifact_id[:12]


class ArtifactNotFound(LookupError):
    pass


GIT_COMMIT_ENV = "PIPELINE_GIT_COMMIT"


@lru_cache(maxsize=1)
def code_version() -> dict[str, str | None]:
    """The installed package version and, when it can be known, the git commit of the code.

    The commit comes from $PIPELINE_GIT_COMMIT (set it when building an image from a checkout),
    else from the install record (PEP 610 direct_url.json): the commit pip recorded for a
    `git+...` install, or `git rev-parse HEAD` of the source tree of an editable install. A wheel
    or a non-editable install from a folder records no commit: None.
    """
    try:
        version = metadata.version("vdamage-pipeline")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    commit = os.environ.get(GIT_COMMIT_ENV, "").strip() or _installed_commit()
    return {"package": version, "git_commit": commit}


def _installed_commit() -> str | None:
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    import pipeline

    package_dir = Path(pipeline.__file__).resolve().parent
    for dist in metadata.distributions(name="vdamage-pipeline"):
        try:
            info = json.loads(dist.read_text("direct_url.json") or "null")
        except ValueError:
            continue
        if not isinstance(info, dict):
            continue
        commit = (info.get("vcs_info") or {}).get("commit_id")
        if commit and Path(str(dist.locate_file("pipeline"))).resolve() == package_dir:
            return commit
        url = urlparse(info.get("url", ""))
        if (info.get("dir_info") or {}).get("editable") and url.scheme == "file":
            source = Path(url2pathname(url.path)).resolve()
            if package_dir.is_relative_to(source):
                return _git_head(source)
    return None


def _git_head(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    """Versions that matter for reproducibility; reads torch only if it is already imported."""
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("numpy", "pyarrow", "pillow", "prefect", "mlflow"):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch"] = torch.__version__
        env["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    return env


def file_listing(directory: Path) -> list[dict[str, Any]]:
    """Every file under `directory` (except lineage.json) with its sha256 and size, sorted."""
    out = []
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != LINEAGE:
            out.append(
                {"path": p.relative_to(directory).as_posix(), "sha256": sha256_file(p), "size": p.stat().st_size}
            )
    return out


@lru_cache(maxsize=1)
def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def owner_tag() -> str:
    """`<host>-<pid>-<start>` of this process: names what it owns (staging dirs, run markers)."""
    return _owner_tag(os.getpid())


@lru_cache(maxsize=4)
def _owner_tag(pid: int) -> str:  # keyed by pid, so a forked child gets its own
    return f"{_host_tag()}-{pid}-{process_start(pid)}"


def process_start(pid: int) -> int:
    """When process `pid` started, as a number that tells it from a later process with the same
    pid. On Linux: its start in clock ticks since boot (/proc/<pid>/stat), which a wall-clock step
    does not move; psutil's create_time() is boot time + ticks, and boot time is derived from the
    wall clock, so an NTP or VM clock step shifts it (by 6.7 s once on these machines) and a live
    process would look like another one. Elsewhere: create_time() in whole seconds. Raises
    psutil.NoSuchProcess for a pid that does not run (psutil.AccessDenied if it may not be read)."""
    if sys.platform.startswith("linux"):
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError) as err:
            raise psutil.NoSuchProcess(pid) from err
        except PermissionError as err:
            raise psutil.AccessDenied(pid) from err
        return int(text.rsplit(")", 1)[1].split()[19])  # field 22, starttime; comm may hold spaces
    return int(psutil.Process(pid).create_time())


def staging_owner(name: str) -> tuple[str, int, int] | None:
    """(host tag, pid, process start time) from a name `<prefix>-<owner_tag>-<suffix>`; None if it
    has none (the prefix may hold dashes, the suffix may not)."""
    parts = name.rsplit("-", 4)
    if len(parts) != 5 or len(parts[1]) != 8 or not (parts[2].isdigit() and parts[3].isdigit()):
        return None
    return parts[1], int(parts[2]), int(parts[3])


def process_alive(pid: int, start: int) -> bool:
    """Whether process `pid` runs and is the one whose `process_start` is `start` (not a recycled
    pid)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(process_start(pid) - start) <= 1
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # exists, but we may not inspect it: assume it is the owner
        return True


def tree_size(path: Path) -> int:
    """Bytes of the files under `path` (files that vanish meanwhile count as 0)."""
    total = 0
    for f in path.rglob("*"):
        try:
            total += f.stat().st_size if f.is_file() else 0
        except OSError:
            pass
    return total


def owner_dead(path: Path, min_age_s: float | None = None) -> bool:
    """Whether the process named in `path`'s name (see `staging_owner`) is gone. Paths without an
    owner in their name, or owned on another host, count only when `min_age_s` is given and they
    are older than that."""
    owner = staging_owner(path.name)
    if owner is not None and owner[0] == _host_tag():
        return not process_alive(owner[1], owner[2])
    if min_age_s is None:
        return False
    try:
        return time.time() - path.stat().st_mtime > min_age_s
    except FileNotFoundError:
        return False


class ArtifactStore:
    """Artifacts under a root that is a local path or any fsspec URI."""

    def __init__(self, root: str | Path, cache_dir: str | Path | None = None):
        self.uri = str(root)
        self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        self.is_local = self.fs.protocol in ("file", "local") or "file" in (self.fs.protocol or ())
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        self.cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "pipeline-artifacts"

    # -- addressing -----------------------------------------------------------------------
    def dir_path(self, phase: str, artifact_id: str) -> str:
        return f"{self.root.rstrip('/')}/{phase}/{artifact_id}"

    def dir_uri(self, phase: str, artifact_id: str) -> str:
        path = self.dir_path(phase, artifact_id)
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def is_complete(self, phase: str, artifact_id: str) -> bool:
        return self.fs.exists(f"{self.dir_path(phase, artifact_id)}/{LINEAGE}")

    def read_lineage(self, phase: str, artifact_id: str) -> dict[str, Any]:
        path = f"{self.dir_path(phase, artifact_id)}/{LINEAGE}"
        try:
            with self.fs.open(path, "r") as fh:
                return json.load(fh)
        except FileNotFoundError:
            raise ArtifactNotFound(f"no complete artifact {phase}/{artifact_id}") from None

    def check(self, phase: str, artifact_id: str, names: list[str] | None = None,
              extra: bool = False) -> list[dict[str, Any]]:
        """Re-hash the artifact's files (all, or only `names`) against its lineage.json: one
        {path, problem, detail} per missing, resized or changed file (and, with `extra`, per file lineage
        does not record). ArtifactNotFound if the artifact is not complete."""
        from pipeline.core.integrity import check_outputs

        outputs = self.read_lineage(phase, artifact_id).get("outputs", [])
        return check_outputs(self.fs, self.dir_path(phase, artifact_id), outputs, names, extra)

    def ref(self, phase: str, artifact_id: str, cache_hit: bool = False) -> ArtifactRef:
        lineage = self.read_lineage(phase, artifact_id)
        return ArtifactRef(
            phase=phase,
            artifact_id=artifact_id,
            uri=self.dir_uri(phase, artifact_id),
            content_hash=lineage["content_hash"],
            cache_hit=cache_hit,
        )

    def find(self, id_or_prefix: str) -> tuple[str, str]:
        """(phase, artifact_id) of a complete artifact whose id starts with `id_or_prefix`."""
        if len(id_or_prefix) < 6:
            raise ArtifactNotFound("give at least 6 characters of an artifact id")
        matches = sorted(
            {
                tuple(p.rstrip("/").split("/")[-3:-1])
                for p in self.fs.glob(f"{self.root.rstrip('/')}/*/{id_or_prefix}*/{LINEAGE}")
            }
        )
        if not matches:
            raise ArtifactNotFound(f"no artifact with id {id_or_prefix!r} under {self.uri}")
        if len(matches) > 1:
            raise ArtifactNotFound(f"id prefix {id_or_prefix!r} is ambiguous: {matches}")
        phase, aid = matches[0]
        return phase, aid

    def latest(self, phase: str) -> str:
        """Id of the most recently created complete artifact of `phase` (by its lineage's created_at)."""
        found = []
        for path in self.fs.glob(f"{self.root.rstrip('/')}/{phase}/*/{LINEAGE}"):
            aid = path.rstrip("/").split("/")[-2]
            found.append((self.read_lineage(phase, aid).get("created_at", ""), aid))
        if not found:
            raise ArtifactNotFound(f"no {phase} artifact under {self.uri}")
        return max(found)[1]

    def local_path(self, ref: ArtifactRef) -> Path:
        """A local directory with the artifact's files (downloaded once for remote stores)."""
        if self.is_local:
            path = Path(self.dir_path(ref.phase, ref.artifact_id))
            if not (path / LINEAGE).is_file():
                raise ArtifactNotFound(f"artifact {ref.phase}/{ref.artifact_id} is missing from {self.uri}")
            return path
        local = self.cache_dir / ref.phase / ref.artifact_id
        if not (local / LINEAGE).is_file():
            tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}")
            self.fs.get(self.dir_path(ref.phase, ref.artifact_id) + "/", str(tmp), recursive=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(tmp, local)
            except OSError:  # another process cached it first (the target is a non-empty directory)
                shutil.rmtree(tmp, ignore_errors=True)
                if not (local / LINEAGE).is_file():
                    raise
        return local

    def dir_for(self, phase: str, artifact_id: str) -> Path:
        """The local directory of the complete artifact `phase/artifact_id` (downloaded once from a remote
        store); ArtifactNotFound if there is none. How artifacts refer to each other: by id, never by path."""
        return self.local_path(self.ref(phase, artifact_id))

    # -- writing ---------------------------------------------------------------------------
    @property
    def staging_root(self) -> Path:
        return Path(self.root) / STAGING if self.is_local else self.cache_dir / STAGING

    def clean_staging(self, min_age_s: float | None = None) -> list[tuple[Path, int]]:
        """Remove the staging directories whose owner process is dead (see `owner_dead`);
        returns each removed directory with its size in bytes."""
        if not self.staging_root.is_dir():
            return []
        removed = []
        for path in sorted(self.staging_root.iterdir()):
            if path.is_dir() and owner_dead(path, min_age_s):
                size = tree_size(path)
                shutil.rmtree(path, ignore_errors=True)
                removed.append((path, size))
        return removed

    @contextmanager
    def staging(self, phase: str) -> Iterator[Path]:
        """A fresh local directory to build an artifact in, named after this process; removed when
        the block ends. Dead processes' leftovers are removed first."""
        base = self.staging_root
        base.mkdir(parents=True, exist_ok=True)
        self.clean_staging()
        tmp = Path(tempfile.mkdtemp(prefix=f"{phase}-{owner_tag()}-", dir=base))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def commit(self, staged: Path, record: dict[str, Any], replace: bool = False) -> ArtifactRef:
        """Write lineage.json last and move the staged directory into place atomically."""
        phase, aid = record["phase"], record["artifact_id"]
        outputs = file_listing(staged)
        record = {
            **record,
            "outputs": outputs,
            "content_hash": sha256_bytes(canonical_json(outputs).encode()),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "code_version": code_version(),
            "environment": environment(),
        }
        (staged / LINEAGE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
        final = self.dir_path(phase, aid)
        if self.is_local:
            final_p = Path(final)
            final_p.parent.mkdir(parents=True, exist_ok=True)
            if final_p.exists():
                if not replace and (final_p / LINEAGE).is_file():
                    return self.ref(phase, aid)  # a concurrent run committed it first
                trash = final_p.with_name(f".trash-{aid}-{uuid.uuid4().hex[:8]}")
                os.replace(final_p, trash)
                shutil.rmtree(trash, ignore_errors=True)
            try:
                os.replace(staged, final_p)
            except OSError:  # ENOTEMPTY/EEXIST: another run moved the same artifact in since the check
                if replace or not (final_p / LINEAGE).is_file():
                    raise
                return self.ref(phase, aid)
            staged.mkdir()  # so that staging()'s cleanup finds a directory
        else:
            if replace and self.fs.exists(final):
                self.fs.rm(final, recursive=True)
            for f in outputs:
                self.fs.put_file(str(staged / f["path"]), f"{final}/{f['path']}")
            self.fs.put_file(str(staged / LINEAGE), f"{final}/{LINEAGE}")
        return ArtifactRef(
            phase=phase,
            artifact_id=aid,
            uri=self.dir_uri(phase, aid),
            content_hash=record["content_hash"],
        )
