"""The work dir: where artifacts, Prefect state, MLflow runs and caches live.

`setup_environment` must run before Prefect, MLflow, torch or Ultralytics are imported: it keeps
every tool's state inside the work dir, quiet and offline.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.config import PipelineConfig

OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_API_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "false",
    "YOLO_VERBOSE": "false",
    "OMP_WAIT_POLICY": "PASSIVE",
    "TOKENIZERS_PARALLELISM": "false",
}


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def results(self) -> Path:
        return self.root / "prefect-results"

    @property
    def prefect_home(self) -> Path:
        return self.root / ".prefect"

    @property
    def cache(self) -> Path:
        return self.root / ".cache"

    @property
    def weights(self) -> Path:
        """Model weights the pipeline finds by name (Ultralytics `detect.weights`): <workdir>/.cache/weights."""
        return self.cache / "weights"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def runs(self) -> Path:
        """Run records, <flow_run_id>.json: each run's config, inputs and phase artifacts."""
        return self.root / "runs"

    def artifact_uri(self, cfg: PipelineConfig) -> str:
        return cfg.store.artifacts or str(self.artifacts)

    def store(self, cfg: PipelineConfig):
        """The artifact store of this work dir (or `store.artifacts`), remote files cached locally."""
        from pipeline.core.store import ArtifactStore

        return ArtifactStore(self.artifact_uri(cfg), cache_dir=self.cache / "artifacts")

    def item_cache_uri(self, cfg: PipelineConfig) -> str:
        """The per-item cache root of the crops and embeddings phases (`store.items`, a path or an fsspec URI
        that shard workers share); default <workdir>/.cache/items. Runtime only: in no artifact id."""
        return cfg.store.items or str(self.cache / "items")

    def item_mirror(self, cfg: PipelineConfig) -> Path | None:
        """Where a remote per-item cache's entries are copied locally: <workdir>/.cache/items-mirror/<uri
        hash>; None for a local cache (read in place)."""
        from pipeline.core.item_cache import is_remote, mirror_dir

        uri = self.item_cache_uri(cfg)
        return mirror_dir(self.cache, uri) if is_remote(uri) else None

    def results_uri(self, cfg: PipelineConfig) -> str:
        return cfg.store.results or str(self.results)

    def tracking_uri(self, cfg: PipelineConfig) -> str:
        return cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlflow_db.resolve()}"


def setup_environment(workdir: str | Path, prefect_home: bool = True) -> Workspace:
    """Create the work dir and point every tool's state into it (existing variables win)."""
    ws = Workspace(Path(workdir).resolve())
    ws.root.mkdir(parents=True, exist_ok=True)
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    dirs = {
        "YOLO_CONFIG_DIR": ws.cache / "ultralytics",
        "MPLCONFIGDIR": ws.cache / "matplotlib",
        "NUMBA_CACHE_DIR": ws.cache / "numba",
        "TORCH_HOME": ws.cache / "torch",
    }
    if prefect_home:
        dirs["PREFECT_HOME"] = ws.prefect_home
    for key, path in dirs.items():
        if key not in os.environ:
            path.mkdir(parents=True, exist_ok=True)
            os.environ[key] = str(path)
    ws.weights.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(ws.results))
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    os.environ.setdefault("PREFECT_RESULTS_DEFAULT_SERIALIZER", "json")  # nothing in the results store is a pickle
    return ws
