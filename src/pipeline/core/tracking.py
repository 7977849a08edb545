"""The narrow tracking interface: the only place the library touches MLflow.

`Tracker` has three implementations: `MlflowTracker` (MLflow through an explicit `MlflowClient`,
so it never depends on MLflow's per-thread active run), `RecordingTracker` (keeps calls in memory,
for tests) and `NullTracker`. Parent and child run ids are always passed explicitly.

Concurrency: on an embedded SQLite store every database call of every tracker goes through one
lock per database, a thread lock inside the process and a file lock (`<db>.lock`) across
processes, so two runs started at once on a new work dir never race MLflow's schema creation
(alembic migrations) or each other's writes. A remote tracking server needs no lock.
"""
from __future__ import annotations

import os
import threading
import time
import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

MAX_PARAM_LEN = 500
LOCK_TIMEOUT_S = 600.0  # a write holds the lock for milliseconds; a dead holder's lock is freed by the OS


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class Tracker(Protocol):
    def start_flow_run(self, flow_run_id: str, name: str, params: dict[str, Any]) -> str | None: ...

    def end_flow_run(self, run_id: str | None, status: str = "FINISHED") -> None: ...

    def log_phase(
        self,
        parent_run_id: str | None,
        phase: str,
        artifact_id: str,
        cache_hit: bool,
        params: dict[str, Any],
        metrics: dict[str, float],
        artifact_dir: Path | None = None,
        artifact_files: list[str] | None = None,
        dataset: dict[str, Any] | None = None,
    ) -> str | None: ...

    def run_url(self, run_id: str | None) -> str | None: ...


class NullTracker:
    def start_flow_run(self, flow_run_id, name, params):
        return None

    def end_flow_run(self, run_id, status="FINISHED"):
        return None

    def log_phase(self, parent_run_id, phase, artifact_id, cache_hit, params, metrics, **kw):
        return None

    def run_url(self, run_id):
        return None


@dataclass
class RecordingTracker:
    """Remembers every call; tests assert on `phases`."""

    flows: list[dict[str, Any]] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)

    def start_flow_run(self, flow_run_id, name, params):
        self.flows.append({"flow_run_id": flow_run_id, "name": name, "params": params})
        return f"parent-{len(self.flows)}"

    def end_flow_run(self, run_id, status="FINISHED"):
        self.flows.append({"end": run_id, "status": status})

    def log_phase(self, parent_run_id, phase, artifact_id, cache_hit, params, metrics, **kw):
        self.phases.append(
            {"parent": parent_run_id, "phase": phase, "artifact_id": artifact_id, "cache_hit": cache_hit,
             "params": params, "metrics": metrics, **kw}
        )
        return f"child-{len(self.phases)}"

    def run_url(self, run_id):
        return None


