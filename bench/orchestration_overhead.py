"""Wall time of data-prep on the demo data: plain library calls vs the Prefect flow with tracking.

    python bench/orchestration_overhead.py [--n 240] [--repeat 3]

Both run cold, each in a fresh work dir, so both do the same work. The in-process Prefect server is
started by a warm-up flow first and is not counted.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=240, help="demo images")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each variant (median reported)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-overhead-"))

    from pipeline.core.workspace import setup_environment

    setup_environment(base / "env")
    from prefect import flow

    from pipeline_flows.data_prep import data_prep
    from pipeline.core.config import DemoConfig, PipelineConfig
    from pipeline.demo.generator import generate_demo_data
    from pipeline.core.runner import PhaseContext, execute_phase, snapshot_dataset
    from pipeline.core.store import ArtifactStore

    data = base / "demo-data"
    generate_demo_data(data, DemoConfig(n_images=args.n), progress=False)
    cfg = PipelineConfig()

    def plain(workdir: Path) -> None:
        ctx = PhaseContext(store=ArtifactStore(workdir / "artifacts"), progress=False)
        ds = snapshot_dataset(data, ctx)
        audit = execute_phase("audit", cfg, {"dataset": ds}, ctx, options={"format": "labelme"},
                              runtime={"dataset_root": str(data), "progress": False})
        execute_phase("split", cfg, {"audit": audit}, ctx, options={"format": "labelme"})

    def orchestrated(workdir: Path) -> None:
        data_prep(dataset=str(data), format="labelme", workdir=str(workdir), config=cfg)

    @flow(name="warm-up")
    def warm_up() -> int:
        return 1

    warm_up()
    times: dict[str, list[float]] = {"plain library": [], "prefect flow + mlflow": []}
    for i in range(args.repeat):
        for name, fn in (("plain library", plain), ("prefect flow + mlflow", orchestrated)):
            t = time.perf_counter()
            fn(base / f"{name.split()[0]}-{i}")
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:<24} median {med[k]:6.2f} s   runs {', '.join(f'{x:.2f}' for x in v)}")
    overhead = med["prefect flow + mlflow"] - med["plain library"]
    print(f"overhead: {overhead:+.2f} s per run, ratio {med['prefect flow + mlflow'] / med['plain library']:.2f}x")


if __name__ == "__main__":
    main()
