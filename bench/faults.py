"""Kill every phase of the factory flow at a seeded random point, resume, and print the table.

    .venv/bin/python bench/faults.py [--flow factory] [--n 40] [--phases crops teacher ...] [--seed 0]

For each phase (audit through promotion and the monitor phases, every regional teacher and shard included):
the flow process is SIGKILLed at a random file-system event inside that phase (tests/fault_driver.py), the
flow is run again, and the re-run is checked against an uninterrupted reference run: resumed, every
artifact byte-identical (models: identical weights), nothing half-written, staged or locked left, the
registry consistent (tests/fault_harness.py says exactly what is checked). Small on purpose: demo data of
`--n` images at 192x144, one epoch at 32 px, one ONNX and one TF.js variant. One Prefect server serves
every run. Exit code 1 when a row fails.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

TINY = """\
split: {ratios: [0.6, 0.2, 0.2], seed: 42}
runtime: {task_retries: 0}
detect: {backend: none}
crops: {grid_size: 128, target_size: 96}
embed: {backend: hybrid, batch_size: 32}
train: {epochs: 1, image_size: 32, max_items: 60, batch_size: 16, eval_batch_size: 64, seed: 0}
teacher: {warmup_epochs: 0, mixup_alpha: 0.0, cutmix_alpha: 0.0, patience: null}
regional:
  epochs: 1
  warmup_epochs: 0
  mixup_alpha: 0.0
  cutmix_alpha: 0.0
  patience: null
  teachers:
  - {name: frontal, column: zone_area, values: [frontal]}
student: {epochs: 1, warmup_epochs: 0, patience: null}
finetune: {epochs: 1, patience: null}
export: {onnx_variants: [fp32], tfjs_variants: [fp16], n_inputs: 16, n_calibration: 8, browser: false}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flow", default="factory")
    ap.add_argument("--n", type=int, default=40, help="demo images")
    ap.add_argument("--phases", nargs="*", help="only these phases (default: every phase of the flow)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-delay", type=float, default=0.02, help="the kill lands up to this many seconds after its "
                    "event (0: at the event; a late kill in a quick phase may otherwise land after it finished)")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    ap.add_argument("--recheck", action="store_true", help="only re-check the work dirs of an earlier run in --out "
                    "(its rows.json) with the current harness: identical, clean, registry")
    args = ap.parse_args()
    if args.recheck:
        return recheck(args.out)

    import numpy as np
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from fault_harness import Setup, kill_and_resume, reference, table
    from pipeline.core.config import DemoConfig
    from pipeline.demo.generator import generate_demo_data

    base = args.out or Path(tempfile.mkdtemp(prefix="faults-"))
    base.mkdir(parents=True, exist_ok=True)
    from pipeline.core.workspace import setup_environment

    setup_environment(base / "bench-home")  # this process's Prefect server: offline and quiet
    data = base / "data"
    if not data.is_dir():
        generate_demo_data(data, DemoConfig(n_images=args.n, seed=1, width=192, height=144), progress=False)
    (base / "tiny.yaml").write_text(TINY)
    with prefect_test_harness(server_startup_timeout=180):
        setup = Setup(args.flow, data, base / "tiny.yaml", args.set, env={"PREFECT_API_URL": PREFECT_API_URL.value()})
        t0 = time.monotonic()
        ref = reference(setup, base / "reference")
        print(f"reference run: {len(ref.phases)} phases, {ref.seconds:.0f} s; events per phase: {ref.counts}",
              flush=True)
        rng = np.random.default_rng(args.seed)
        rows = []
        for phase in args.phases or list(ref.phases):
            row = kill_and_resume(setup, ref, phase, base / f"kill-{phase}", rng, max_delay_s=args.max_delay)
            rows.append(row)
            (base / "rows.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
            print(f"{phase:<22} {'ok' if row.ok else 'FAILED'}  killed at event {row.kill_at}/{row.events}, "
                  f"{row.seconds:.0f} s" + "".join(f"\n    {p}" for p in row.problems[:8]), flush=True)
    print()
    print(table(rows))
    print(f"\n{sum(r.ok for r in rows)}/{len(rows)} phases killed inside the phase, resumed to identical bytes with "
          f"a consistent registry; {time.monotonic() - t0:.0f} s in all; work folder {base}")
    return 0 if all(r.ok for r in rows) else 1


def recheck(base: Path) -> int:
    """Recompute the identical / clean / registry columns of an earlier run from its work dirs."""
    from fault_harness import Reference, Row, compare, leftovers, registry_differences, registry_state, table
    from pipeline.registry.verify import VerifyReport, check_registry

    rows = [Row(**r) for r in json.loads((base / "rows.json").read_text())]
    ref_rec = max((base / "reference" / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    phases = {k: v["artifact_id"] for k, v in json.loads(ref_rec.read_text())["phases"].items()}
    ref = Reference(base / "reference", phases, {}, registry_state(base / "reference"), 0.0)
    for row in rows:
        work = base / f"kill-{row.phase}"
        diffs, left = compare(ref, work), leftovers(work)
        report = VerifyReport()
        check_registry(f"sqlite:///{work / 'mlflow.db'}", report, work / ".cache")
        state = registry_state(work)
        reg = [f"{f.path}: {f.problem}" for f in report.findings]
        reg += registry_differences(ref, state, row.phase)
        row.identical, row.clean, row.registry = not diffs, not left, not reg
        row.problems = [p for p in row.problems if p.startswith(("not killed", "re-run", "process"))] + diffs + left + reg
        print(f"{row.phase:<22} {'ok' if row.ok else 'FAILED'}" + "".join(f"\n    {p}" for p in row.problems[:8]))
    print()
    print(table(rows))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
