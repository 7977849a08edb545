"""Declaration of the export phase: ONNX + TF.js variants of the calibrated student, each gated."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.phases import PhaseRun, PhaseSpec, register

RUNTIME_KEYS = ("export.browser", "export.tf_python", "export.node_dir", "export.chromium", "export.chromedriver",
                "export.timeout_s")


def model_dir_of(calibration_dir: Path) -> Path:
    """The calibrated model dir inside the calibration artifact (its root, or model/)."""
    sub = Path(calibration_dir) / "model"
    return sub if (sub / "model.json").is_file() else Path(calibration_dir)


def _run_export(run: PhaseRun) -> dict[str, Any]:
    from pipeline.export.run import run_export
    from pipeline.training.modeling import read_meta

    model_dir = model_dir_of(run.inputs["calibration"])
    meta = read_meta(model_dir)
    source = {"calibration_artifact": run.inputs["calibration"].name, "split_artifact": run.inputs["split"].name,
              "arch": meta["arch"], "random_init": bool(meta.get("random_init"))}
    return run_export(model_dir, run.inputs["split"] / "split.parquet", Path(run.runtime["dataset_root"]),
                      run.cfg.export, run.out_dir, source)


register(
    PhaseSpec(
        name="export", version="1", inputs=("calibration", "split"), outputs=("export.json", "report.md"),
        sections=("export",), runtime_keys=RUNTIME_KEYS, run=_run_export, pool="gpu",
        reports=("report.md", "export.json"),
        description="ONNX FP32/FP16/INT8 and TF.js FP32/FP16/uint8, each admitted by the torch-equivalence gate",
    ),
)
