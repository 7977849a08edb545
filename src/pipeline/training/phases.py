"""Declarations of the training phases: teacher, one teacher_<name> per regional teacher,
soft_labels, student, student_no_teacher, finetune, calibration, promotion.

Training reads crops (car-damage formats: damage type or `clean` per crop) or whole images
(labelled datasets); `train.source` decides, `auto` following the dataset format, so the crops
phase is an input only when it is used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.config import TRAIN_RUNTIME_KEYS, PipelineConfig
from pipeline.core.phases import PHASES, PhaseRun, PhaseSpec, register

CROP_FORMATS = ("labelme", "coco")
MODEL_OUTPUTS = ("model.safetensors", "model.json", "report.md", "predictions.parquet")
MODEL_REPORTS = ("report.md", "curves.png", "confusion.png")
MANIFEST_FILE = "training_manifest.yaml"


def _uses_crops(cfg: PipelineConfig, options: dict[str, Any]) -> bool:
    if cfg.train.source != "auto":
        return cfg.train.source == "crops"
    return options.get("format") in CROP_FORMATS


def _inputs(*names: str):
    def inputs_for(cfg: PipelineConfig, options: dict[str, Any]) -> tuple[str, ...]:
        return ("split", *names, *(("crops",) if _uses_crops(cfg, options) else ()))
    return inputs_for


def _keys(*sections: str) -> tuple[str, ...]:
    return tuple(k for k in TRAIN_RUNTIME_KEYS if k.split(".")[0] in sections)


def _runtime(run: PhaseRun):
    """Device, per-epoch logging into the phase's MLflow run, fault injection (tests: the runtime option
    `fail_after_steps`, which only a caller of execute_phase sets; never read from the environment)."""
    from pipeline.models.loading import pick_device
    from pipeline.training.runner import PhaseRuntime

    def on_epoch(epoch: int, values: dict[str, float]) -> None:
        run.steps.extend((k, float(v), int(epoch)) for k, v in values.items())

    fail = run.runtime.get("fail_after_steps")
    return PhaseRuntime(device=pick_device(run.cfg.runtime.device), on_epoch=on_epoch,
                        fail_after_steps=int(fail) if fail else None, progress=run.progress, name=run.name)


def _common(run: PhaseRun) -> dict[str, Any]:
    root = run.runtime.get("dataset_root")
    return {"dataset_root": Path(root) if root else None, "crops_dir": run.inputs.get("crops"),
            "runtime": _runtime(run)}


def _checkpoints(run: PhaseRun) -> Path:
    base = run.runtime.get("checkpoints") or (Path(run.runtime.get("workdir", ".")) / ".cache" / "checkpoints")
    return Path(base) / run.name / run.artifact_id


def _split(run: PhaseRun) -> Path:
    return run.inputs["split"] / "split.parquet"


def _run_teacher(run: PhaseRun) -> dict[str, Any]:
    from pipeline.training.teacher import run_teacher

    return run_teacher(_split(run), run.cfg, run.out_dir, _checkpoints(run), **_common(run))


def _run_regional(run: PhaseRun) -> dict[str, Any]:
    from pipeline.training.teacher import run_regional_teacher

    return run_regional_teacher(_split(run), run.inputs["teacher"], run.instance["name"], run.cfg, run.out_dir,
                                _checkpoints(run), **_common(run))


def _teacher_dirs(run: PhaseRun) -> dict[str, Path]:
    return {k: v for k, v in run.inputs.items() if k == "teacher" or k.startswith("teacher_")}


def _run_soft_labels(run: PhaseRun) -> dict[str, Any]:
    from pipeline.training.distill import run_soft_labels

    return run_soft_labels(_split(run), _teacher_dirs(run), run.cfg, run.out_dir, **_common(run))


def _run_student(run: PhaseRun) -> dict[str, Any]:
    from pipeline.training.distill import run_student

    return run_student(_split(run), run.cfg, run.out_dir, _checkpoints(run), soft_dir=run.inputs["soft_labels"],
                       **_common(run))


def _run_student_no_teacher(run: PhaseRun) -> dict[str, Any]:
    from pipeline.training.distill import run_student

    return run_student(_split(run), run.cfg, run.out_dir, _checkpoints(run), soft_dir=None, **_common(run))


def _run_finetune(run: PhaseRun) -> dict[str, Any]:
    from pipeline.training.distill import run_finetune

    return run_finetune(_split(run), run.inputs["student"], run.cfg, run.out_dir, _checkpoints(run), **_common(run))


def _items(run: PhaseRun, model_dir: Path):
    """Train/val/test items with the model's class list (the same selection the model trained on)."""
    import json

    from pipeline.training.data import build_items

    classes = json.loads((model_dir / "model.json").read_text())["class_names"]
    c = _common(run)
    return build_items(_split(run), run.cfg.train, c["dataset_root"], c["crops_dir"], class_names=classes)


