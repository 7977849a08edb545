"""The MLflow model registry: registered classifiers, gated promotion, manual pins and their history.

Every function takes an explicit `MlflowClient` (no global tracking URI). A registered version is
an MLflow pyfunc logged as code (`pyfunc.py`) whose one artifact is the model dir, plus the
ids of the items the model trained on (`training_items.json`, so promotion can leave them out).

Gated promotion (`promote_student`, its frozen test items and its kill-safe alias changes) is in
`promote.py`; every alias change (gate or manual `pin_champion`) is appended to the registered model's
`pipeline.history` tag (JSON list), written here.

Kill-safety: registering is idempotent (a version with the same weights is reused; its files are logged
before the version exists, so no version lacks them).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Sequence

from pipeline.core.errors import ConfigError

# MLflow's advice to give an input example: this pyfunc has an explicit signature instead.
_QUIET = (r".*input example was not provided.*",)


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        for pattern in _QUIET:
            warnings.filterwarnings("ignore", message=pattern, category=UserWarning)
        yield

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG, FROZEN_TAG, SHA_TAG = "pipeline.history", "pipeline.frozen_test", "pipeline.model_sha256"
PENDING_TAG = "pipeline.promotion.pending"
TRAINED_PATH = "training_items.json"
MODEL_PATH = "model"
HISTORY_KEEP = 200
PYFUNC_FILE = Path(__file__).with_name("pyfunc.py")
_REQUIREMENTS = ("torch", "torchvision", "timm", "safetensors", "pillow", "numpy", "pandas", "mlflow")


def registry_client(tracking_uri: str):
    import os

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    from pipeline.core.tracking import db_lock

    with db_lock(tracking_uri):  # creating the client creates/migrates a new SQLite store's tables
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def student_name(cfg: Any) -> str:
    return f"{cfg.tracking.experiment}-student"


def teacher_name(cfg: Any, region: str | None = None) -> str:
    return f"{cfg.tracking.experiment}-teacher" + (f"-{region}" if region else "")


def pip_requirements() -> list[str]:
    """Exact pins of what the pyfunc imports, from this environment (plus the `pipeline` package itself)."""
    out = []
    for pkg in _REQUIREMENTS:
        try:
            out.append(f"{pkg}=={metadata.version(pkg).split('+')[0]}")
        except metadata.PackageNotFoundError:
            out.append(pkg)
    return out


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "path", required=False), ColSpec("binary", "image", required=False)]),
        outputs=Schema([ColSpec("string", "label"), ColSpec("double", "confidence"),
                        ColSpec("boolean", "not_conclusive"), ColSpec("string", "error", required=False)]))


def model_sha256(model_dir: Path) -> str:
    from pipeline.core.hashing import sha256_bytes, sha256_file
    from pipeline.models.classifier import META_FILE, MODEL_FILE

    return sha256_bytes((sha256_file(model_dir / MODEL_FILE) + sha256_file(model_dir / META_FILE)).encode())


def experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def ensure_registered(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)


def register_classifier(client, name: str, model_dir: Path, experiment: str, trained_item_ids: Sequence[str] = (),
                        tags: dict[str, str] | None = None):
    """Log `model_dir` as a pyfunc in a new run of `experiment` and register it as a version of `name`.
    Idempotent: a version with the same weights and model.json is returned instead of a new one."""
    import mlflow.pyfunc

    from pipeline.models.classifier import META_FILE, MODEL_FILE, read_meta

    model_dir = Path(model_dir)
    sha = model_sha256(model_dir)
    ensure_registered(client, name)
    for mv in client.search_model_versions(f"name = '{name}'"):
        if mv.tags.get(SHA_TAG) == sha:
            return mv
    meta = read_meta(model_dir)
    run = client.create_run(experiment_id(client, experiment), run_name=f"register {name}",
                            tags={"pipeline.registered_model": name, **(tags or {})})
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model_dir"
        src.mkdir()
        for f in (MODEL_FILE, META_FILE):
            shutil.copyfile(model_dir / f, src / f)
        with _quiet():
            mlflow.pyfunc.save_model(Path(tmp) / MODEL_PATH, python_model=str(PYFUNC_FILE),
                                     artifacts={"model_dir": str(src)}, pip_requirements=pip_requirements(),
                                     signature=_signature())
        client.log_artifacts(run_id, str(Path(tmp) / MODEL_PATH), MODEL_PATH)
    client.log_text(run_id, json.dumps(sorted(set(trained_item_ids))), TRAINED_PATH)
    version_tags = {SHA_TAG: sha, "arch": str(meta["arch"]), "class_names": json.dumps(meta["class_names"]),
                    "temperature": str(meta.get("temperature")), "threshold": str(meta.get("threshold")),
                    "random_init": str(bool(meta.get("random_init"))).lower(), **(tags or {})}
    mv = client.create_model_version(name, f"{run.info.artifact_uri}/{MODEL_PATH}", run_id=run_id, tags=version_tags)
    client.set_terminated(run_id)
    return mv


def resolve_version(client, name: str, ref: str | int):
    """A model version by alias ('champion') or number."""
    from mlflow.exceptions import MlflowException

    try:
        if isinstance(ref, int) or str(ref).isdigit():
            return client.get_model_version(name, str(ref))
        return client.get_model_version_by_alias(name, str(ref))
    except MlflowException as exc:
        raise ConfigError(f"no version {ref!r} of registered model {name!r} in the registry: {exc.message}") from None


def version_model_dir(client, mv, cache_dir: Path) -> Path:
    """The version's model dir (model.safetensors + model.json), downloaded once into cache_dir: into a temp
    folder renamed into place (a killed download is never taken for a copy), and a copy whose files no
    longer match the version's sha256 tag is downloaded again, with a warning (never served)."""
    import logging
    import uuid

    dst = Path(cache_dir) / mv.name / str(mv.version)
    local = dst / MODEL_PATH / "artifacts" / "model_dir"
    sha = (getattr(mv, "tags", None) or {}).get(SHA_TAG)
    if (local / "model.json").is_file():
        try:
            if not sha or model_sha256(local) == sha:
                return local
        except OSError:
            pass
        logging.getLogger(__name__).warning("registry copy %s does not match %s version %s: downloading it again",
                                            dst, mv.name, mv.version)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        client.download_artifacts(mv.run_id, MODEL_PATH, str(tmp))
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return local


