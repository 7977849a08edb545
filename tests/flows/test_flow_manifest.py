"""The training manifest is the flow layer's: `end_flow` writes runs/<flow_run_id>.training.yaml from the
flow's summary when the flow ran a promotion; the promotion phase only leaves its data counts."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from pipeline.core.config import build_config
from pipeline.core.runner import PhaseResult
from pipeline.registry.training_manifest import DATA_COUNTS_FILE


def _result(phase: str, path: Path, metrics: dict[str, float], cache_hit: bool = False) -> PhaseResult:
    path.mkdir(parents=True, exist_ok=True)
    return PhaseResult(phase=phase, artifact_id=f"{phase}-id", uri=str(path), content_hash="h", cache_hit=cache_hit,
                       metrics=metrics, path=str(path))


def test_end_flow_writes_the_manifest_of_a_flow_that_ran_a_promotion(tmp_path):
    from pipeline.registry import phases as registry_phases
    from pipeline_tasks.context import RunInfo
    from pipeline_tasks.flowrun import end_flow

    cfg = build_config({}, ["tracking.enabled=false", "runtime.device=cpu"])
    run = RunInfo(workdir=str(tmp_path / "w"))
    teacher = _result("teacher", tmp_path / "a" / "teacher", {"test_top1": 0.8}, cache_hit=True)
    calibration = _result("calibration", tmp_path / "a" / "calibration", {"ece_after": 0.05, "threshold": 0.5})
    (Path(calibration.path) / "model.json").write_text(json.dumps({"arch": "tiny", "class_names": ["a", "b"]}))
    promotion = _result("promotion", tmp_path / "a" / "promotion", {"promoted": 1.0, "version": 2.0})
    counts = {"train": {"a": 3, "b": 2}, "test": {"a": 1}}
    (Path(promotion.path) / DATA_COUNTS_FILE).write_text(json.dumps(counts))

    assert end_flow(cfg, run, {"teacher": teacher}).get("training_manifest") is None  # no promotion: no manifest
    summary = end_flow(cfg, run, {"teacher": teacher, "calibration": calibration, "promotion": promotion})
    path = tmp_path / "w" / "runs" / "local.training.yaml"
    assert summary["training_manifest"] == str(path)
    assert summary["phases"]["promotion"]["info"]["training_manifest"] == str(path)
    doc = yaml.safe_load(path.read_text())
    assert doc["flow_run_id"] == "local" and doc["data"]["counts"] == counts
    assert doc["phases"]["teacher"] == {"status": "cache hit", "artifact_id": "teacher-id"}
    assert doc["model"]["phase"] == "calibration" and doc["model"]["arch"] == "tiny"
    assert doc["figures"]["promotion"] == {"promoted": 1.0, "version": 2.0}
    assert doc["environment"]["device"] == "cpu" and "teacher" in doc["hyperparameters"]
    # the phase declares its data counts, and nothing of the manifest, as its outputs and reports
    spec = registry_phases.PHASES["promotion"]
    assert DATA_COUNTS_FILE in spec.outputs and not any("manifest" in r for r in spec.reports)
