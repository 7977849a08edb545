"""The MLflow model registry: registered classifiers, gated promotion, manual pins and their history.

Every function takes an explicit `MlflowClient` (no global tracking URI). A registered version is
an MLflow pyfunc logged as code (`pyfunc_model.py`) whose one artifact is the model dir, plus the
ids of the items the model trained on (`training_items.json`, so promotion can leave them out).

Promotion (`promote_student`): the new student takes the alias `champion` only if, on the frozen
test items (persisted at the first promotion as an artifact of that version's run, pointed to by
the registered model's `pipeline.frozen_test` tag), minus the items either model trained on, and
on the classes both know, it clears the floors of `promotion_gate` (above the majority-class rate
and not below the frozen-probe baseline beyond the interval, the first promotion included) and,
with a champion, is not worse than it beyond the interval with an ECE at most the champion's +
`promotion.ece_margin`; otherwise it becomes `challenger`, the reason in its tags. Every alias change (gate or manual
`pin_champion`) is appended to the registered model's `pipeline.history` tag (JSON list).

Kill-safety: registering is idempotent (a version with the same weights is reused; its files are logged
before the version exists, so no version lacks them). Before a promotion changes an alias it records
the aliases and history length it started from (`pipeline.promotion.pending` on the registered model)
and clears that once its decision is tagged; a promotion that finds the mark (its predecessor was
killed half-way) first restores that state (`repair_interrupted_promotion`), so it decides again from
the same state, with the same result.
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
FROZEN_PATH = "promotion/frozen_test.json"
TRAINED_PATH = "training_items.json"
MODEL_PATH = "model"
HISTORY_KEEP = 200
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
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
    from pipeline.training.modeling import META_FILE, MODEL_FILE

    return sha256_bytes((sha256_file(model_dir / MODEL_FILE) + sha256_file(model_dir / META_FILE)).encode())


def experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def _ensure_registered(client, name: str) -> None:
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

    from pipeline.training.modeling import META_FILE, MODEL_FILE, read_meta

    model_dir = Path(model_dir)
    sha = model_sha256(model_dir)
    _ensure_registered(client, name)
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


def _record(client, name: str, event: dict[str, Any]) -> dict[str, Any]:
    event = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **event}
    events = (history(client, name) + [event])[-HISTORY_KEEP:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(events))
    client.set_model_version_tag(name, str(event["version"]), f"pipeline.event.{len(events):04d}", json.dumps(event))
    return event


def _alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def pin_champion(client, name: str, version: int | str, reason: str = "manual") -> dict[str, Any]:
    """Give `version` the champion alias by hand (pin or roll back), recorded in the history."""
    mv = resolve_version(client, name, int(version))
    previous = _alias(client, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, mv.version)
    challenger = _alias(client, name, CHALLENGER)
    if challenger is not None and challenger.version == mv.version:
        client.delete_registered_model_alias(name, CHALLENGER)
    prev = int(previous.version) if previous else None
    action = "rollback" if prev is not None and int(mv.version) < prev else "pin"
    return _record(client, name, {"action": action, "version": int(mv.version), "previous_champion": prev,
                                  "by": "manual", "reason": reason})


def _read_json_artifact(client, run_id: str, path: str) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())


def frozen_test_items(client, name: str) -> list[dict[str, str]] | None:
    tag = client.get_registered_model(name).tags.get(FROZEN_TAG)
    if not tag:
        return None
    ref = json.loads(tag)
    return _read_json_artifact(client, ref["run_id"], ref["path"])


def freeze_test_items(client, name: str, mv, records: list[dict[str, str]]) -> None:
    client.log_text(mv.run_id, json.dumps(records, indent=1), FROZEN_PATH)
    client.set_registered_model_tag(name, FROZEN_TAG, json.dumps({"run_id": mv.run_id, "path": FROZEN_PATH,
                                                                   "version": int(mv.version), "n": len(records)}))


def trained_items(client, mv) -> set[str]:
    try:
        return set(_read_json_artifact(client, mv.run_id, TRAINED_PATH))
    except Exception:  # noqa: BLE001 - a version registered without the list: nothing to leave out
        return set()


def score_model_dir(model_dir: Path, records: list[dict[str, str]], n_bins: int, device: str = "cpu",
                    batch_size: int = 32) -> dict[str, float]:
    """top-1 and ECE (calibrated with the model's own temperature) of a model dir on labelled items."""
    from pipeline.training.promotion_gate import score_records

    return score_records(model_dir, records, n_bins, device, batch_size)[0]


def _compare_set(client, name: str, new, champ, test_items: Sequence[Any]) -> tuple[list[dict], dict[str, Any]]:
    """The frozen test items (persisted now if this is the first promotion) minus what either model
    trained on, restricted to the classes both models know; plus how the set was formed."""
    from pipeline.training.predict import item_records

    frozen = frozen_test_items(client, name)
    tag = client.get_registered_model(name).tags.get(FROZEN_TAG)
    first = frozen is None or json.loads(tag).get("version") == int(new.version)  # by this version (a killed try too)
    if frozen is None:
        frozen = _with_photos(item_records(test_items), test_items)
        freeze_test_items(client, name, new, frozen)
    new_classes = json.loads(new.tags.get("class_names", "[]"))
    champ_classes = json.loads(champ.tags.get("class_names", "[]")) if champ else new_classes
    shared = [c for c in new_classes if c in set(champ_classes)]
    trained = trained_items(client, new) | (trained_items(client, champ) if champ else set())
    unseen = [r for r in frozen if r["item_id"] not in trained]
    present = [r for r in unseen if Path(r["path"]).is_file()]
    records = [r for r in present if r["label"] in set(shared)]
    info = {"frozen_items": len(frozen), "frozen_now": first, "left_out_trained": len(frozen) - len(unseen),
            "missing_files": len(unseen) - len(present), "outside_shared_classes": len(present) - len(records),
            "compared_items": len(records), "classes_changed": new_classes != champ_classes,
            "shared_classes": shared, "only_new": [c for c in new_classes if c not in set(champ_classes)],
            "only_champion": [c for c in champ_classes if c not in set(new_classes)]}
    return records, info


def _with_photos(records: list[dict[str, str]], items: Any) -> list[dict[str, str]]:
    """Each record's photo (`group`): a training frame maps a crop's `key` to its photo's `item_id`, so
    intervals resample photos, not crops."""
    photo = {}
    if hasattr(items, "columns") and {"key", "item_id"} <= set(items.columns):
        photo = {str(k): str(i) for k, i in zip(items["key"], items["item_id"])}
    return [{**r, "group": photo.get(r["item_id"], r["item_id"])} for r in records]


def _pending(client, name: str) -> dict[str, Any] | None:
    tag = client.get_registered_model(name).tags.get(PENDING_TAG)
    return json.loads(tag) if tag else None


def _mark_pending(client, name: str, version: int, champ, events: int) -> None:
    challenger = _alias(client, name, CHALLENGER)
    client.set_registered_model_tag(name, PENDING_TAG, json.dumps({
        "version": version, CHAMPION: int(champ.version) if champ else None,
        CHALLENGER: int(challenger.version) if challenger else None, "history": events}))


def repair_interrupted_promotion(client, name: str) -> dict[str, Any] | None:
    """Undo what a killed promotion of `name` did after it marked itself pending: the champion and
    challenger aliases and the history go back to what they were; returns the mark (None: nothing to do)."""
    mark = _pending(client, name)
    if mark is None:
        return None
    for alias in (CHAMPION, CHALLENGER):
        current = _alias(client, name, alias)
        if mark.get(alias) is not None:
            if current is None or int(current.version) != int(mark[alias]):
                client.set_registered_model_alias(name, alias, str(mark[alias]))
        elif current is not None:
            client.delete_registered_model_alias(name, alias)
    events = history(client, name)
    if len(events) > int(mark.get("history", len(events))):
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(events[: int(mark["history"])]))
    client.delete_registered_model_tag(name, PENDING_TAG)
    return mark


