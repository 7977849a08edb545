"""Kill anywhere, resume to the same bytes: a sample of the per-phase table bench/faults.py prints for
every phase (tests/fault_harness.py says what each column checks).

- the data-prep flow SIGKILLed at a seeded random point inside `audit` (bounded decode workers running)
  resumes to byte-identical artifacts with nothing staged, half-written or locked left and no process
  of the killed run alive;
- promotion (register teachers and student, gate, alias, history) SIGKILLed at seeded random points
  leaves a consistent registry each time, and its re-run ends in the registry state and decision of an
  uninterrupted one;
- training fault injection is a runtime option only: the environment cannot change what a phase does.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fault_harness import Setup, kill_and_resume, promote, reference_in_process

HERE = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from pipeline.core.config import DemoConfig
    from pipeline.demo.generator import generate_demo_data

    out = tmp_path_factory.mktemp("faults") / "data"
    generate_demo_data(out, DemoConfig(n_images=20, seed=2, width=192, height=144), progress=False)
    return out


@pytest.mark.slow
def test_killing_the_audit_anywhere_resumes_to_the_same_bytes(prefect_server, tiny_dataset, tmp_path):
    from prefect.settings import PREFECT_API_URL

    setup = Setup("data-prep", tiny_dataset, env={"PREFECT_API_URL": PREFECT_API_URL.value()}, timeout=600)
    ref = reference_in_process(setup, tmp_path / "reference")
    assert list(ref.phases) == ["dataset", "audit", "split"] and ref.counts["audit"] > 20
    row = kill_and_resume(setup, ref, "audit", tmp_path / "killed", np.random.default_rng(20), resume_in_process=True,
                          max_delay_s=0.0)  # a delayed kill near the audit's end could land after it finished
    assert row.killed and row.in_phase, row
    assert row.ok, row.problems


def _spec(tmp: Path, models: dict, work: Path, kill_at: int = 0) -> dict:
    return {**{k: str(v) for k, v in models.items()}, "db": str(work / "mlflow.db"), "out": str(work / "out"),
            "cache": str(work / "cache"), "root": str(tmp), "kill_at": kill_at}


def _promote_child(spec: dict) -> subprocess.CompletedProcess:
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); from fault_harness import promote_child; promote_child()"
    return subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, timeout=900)


def _registry(db: Path) -> dict:
    from fault_harness import registry_state
    from pipeline.registry.verify import VerifyReport, check_registry

    report = VerifyReport()
    check_registry(f"sqlite:///{db}", report, db.parent / "verify-cache")
    assert not report.findings, [f.__dict__ for f in report.findings]
    return registry_state(db.parent)


@pytest.mark.slow
def test_promotion_is_safe_to_kill_at_any_point(tmp_path):
    """The uninterrupted promotion runs here; a child process is SIGKILLed at a seeded random file-system
    event inside it, and a re-run completes it: same registry state, same decision figures."""
    from fault_harness import counting
    from training_fixtures import colour_images, tiny_model_dir

    train = colour_images(tmp_path / "train", 6, seed=0, prefix="tr")
    test = colour_images(tmp_path / "test", 8, seed=2, prefix="te")
    (tmp_path / "items.json").write_text(json.dumps({"train": train, "test": test}))
    models = {"items": tmp_path / "items.json", "teacher": tiny_model_dir(tmp_path / "teacher", train, seed=1),
              "student": tiny_model_dir(tmp_path / "student", train)}
    ref = tmp_path / "ref"
    ref.mkdir()
    with counting((os.path.realpath(tmp_path),), "promotion") as counts:
        expected = promote(_spec(tmp_path, models, ref))
    want = _registry(ref / "mlflow.db")
    assert want["vehicle-damage-student"]["aliases"] and all(not s["pending"] for s in want.values())

    kill_at = int(np.random.default_rng(7).integers(5, counts["promotion"]))
    work = tmp_path / "killed"
    work.mkdir()
    killed = _promote_child(_spec(tmp_path, models, work, kill_at))
    assert killed.returncode == -signal.SIGKILL, (kill_at, counts, killed.stdout, killed.stderr[-2000:])
    _registry(work / "mlflow.db")  # consistent right after the kill: no version without files, no bad alias
    got = promote(_spec(tmp_path, models, work))  # the re-run (here: its imports are paid)
    assert _registry(work / "mlflow.db") == want, (kill_at, counts)
    for key in ("promoted", "version", "alias", "compared_items", "new_top1", "new_ece"):
        assert got.get(key) == expected.get(key), (kill_at, key)


def test_training_fault_injection_is_a_runtime_option_never_the_environment(monkeypatch):
    from pipeline.core.config import PipelineConfig
    from pipeline.core.phases import PhaseRun
    from pipeline.training.phases import runtime_of as _runtime

    def runtime_of(options: dict):
        run = PhaseRun(inputs={}, cfg=PipelineConfig(), params={}, out_dir=Path("."), runtime=options)
        return _runtime(run).fail_after_steps

    monkeypatch.setenv("PIPELINE_FAIL_AFTER_STEPS", "3")
    assert runtime_of({}) is None  # a user's environment changes nothing
    assert runtime_of({"fail_after_steps": 4}) == 4  # the test-only runtime option
    src = (HERE.parent / "src" / "pipeline").rglob("*.py")
    assert not [p for p in src if "PIPELINE_FAIL_AFTER_STEPS" in p.read_text()]
