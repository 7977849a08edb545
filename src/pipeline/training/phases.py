"""Declarations of the training phases: teacher, one teacher_<name> per regional teacher,
soft_labels, student, student_no_teacher, finetune, calibration (promotion: `pipeline.registry.phases`).

Training reads crops (car-damage formats: damage type or `clean` per crop) or whole images
(labelled datasets); `train.source` decides, `auto` following the dataset format, so the crops
phase is an input only when it is used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.config import PHASE_RUNTIME_KEYS, PipelineConfig, train_runtime_keys
from pipeline.core.phases import PhaseRun, PhaseSpec, register

CROP_FORMATS = ("labelme", "coco")
MODEL_OUTPUTS = ("model.safetensors", "model.json", "report.md", "predictions.parquet")
MODEL_REPORTS = ("report.md", "curves.png", "confusion.png")


def _uses_crops(cfg: PipelineConfig, options: dict[str, Any]) -> bool:
    if cfg.train.source != "auto":
        return cfg.train.source == "crops"
    return options.get("format") in CROP_FORMATS


def inputs_of(*names: str):
    def inputs_for(cfg: PipelineConfig, options: dict[str, Any]) -> tuple[str, ...]:
        return ("split", *names, *(("crops",) if _uses_crops(cfg, options) else ()))
    return inputs_for


def reads(*sections: str) -> dict[str, tuple[str, ...]]:
    """`sections=` and `runtime_keys=` of a phase reading these config sections: what training reads at run
    time (core.config.train_runtime_keys, from how a phase inherits `train.*`) stays out of its id."""
    return {"sections": sections, "runtime_keys": train_runtime_keys(*sections)}


def runtime_of(run: PhaseRun):
    """Device, per-epoch logging into the phase's MLflow run, fault injection (tests: the runtime option
    `fail_after_steps`, which only a caller of execute_phase sets; never read from the environment)."""
    from pipeline.core.device import pick_device
    from pipeline.training.trainer import PhaseRuntime

    def on_epoch(epoch: int, values: dict[str, float]) -> None:
        run.steps.extend((k, float(v), int(epoch)) for k, v in values.items())

    fail = run.runtime.get("fail_after_steps")
    return PhaseRuntime(device=pick_device(run.cfg.runtime.device), on_epoch=on_epoch,
                        fail_after_steps=int(fail) if fail else None, progress=run.progress, name=run.name)


def common_of(run: PhaseRun) -> dict[str, Any]:
    root = run.runtime.get("dataset_root")
    return {"dataset_root": Path(root) if root else None, "crops_dir": run.inputs.get("crops"),
            "runtime": runtime_of(run)}


def _checkpoints(run: PhaseRun) -> Path:
    base = run.runtime.get("checkpoints") or (Path(run.runtime.get("workdir", ".")) / ".cache" / "checkpoints")
    return Path(base) / run.name / run.artifact_id


def _split(run: PhaseRun) -> Path:
    return run.inputs["split"] / "split.parquet"


def _run_teacher(run: PhaseRun) -> dict[str, Any]:
    from pipeline.training.teacher import run_teacher

    return run_teacher(_split(run), run.cfg, run.out_dir, _checkpoints(run), **common_of(run))


def _run_regional(run: PhaseRun) -> dict[str, Any]:
    from pipeline.training.teacher import run_regional_teacher

    return run_regional_teacher(_split(run), run.inputs["teacher"], run.instance["name"], run.cfg, run.out_dir,
                                _checkpoints(run), **common_of(run))


def teacher_dirs(run: PhaseRun) -> dict[str, Path]:
    return {k: v for k, v in run.inputs.items() if k == "teacher" or k.startswith("teacher_")}


def _run_soft_labels(run: PhaseRun) -> dict[str, Any]:
    from pipeline.training.distill import run_soft_labels

    return run_soft_labels(_split(run), teacher_dirs(run), run.cfg, run.out_dir, **common_of(run))


def _run_student(run: PhaseRun) -> dict[str, Any]:
    from pipeline.training.distill import run_student

    return run_student(_split(run), run.cfg, run.out_dir, _checkpoints(run), soft_dir=run.inputs["soft_labels"],
                       **common_of(run))


def _run_student_no_teacher(run: PhaseRun) -> dict[str, Any]:
    from pipeline.training.distill import run_student

    return run_student(_split(run), run.cfg, run.out_dir, _checkpoints(run), soft_dir=None, **common_of(run))


def _run_finetune(run: PhaseRun) -> dict[str, Any]:
    from pipeline.training.distill import run_finetune

    return run_finetune(_split(run), run.inputs["student"], run.cfg, run.out_dir, _checkpoints(run), **common_of(run))


def items_for(run: PhaseRun, model_dir: Path):
    """Train/val/test items with the model's class list (the same selection the model trained on)."""
    import json

    from pipeline.training.items import build_items

    classes = json.loads((model_dir / "model.json").read_text())["class_names"]
    c = common_of(run)
    return build_items(_split(run), run.cfg.train, c["dataset_root"], c["crops_dir"], class_names=classes)


