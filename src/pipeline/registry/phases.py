"""Declaration of the promotion phase: register the teachers and the calibrated student in the MLflow
registry, gate the student (`registry.promote`), report. It reads the training phases' models and the
export artifact; the training phases themselves are declared in `pipeline.training.phases`. The flow's
training manifest is written by the flow layer from the flow's summary (`pipeline.registry.training_manifest`),
with the data counts this phase leaves in its artifact.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.core.config import PipelineConfig
from pipeline.core.phases import PHASES, PhaseRun, PhaseSpec, register
from pipeline.registry import heads  # noqa: F401  (registers the `embed_head` reference resolver)
from pipeline.registry.training_manifest import DATA_COUNTS_FILE
from pipeline.training import phases as P


def _export_veto(run: PhaseRun) -> str | None:
    """A student with no passing browser variant cannot become champion."""
    from pipeline.registry.export_io import browser_variants

    export = run.inputs.get("export")
    if export is None or browser_variants(export):
        return None
    return "no TF.js variant passed the equivalence gate"


def _run_promotion(run: PhaseRun) -> dict[str, Any]:
    from pipeline.core.tracking import db_lock
    from pipeline.core.workspace import Workspace
    from pipeline.registry.promotion import run_promotion
    from pipeline.registry.gate import majority_of

    student = run.inputs["calibration"]
    data = P.items_for(run, student)
    workdir = Workspace(Path(run.runtime.get("workdir", ".")))
    uri = workdir.tracking_uri(run.cfg)
    teachers = P.teacher_dirs(run)
    trained = list(data.part("train")["key"])
    counts = data.counts()
    with db_lock(uri):  # the registry shares the tracking database
        metrics = run_promotion(student, data.part("test"), trained, run.cfg, uri, run.out_dir, teacher_dirs=teachers,
                                teacher_trained={k: trained for k in teachers}, veto=_export_veto(run),
                                cache_dir=workdir.cache / "registry", device=P.runtime_of(run).device,
                                export_dir=run.inputs.get("export"),
                                majority_class=majority_of(counts.get("train", {}), data.class_names))
    (run.out_dir / DATA_COUNTS_FILE).write_text(json.dumps(counts, indent=2, sort_keys=True) + "\n")
    return metrics


def _promotion_inputs(cfg: PipelineConfig, options: dict[str, Any]) -> tuple[str, ...]:
    extra = ("export",) if "export" in PHASES else ()
    return P.inputs_of("calibration", "teacher", "teacher_regional*", *extra)(cfg, options)


register(
    PhaseSpec(
        name="promotion", version="3", inputs=("split", "calibration", "teacher", "teacher_regional*", "export"),
        inputs_for=_promotion_inputs, outputs=("report.md", "decision.json", DATA_COUNTS_FILE),
        **P.reads("train", "calibration", "promotion", "tracking"), run=_run_promotion,
        reports=("report.md", "decision.json", DATA_COUNTS_FILE), cacheable=False,
        description="register teachers and student; the student becomes champion only if it is not worse",
    ),
)
