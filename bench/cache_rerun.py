"""Cold vs cached wall time of the data-prep flow on the demo data.

    python bench/cache_rerun.py [--n 240] [--workdir DIR]

The in-process Prefect server is started by a warm-up flow first, so neither figure includes it.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=240, help="demo images")
    ap.add_argument("--workdir", type=Path, default=None, help="work dir (default: a fresh temp dir)")
    args = ap.parse_args()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-cache-"))).resolve()

    from pipeline.core.workspace import setup_environment

    setup_environment(workdir)
    from prefect import flow

    from pipeline_flows.data_prep import data_prep
    from pipeline.core.config import DemoConfig, PipelineConfig
    from pipeline.demo.generator import generate_demo_data

    data = workdir / "demo-data"
    if not (data / "dataset.json").is_file():
        generate_demo_data(data, DemoConfig(n_images=args.n), progress=False)

    @flow(name="warm-up")
    def warm_up() -> int:
        return 1

    t = time.perf_counter()
    warm_up()
    print(f"prefect server start (warm-up flow): {time.perf_counter() - t:.1f} s")

    cfg = PipelineConfig()
    t = time.perf_counter()
    cold = data_prep(dataset=str(data), format="labelme", workdir=str(workdir), config=cfg)
    t_cold = time.perf_counter() - t
    t = time.perf_counter()
    cached = data_prep(dataset=str(data), format="labelme", workdir=str(workdir), config=cfg)
    t_cached = time.perf_counter() - t

    n_items = int(cold["phases"]["audit"]["metrics"].get("n_images_ok", 0))
    print(f"demo images: {args.n} (+ bad examples), manifest rows: {n_items}")
    print(f"cold run:   {t_cold:7.2f} s   phases computed: "
          f"{[k for k, v in cold['phases'].items() if not v['cache_hit']]}")
    print(f"cached run: {t_cached:7.2f} s   cache hits: {[k for k, v in cached['phases'].items() if v['cache_hit']]}")
    print(f"ratio cold/cached: {t_cold / t_cached:.1f}x")


if __name__ == "__main__":
    main()