def _run_calibration(run: PhaseRun) -> dict[str, Any]:
    from pipeline.training.calibrate import run_calibration

    model_dir = run.inputs["finetune"]
    data = _items(run, model_dir)
    return run_calibration(model_dir, data.part("val"), data.part("test"), run.cfg, run.out_dir,
                           device=_runtime(run).device, batch_size=run.cfg.train.eval_batch_size)


def _export_veto(run: PhaseRun) -> str | None:
    """A student with no passing browser variant cannot become champion."""
    from pipeline.export.registry_io import browser_variants

    export = run.inputs.get("export")
    if export is None or browser_variants(export):
        return None
    return "no TF.js variant passed the equivalence gate"


def _run_promotion(run: PhaseRun) -> dict[str, Any]:
    from pipeline.core.tracking import db_lock
    from pipeline.core.workspace import Workspace
    from pipeline.training.promotion import run_promotion
    from pipeline.training.promotion_gate import majority_of

    student = run.inputs["calibration"]
    data = _items(run, student)
    workdir = Workspace(Path(run.runtime.get("workdir", ".")))
    uri = workdir.tracking_uri(run.cfg)
    teachers = _teacher_dirs(run)
    trained = list(data.part("train")["key"])
    with db_lock(uri):  # the registry shares the tracking database
        metrics = run_promotion(student, data.part("test"), trained, run.cfg, uri, run.out_dir, teacher_dirs=teachers,
                                teacher_trained={k: trained for k in teachers}, veto=_export_veto(run),
                                cache_dir=workdir.cache / "registry", device=_runtime(run).device,
                                export_dir=run.inputs.get("export"),
                                majority_class=majority_of(data.counts().get("train", {}), data.class_names))
    return {**metrics, **_write_manifest(run, metrics, data.frame)}


def _write_manifest(run: PhaseRun, metrics: dict[str, Any], frame: Any) -> dict[str, Any]:
    """The training manifest (training.manifest) of the flow run this promotion belongs to: into the
    artifact (logged to MLflow as a report) and beside the run record as <flow_run_id>.training.yaml.
    The run is the RUNNING record whose calibration is this promotion's input (records list the
    phases done so far, each with its metrics)."""
    import shutil

    from pipeline.core.runs import RunRecord
    from pipeline.core.workspace import Workspace
    from pipeline.training.manifest import data_counts, write_training_manifest

    workdir = Path(run.runtime.get("workdir", "."))
    calibration = run.inputs["calibration"]
    record = next((r for r in RunRecord.all(workdir) if r.status == "RUNNING"
                   and (r.phases.get("calibration") or {}).get("artifact_id") == calibration.name), None)
    phases = {k: dict(v) for k, v in (record.phases if record else {}).items()}
    phases["calibration"] = {**phases.get("calibration", {}), "artifact_id": calibration.name, "path": str(calibration)}
    phases["promotion"] = {"artifact_id": run.artifact_id, "cache_hit": False, "metrics": metrics}
    summary = {"flow_run_id": record.flow_run_id if record else None,
               "mlflow_run_id": (record.run or {}).get("parent_run_id") if record else None,
               "phases": phases, "runtime": {"device": _runtime(run).device}}
    path = write_training_manifest(summary, run.cfg, run.out_dir / MANIFEST_FILE, data_counts(frame))
    if record is None:
        return {"training_manifest": "written into the promotion artifact only (no running flow record)"}
    beside = Workspace(workdir).runs / f"{record.flow_run_id}.training.yaml"
    shutil.copyfile(path, beside)
    return {"training_manifest": str(beside)}


def _regional_instances(cfg: PipelineConfig) -> list[dict[str, Any]]:
    return [t.model_dump(mode="json") for t in cfg.regional.teachers]