def load_pyfunc(client, name: str, ref: str | int, cache_dir: Path):
    """The registered pyfunc of `name` at `ref` (alias or version), loaded from a local download."""
    import mlflow.pyfunc

    mv = resolve_version(client, name, ref)
    version_model_dir(client, mv, cache_dir)
    with _quiet():
        return mlflow.pyfunc.load_model(str(Path(cache_dir) / mv.name / str(mv.version) / MODEL_PATH))


def history(client, name: str) -> list[dict[str, Any]]:
    tag = client.get_registered_model(name).tags.get(HISTORY_TAG)
    return json.loads(tag) if tag else []


def record_event(client, name: str, event: dict[str, Any]) -> dict[str, Any]:
    event = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **event}
    events = (history(client, name) + [event])[-HISTORY_KEEP:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(events))
    client.set_model_version_tag(name, str(event["version"]), f"pipeline.event.{len(events):04d}", json.dumps(event))
    return event


def alias_version(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def pin_champion(client, name: str, version: int | str, reason: str = "manual") -> dict[str, Any]:
    """Give `version` the champion alias by hand (pin or roll back), recorded in the history."""
    mv = resolve_version(client, name, int(version))
    previous = alias_version(client, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, mv.version)
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is not None and challenger.version == mv.version:
        client.delete_registered_model_alias(name, CHALLENGER)
    prev = int(previous.version) if previous else None
    action = "rollback" if prev is not None and int(mv.version) < prev else "pin"
    return record_event(client, name, {"action": action, "version": int(mv.version), "previous_champion": prev,
                                  "by": "manual", "reason": reason})


def read_json_artifact(client, run_id: str, path: str) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())


def trained_items(client, mv) -> set[str]:
    try:
        return set(read_json_artifact(client, mv.run_id, TRAINED_PATH))
    except Exception:  # noqa: BLE001 - a version registered without the list: nothing to leave out
        return set()
