"""Declaration of the export phase (ONNX + TF.js variants of the calibrated student, gated)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.phases import PhaseRun, PhaseSpec, register

RUNTIME_KEYS = ("export.browser", "export.tf_python", "export.node_dir", "export.chromium", "export.chromedriver",
                "export.timeout_s")
CROP_FORMATS = ("labelme", "coco")  # as training: the formats whose default source is crops


def model_dir_of(calibration_dir: Path) -> Path:
    """The calibrated model dir inside the calibration artifact (its root, or model/)."""
    sub = Path(calibration_dir) / "model"
    return sub if (sub / "model.json").is_file() else Path(calibration_dir)


def _uses_crops(cfg: Any, options: dict[str, Any]) -> bool:
    if cfg.train.source != "auto":
        return cfg.train.source == "crops"
    return options.get("format") in CROP_FORMATS


def _inputs(cfg: Any, options: dict[str, Any]) -> tuple[str, ...]:
    return ("calibration", "split", *(("crops",) if _uses_crops(cfg, options) else ()))


def _item_params(cfg: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The training keys that select a crops model's items (the gate and calibration inputs)."""
    t = cfg.train
    return {"items": {"source": t.source, "target": t.target, "max_items": t.max_items, "seed": t.seed}}


def items_for(meta: dict[str, Any], split_path: Path, crops_dir: Path | None, train_cfg: Any,
              dataset_root: Path | None = None) -> Any:
    """The crops a crops-trained model was trained and tested on (inputs.ItemSets), None for a
    whole-image model: the training side's own item builder with the model's class list."""
    from pipeline.retrieval.crop_rule import rule_of
    from pipeline.export.inputs import ItemSets
    from pipeline.training.items import build_items

    if rule_of(meta) is None:
        return None
    if crops_dir is None:
        raise ValueError("the model was trained on crops: its export needs the crops artifact")
    data = build_items(Path(split_path), train_cfg, dataset_root, Path(crops_dir), class_names=list(meta["class_names"]))
    return ItemSets({s: [(str(k), str(p), str(t)) for k, p, t in zip(f["key"], f["path"], f["target"])]
                     for s, f in ((s, data.part(s)) for s in ("train", "val", "test"))})


def _run_export(run: PhaseRun) -> dict[str, Any]:
    from pipeline.export.variants import run_export
    from pipeline.models.classifier import read_meta

    model_dir = model_dir_of(run.inputs["calibration"])
    meta = read_meta(model_dir)
    source = {"calibration_artifact": run.inputs["calibration"].name, "split_artifact": run.inputs["split"].name,
              "arch": meta["arch"], "random_init": bool(meta.get("random_init"))}
    split, root = run.inputs["split"] / "split.parquet", Path(run.runtime["dataset_root"])
    return run_export(model_dir, split, root, run.cfg.export, run.out_dir, source,
                      items=items_for(meta, split, run.inputs.get("crops"), run.cfg.train, root))


register(
    PhaseSpec(
        name="export", version="4", inputs=("calibration", "split", "crops"), inputs_for=_inputs,
        outputs=("export.json", "report.md"), sections=("export",), runtime_keys=RUNTIME_KEYS, run=_run_export,
        extra_params=_item_params, pool="gpu", reports=("report.md", "export.json"),
        description="ONNX FP32/FP16/INT8 and TF.js FP32/FP16/uint8, each admitted by the torch-equivalence gate "
                    "on inputs like the model's training data (crops for a crops-trained model)",
    ),
)
