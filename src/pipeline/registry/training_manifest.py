"""The training manifest: one YAML that says what produced the champion.

`write_training_manifest(summary, cfg, out_path, data_counts=None)` takes a flow's JSON summary
({"flow_run_id", "phases": {name: {"artifact_id", "cache_hit", "metrics", "path", ...}}}) and writes:
git commit and package version, data counts per split and class, per-phase status (computed / cache
hit / failed, artifact id), the student model (arch, classes, temperature, threshold, size in MB), key
hyperparameters of every training section, headline figures (baseline, teachers, students,
calibration, promotion), environment (python, torch, CUDA, device) and the seeds. The flow layer writes it at the end of a flow that ran a promotion, as
runs/<flow_run_id>.training.yaml, with the data counts the promotion phase left in its artifact
(DATA_COUNTS_FILE, `read_data_counts`).
"""
from __future__ import annotations

import json
import math
import platform
import sys
from pathlib import Path
from typing import Any, Mapping

import yaml

TRAINING_SECTIONS = ("train", "teacher", "regional", "soft_labels", "student", "student_no_teacher", "finetune",
                     "calibration", "promotion")
HEADLINE_KEYS = {
    "teacher": ("baseline_val_top1", "baseline_test_top1", "val_top1", "test_top1", "test_top5"),
    "student": ("val_top1", "test_top1", "test_top5"),
    "student_no_teacher": ("val_top1", "test_top1"),
    "finetune": ("val_top1", "test_top1", "test_top5"),
    "calibration": ("ece_before", "ece_after", "mce_before", "mce_after", "temperature", "threshold",
                    "val_precision_at_threshold", "val_coverage_at_threshold", "test_precision_at_threshold",
                    "test_coverage_at_threshold", "test_top1"),
    "promotion": ("promoted", "version", "new_top1", "new_ece", "champion_top1", "champion_ece"),
}
MODEL_PHASES = ("calibration", "finetune", "student")  # where the shipped student is, best first
DATA_COUNTS_FILE = "data_counts.json"  # {split: {class: n}} of the items the promotion phase read


def read_data_counts(path: Path) -> dict[str, dict[str, int]] | None:
    """The data counts a promotion artifact holds (its DATA_COUNTS_FILE); None when it has none."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def _clean(v: Any) -> Any:
    """Plain YAML types: NaN -> None, floats rounded, str subclasses (torch's version) -> str."""
    if isinstance(v, str):
        return str(v)
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else round(v, 6)
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _headline_group(phase: str) -> str | None:
    if phase in HEADLINE_KEYS:
        return phase
    return "teacher" if phase.startswith("teacher_") else None


def _phases(summary: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    status, figures = {}, {}
    for name, p in (summary.get("phases") or {}).items():
        state = p.get("status") or ("failed" if p.get("error") else "cache hit" if p.get("cache_hit") else "computed")
        status[name] = {"status": state, "artifact_id": p.get("artifact_id")}
        group = _headline_group(name)
        if group:
            metrics = p.get("metrics") or {}
            figures[name] = {k: metrics[k] for k in HEADLINE_KEYS[group] if k in metrics}
    return status, figures


def _model(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The shipped model: of this run's model phases, else of the ones its promotion read (`model_inputs`: a
    run of the promotion phase alone)."""
    phases = {**(summary.get("model_inputs") or {}), **(summary.get("phases") or {})}
    for phase in MODEL_PHASES:
        path = (phases.get(phase) or {}).get("path")
        if path and (Path(path) / "model.json").is_file():
            meta = json.loads((Path(path) / "model.json").read_text())
            weights = Path(path) / "model.safetensors"
            return {"phase": phase, "artifact_id": phases[phase].get("artifact_id"), "arch": meta.get("arch"),
                    "class_names": meta.get("class_names"), "image_size": meta.get("image_size"),
                    "temperature": meta.get("temperature"), "threshold": meta.get("threshold"),
                    "random_init": meta.get("random_init"), "weights_source": meta.get("weights_source"),
                    "size_mb": round(weights.stat().st_size / 2**20, 3) if weights.is_file() else None}
    return None


def _environment(cfg: Any, summary: Mapping[str, Any]) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "device": (summary.get("runtime") or {}).get("device") or cfg.runtime.device}
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch  # noqa: F811 - the manifest is written after training, torch is installed
        except ImportError:
            torch = None
    if torch is not None:
        env.update(torch=torch.__version__, cuda=torch.version.cuda,
                   cuda_available=bool(torch.cuda.is_available()),
                   gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    return env


def training_manifest(summary: Mapping[str, Any], cfg: Any, data_counts: Mapping[str, Any] | None = None) -> dict:
    from pipeline.core.store import code_version

    status, figures = _phases(summary)
    sections = {s: getattr(cfg, s).model_dump(mode="json") for s in TRAINING_SECTIONS if hasattr(cfg, s)}
    seeds = {"train": getattr(getattr(cfg, "train", None), "seed", None), "split": cfg.split.seed}
    return _clean({
        "flow_run_id": summary.get("flow_run_id"), "mlflow_run_id": summary.get("mlflow_run_id"),
        "code": code_version(), "data": {"counts": data_counts or summary.get("data_counts")},
        "phases": status, "model": _model(summary), "hyperparameters": sections, "figures": figures,
        "environment": _environment(cfg, summary), "seed": seeds,
    })


def write_training_manifest(summary: Mapping[str, Any], cfg: Any, out_path: Path,
                            data_counts: Mapping[str, Any] | None = None) -> Path:
    """Write the manifest YAML (see the module docstring) to out_path; returns out_path."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(yaml.safe_dump(training_manifest(summary, cfg, data_counts), sort_keys=False))
    return out_path