def _run_calibration(run: PhaseRun) -> dict[str, Any]:
    from pipeline.training.calibrate import run_calibration

    model_dir = run.inputs["finetune"]
    data = items_for(run, model_dir)
    return run_calibration(model_dir, data.part("val"), data.part("test"), run.cfg, run.out_dir,
                           device=runtime_of(run).device, batch_size=run.cfg.train.eval_batch_size)


def _regional_instances(cfg: PipelineConfig) -> list[dict[str, Any]]:
    return [t.model_dump(mode="json") for t in cfg.regional.teachers]


def _regional_params(cfg: PipelineConfig, options: dict[str, Any]) -> dict[str, Any]:
    """The regional recipe without its list of teachers: each member's own entry is its `instance`."""
    return {"regional_recipe": cfg.regional.model_dump(mode="json", exclude={"teachers", *PHASE_RUNTIME_KEYS})}


register(
    PhaseSpec(
        name="teacher", version="2", inputs=("split", "crops"), inputs_for=inputs_of(), outputs=MODEL_OUTPUTS,
        **reads("train", "teacher"), run=_run_teacher, reports=MODEL_REPORTS, pool="gpu",
        description="the global teacher: linear-probe baseline, then fine-tuning (timm, Mixup, warmup + cosine)",
    ),
    PhaseSpec(
        name="teacher_regional", version="2", inputs=("split", "teacher", "crops"), inputs_for=inputs_of("teacher"),
        outputs=MODEL_OUTPUTS, **reads("train"), run=_run_regional,
        extra_params=_regional_params, instances=_regional_instances, member="teacher_{name}",
        reports=MODEL_REPORTS, pool="gpu",
        description="a regional teacher per `regional.teachers` entry, from the global teacher, on its subset",
    ),
    PhaseSpec(
        name="soft_labels", version="2", inputs=("split", "teacher", "teacher_regional*", "crops"),
        inputs_for=inputs_of("teacher", "teacher_regional*"), outputs=("soft_labels.parquet", "soft_labels.json"),
        **reads("train", "soft_labels"), run=_run_soft_labels, pool="gpu",
        reports=("report.md",) , description="the teachers' combined soft labels on the train split",
    ),
    PhaseSpec(
        name="student", version="2", inputs=("split", "soft_labels", "crops"), inputs_for=inputs_of("soft_labels"),
        outputs=MODEL_OUTPUTS, **reads("train", "student"), run=_run_student, reports=MODEL_REPORTS, pool="gpu",
        description="the small student distilled from the soft labels (KL at T plus CE)",
    ),
    PhaseSpec(
        name="student_no_teacher", version="2", inputs=("split", "crops"), inputs_for=inputs_of(),
        outputs=MODEL_OUTPUTS, **reads("train", "student"), run=_run_student_no_teacher, reports=MODEL_REPORTS,
        pool="gpu",
        description="the same student trained without teachers: what distillation bought",
    ),
    PhaseSpec(
        name="finetune", version="2", inputs=("split", "student", "crops"), inputs_for=inputs_of("student"),
        outputs=MODEL_OUTPUTS, **reads("train", "finetune"), run=_run_finetune, reports=MODEL_REPORTS, pool="gpu",
        description="the distilled student fine-tuned with CE and stronger augmentation",
    ),
    PhaseSpec(
        name="calibration", version="3", inputs=("split", "finetune", "crops"), inputs_for=inputs_of("finetune"),
        outputs=("model.safetensors", "model.json", "thresholds.json", "report.md"),
        **reads("train", "calibration"), run=_run_calibration,
        reports=("report.md", "reliability.png", "gallery_errors.png", "gallery_not_conclusive.png", "thresholds.json"),
        description="temperature scaling on val NLL, ECE/MCE, the threshold table and the 'not conclusive' threshold",
    ),
)