def promote_student(client, name: str, new_version: int | str, test_items: Sequence[Any], cfg: Any,
                    cache_dir: Path | None = None, device: str = "cpu", veto: str | None = None,
                    baseline_dir: Path | None = None, majority_class: str | None = None) -> dict[str, Any]:
    """The gate (module docstring and `promotion_gate`). Returns the decision: promoted, reason, both sets
    of figures, every floor rule with its interval, the comparison set's make-up; the alias change is
    recorded in the history. A `veto` (e.g. "no passing browser variant") keeps the new version
    challenger whatever its figures. `baseline_dir`: the frozen-probe model dir (teacher's `probe/`);
    `majority_class`: the train split's most frequent class."""
    repair_interrupted_promotion(client, name)  # a promotion killed half-way: back to the state it started from
    new = resolve_version(client, name, int(new_version))
    champ = _alias(client, name, CHAMPION)
    cache = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="registry-"))
    records, info = _compare_set(client, name, new, champ, test_items)
    from pipeline.training import promotion_gate as gate

    n_bins, margin = cfg.calibration.n_bins, cfg.promotion.ece_margin
    new_fig, new_ok = gate.score_records(version_model_dir(client, new, cache), records, n_bins, device)
    champ_fig, champ_ok = (gate.score_records(version_model_dir(client, champ, cache), records, n_bins, device)
                           if champ else (None, None))
    probe_fig, probe_ok = (gate.score_records(Path(baseline_dir), records, n_bins, device)
                           if baseline_dir is not None and (Path(baseline_dir) / "model.json").is_file() else (None, None))
    rules = gate.floors(new_ok, records, majority_class=majority_class, probe=probe_ok,
                        champion=champ_ok if champ is not None and champ.version != new.version else None,
                        seed=int(getattr(cfg.train, "seed", 0)))
    decision: dict[str, Any] = {"name": name, "version": int(new.version), "ece_margin": margin, **info,
                                "new": new_fig, "champion": champ_fig, "probe": probe_fig, "floors": rules,
                                "majority_class": majority_class,
                                "champion_version": int(champ.version) if champ else None}
    failed = [r for r in rules if not r["passed"]]
    if champ is not None and champ.version == new.version:
        promoted, reason = True, "already the champion"
    elif veto or failed:
        promoted = False
        reason = "; ".join([*([f"vetoed: {veto}"] if veto else []),
                            *(["refused by the floor: " + "; ".join(r["text"] for r in failed)] if failed else [])])
    elif not records:
        promoted, reason = False, "no frozen test item left to compare on (shared classes, unseen by both)"
    elif champ is None:
        promoted, reason = True, "first promotion, floors cleared: " + "; ".join(r["text"] for r in rules)
    else:
        ece_ok = new_fig["ece"] <= champ_fig["ece"] + margin
        promoted = ece_ok
        reason = "; ".join([*(r["text"] for r in rules),
                            f"ECE {new_fig['ece']:.4f} {'<=' if ece_ok else '>'} champion {champ_fig['ece']:.4f} + {margin}"])
    decision.update(promoted=promoted, reason=reason, alias=CHAMPION if promoted else CHALLENGER)
    _mark_pending(client, name, int(new.version), champ, len(history(client, name)))  # cleared when all is done
    if champ is None or champ.version != new.version:
        client.set_registered_model_alias(name, decision["alias"], new.version)
        challenger = _alias(client, name, CHALLENGER) if promoted else None
        if challenger is not None and challenger.version == new.version:
            client.delete_registered_model_alias(name, CHALLENGER)
        _record(client, name, {"action": "promoted" if promoted else "challenger", "version": int(new.version),
                               "previous_champion": decision["champion_version"], "by": "gate", "reason": reason})
    client.set_model_version_tag(name, str(new.version), "pipeline.promotion",
                                 json.dumps({k: decision[k] for k in ("promoted", "reason", "compared_items")}))
    client.delete_registered_model_tag(name, PENDING_TAG)
    return decision