def default_tracking_uri(workdir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for other URIs and in-memory SQLite."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


class _DbLock:
    """Serialises database calls: a thread lock, plus a file lock across processes for SQLite."""

    def __init__(self, db: Path | None):
        import filelock

        self._thread = threading.RLock()
        self._file = None
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            self._file = filelock.FileLock(str(db) + ".lock", timeout=LOCK_TIMEOUT_S, thread_local=False)

    def __enter__(self) -> None:
        self._thread.acquire()
        if self._file is not None:
            try:
                self._file.acquire()
            except BaseException:
                self._thread.release()
                raise

    def __exit__(self, *exc: object) -> None:
        try:
            if self._file is not None:
                self._file.release()
        finally:
            self._thread.release()


_LOCKS: dict[str, _DbLock] = {}
_LOCKS_GUARD = threading.Lock()


def db_lock(uri: str) -> AbstractContextManager:
    """The lock every MLflow database call on `uri` takes; a no-op context for remote servers.

    One lock per URI and process, shared by every tracker on it (MLflow caches one store per URI,
    so trackers on one URI share its SQLite connections as well)."""
    if uri.startswith(("http://", "https://", "databricks")):
        return nullcontext()
    db = sqlite_path(uri)
    key = str(db.resolve()) if db is not None else uri
    with _LOCKS_GUARD:
        if key not in _LOCKS:
            _LOCKS[key] = _DbLock(db)
        return _LOCKS[key]


class MlflowTracker:
    """MLflow tracking on an explicit client (SQLite file in the work dir by default).

    Safe to share between threads and to run in several processes on one SQLite file: every call
    that touches the database holds `db_lock(uri)`; artifact copies and file reads happen outside it.
    """

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None, ui_url: str | None = None):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self._lock = db_lock(uri)
        with self._lock:  # creating the client creates and migrates the schema of a new database
            self.client = MlflowClient(tracking_uri=uri)
            self.experiment_id = self._experiment_id(experiment, artifact_root)
        self.ui_url = ui_url or os.environ.get("MLFLOW_UI_URL")

    def _experiment_id(self, name: str, artifact_root: Path | None) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = artifact_root.resolve().as_uri() if artifact_root else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException as exc:  # a remote server: another client created it meanwhile
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise exc
            return exp.experiment_id

    def _log(self, run_id: str, params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
             tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        p = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in flatten(params or {}).items()]
        m = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if _is_number(v)]
        t = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for i in range(0, max(len(p), len(m), len(t), 1), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(run_id, metrics=m[i:i + 100], params=p[i:i + 100], tags=t[i:i + 100])

    def start_flow_run(self, flow_run_id: str, name: str, params: dict[str, Any]) -> str:
        """The parent run of a flow run; re-attached by tag when the flow run is retried."""
        with self._lock:
            found = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'", max_results=1
            )
            if found:
                run_id = found[0].info.run_id
                self.client.update_run(run_id, status="RUNNING")
                return run_id
            run = self.client.create_run(
                self.experiment_id, run_name=name, tags={"prefect.flow_run_id": flow_run_id, "pipeline.flow": name}
            )
            self._log(run.info.run_id, params=params)
            return run.info.run_id

    def end_flow_run(self, run_id: str | None, status: str = "FINISHED") -> None:
        if run_id:
            with self._lock:
                self.client.set_terminated(run_id, status=status)

    def log_phase(self, parent_run_id, phase, artifact_id, cache_hit, params, metrics, artifact_dir=None,
                  artifact_files=None, dataset=None, steps=None) -> str:
        tags = {"pipeline.phase": phase, "pipeline.artifact_id": artifact_id, "pipeline.cache_hit": str(cache_hit).lower()}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        dataset_input = _dataset_input(**dataset) if dataset is not None else None  # reads a table: outside the lock
        with self._lock:
            run = self.client.create_run(self.experiment_id, run_name=phase, tags=tags)
            run_id = run.info.run_id
            self._log(run_id, params=params, metrics={**metrics, "cache_hit": float(cache_hit)})
            if steps:  # per-epoch curves: (key, value, step)
                from mlflow.entities import Metric

                now = int(time.time() * 1000)
                batch = [Metric(k, float(v), now, int(s)) for k, v, s in steps]
                for i in range(0, len(batch), 1000):
                    self.client.log_batch(run_id, metrics=batch[i:i + 1000])
            if artifact_dir is not None and not cache_hit:
                for name in artifact_files or []:
                    path = Path(artifact_dir) / name
                    if path.is_file():
                        self.client.log_artifact(run_id, str(path))
            if dataset_input is not None:
                self.client.log_inputs(run_id, datasets=[dataset_input])
            self.client.set_terminated(run_id, status="FINISHED")
        return run_id

    def run_url(self, run_id: str | None) -> str | None:
        if not run_id:
            return None
        base = self.ui_url or (self.uri if self.uri.startswith("http") else None)
        if base:
            return f"{base.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"
        return f"mlflow run {run_id} (experiment {self.experiment_id}, {self.uri})"


def _dataset_input(table_path: str, name: str, digest: str, source: str, context: str):
    """An MLflow dataset input for a parquet table (its schema and profile, not its rows)."""
    import mlflow.data
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag

    df = pd.read_parquet(table_path)
    with warnings.catch_warnings():  # a local path matches two equivalent source types
        warnings.simplefilter("ignore", UserWarning)
        ds = mlflow.data.from_pandas(df, source=source, name=name, digest=digest[:36])
    return DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) or isinstance(v, bool)