def _promotion_inputs(cfg: PipelineConfig, options: dict[str, Any]) -> tuple[str, ...]:
    extra = ("export",) if "export" in PHASES else ()
    return _inputs("calibration", "teacher", "teacher_regional*", *extra)(cfg, options)


def _regional_params(cfg: PipelineConfig, options: dict[str, Any]) -> dict[str, Any]:
    """The regional recipe without its list of teachers: each member's own entry is its `instance`."""
    return {"regional_recipe": cfg.regional.model_dump(mode="json", exclude={"teachers", "batch_size"})}


register(
    PhaseSpec(
        name="teacher", version="2", inputs=("split", "crops"), inputs_for=_inputs(), outputs=MODEL_OUTPUTS,
        sections=("train", "teacher"), runtime_keys=_keys("train", "teacher"), run=_run_teacher,
        reports=MODEL_REPORTS, pool="gpu",
        description="the global teacher: linear-probe baseline, then fine-tuning (timm, Mixup, warmup + cosine)",
    ),
    PhaseSpec(
        name="teacher_regional", version="2", inputs=("split", "teacher", "crops"), inputs_for=_inputs("teacher"),
        outputs=MODEL_OUTPUTS, sections=("train",), runtime_keys=_keys("train"), run=_run_regional,
        extra_params=_regional_params, instances=_regional_instances, member="teacher_{name}",
        reports=MODEL_REPORTS, pool="gpu",
        description="a regional teacher per `regional.teachers` entry, from the global teacher, on its subset",
    ),
    PhaseSpec(
        name="soft_labels", version="2", inputs=("split", "teacher", "teacher_regional*", "crops"),
        inputs_for=_inputs("teacher", "teacher_regional*"), outputs=("soft_labels.parquet", "soft_labels.json"),
        sections=("train", "soft_labels"), runtime_keys=_keys("train"), run=_run_soft_labels, pool="gpu",
        reports=("report.md",) , description="the teachers' combined soft labels on the train split",
    ),
    PhaseSpec(
        name="student", version="2", inputs=("split", "soft_labels", "crops"), inputs_for=_inputs("soft_labels"),
        outputs=MODEL_OUTPUTS, sections=("train", "student"), runtime_keys=_keys("train", "student"),
        run=_run_student, reports=MODEL_REPORTS, pool="gpu",
        description="the small student distilled from the soft labels (KL at T plus CE)",
    ),
    PhaseSpec(
        name="student_no_teacher", version="2", inputs=("split", "crops"), inputs_for=_inputs(),
        outputs=MODEL_OUTPUTS, sections=("train", "student"), runtime_keys=_keys("train", "student"),
        run=_run_student_no_teacher, reports=MODEL_REPORTS, pool="gpu",
        description="the same student trained without teachers: what distillation bought",
    ),
    PhaseSpec(
        name="finetune", version="2", inputs=("split", "student", "crops"), inputs_for=_inputs("student"),
        outputs=MODEL_OUTPUTS, sections=("train", "finetune"), runtime_keys=_keys("train", "finetune"),
        run=_run_finetune, reports=MODEL_REPORTS, pool="gpu",
        description="the distilled student fine-tuned with CE and stronger augmentation",
    ),
    PhaseSpec(
        name="calibration", version="3", inputs=("split", "finetune", "crops"), inputs_for=_inputs("finetune"),
        outputs=("model.safetensors", "model.json", "thresholds.json", "report.md"),
        sections=("train", "calibration"), runtime_keys=_keys("train"), run=_run_calibration,
        reports=("report.md", "reliability.png", "gallery_errors.png", "gallery_not_conclusive.png", "thresholds.json"),
        description="temperature scaling on val NLL, ECE/MCE, the threshold table and the 'not conclusive' threshold",
    ),
    PhaseSpec(
        name="promotion", version="2", inputs=("split", "calibration", "teacher", "teacher_regional*", "export"),
        inputs_for=_promotion_inputs, outputs=("report.md", "decision.json"),
        sections=("train", "calibration", "promotion", "tracking"), runtime_keys=_keys("train"),
        run=_run_promotion, reports=("report.md", "decision.json", MANIFEST_FILE), cacheable=False,
        description="register teachers and student; the student becomes champion only if it is not worse",
    ),
)
