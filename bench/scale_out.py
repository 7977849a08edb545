"""Embeddings throughput in-process vs over 1 and 2 Dask workers on the same crops, and the per-shard overhead.

    .venv/bin/python bench/scale_out.py [--images 40] [--shard-items 64]

Builds crops once (demo data, whole-image detector), then embeds them with cold per-item caches:
(a) `execute_phase` in this process, (b) `execute_sharded` mapping shards over a LocalCluster of 1 and
(c) 2 worker processes (one thread each). Checks the three artifacts are byte-identical, prints
crops/s, and the round trip of a no-op Dask task vs a no-op call (the per-shard overhead floor;
each real shard also loads the models once).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.core.config import DemoConfig, build_config
from pipeline.core.runner import PhaseContext, execute_phase, snapshot_dataset
from pipeline.core.sharding import execute_sharded
from pipeline.core.store import ArtifactStore
from pipeline.demo.generator import generate_demo_data

SMALL = ["detect.backend=none", "crops.grid_size=128", "crops.target_size=160", "embed.backend=hybrid"]


def noop(x: int) -> int:
    return x


def _inputs(data: Path, work: Path, cfg):
    ctx = PhaseContext(store=ArtifactStore(work / "artifacts"), progress=False)
    rt = {"dataset_root": str(data), "workdir": str(work), "item_cache": str(work / "items"), "device": "cpu"}
    opts = {"format": "labelme"}
    r = {"dataset": snapshot_dataset(data, ctx)}
    for name, ins in (("audit", ["dataset"]), ("split", ["audit"]), ("crops", ["split"]), ("contexts", ["crops"])):
        r[name] = execute_phase(name, cfg, {k: r[k] for k in ins}, ctx, options=opts, runtime=rt)
    return ctx, rt, opts, {"crops": r["crops"], "contexts": r["contexts"]}


def _embed(ctx, rt, opts, inputs, cfg, work: Path, map_fn=None, shard_items=64):
    import shutil

    shutil.rmtree(work / "items" / "embeddings", ignore_errors=True)  # a cold per-item cache each time
    t0 = time.perf_counter()
    if map_fn is None:
        res = execute_phase("embeddings", cfg, inputs, ctx, options=opts, runtime=rt, force=True)
    else:
        res, _ = execute_sharded("embeddings", cfg, inputs, ctx, map_fn=map_fn, shard_items=shard_items,
                                 options=opts, runtime=rt, force=True)
    return time.perf_counter() - t0, res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--shard-items", type=int, default=64)
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    tmp = Path(tempfile.mkdtemp(prefix="scale-out-"))
    data = tmp / "data"
    generate_demo_data(data, DemoConfig(n_images=args.images, seed=1, width=256, height=192, bad_examples=False),
                       progress=False)
    cfg = build_config(overrides=SMALL)
    ctx, rt, opts, inputs = _inputs(data, tmp / "w", cfg)
    rows = {}
    secs, ref = _embed(ctx, rt, opts, inputs, cfg, tmp / "w")
    n = int(ref.metrics["n_total"])
    rows["in-process"] = (secs, ref.content_hash)
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster, Client(cluster) as client:
            def map_fn(fn, shards):
                return client.gather(client.map(fn, shards, pure=False))

            secs, res = _embed(ctx, rt, opts, inputs, cfg, tmp / "w", map_fn, args.shard_items)
            rows[f"dask x{workers}"] = (secs, res.content_hash)
            if workers == 2:
                lat = []
                for i in range(30):
                    t0 = time.perf_counter()
                    client.submit(noop, i, pure=False).result()
                    lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(1000):
        noop(i)
    local = (time.perf_counter() - t0) / 1000
    print(f"{n} crops, shards of {args.shard_items}")
    print("| run | seconds | crops/s | same bytes |\n|---|---|---|---|")
    base = rows["in-process"][1]
    for name, (secs, h) in rows.items():
        print(f"| {name} | {secs:.1f} | {n / secs:.1f} | {h == base} |")
    print(f"no-op task round trip on Dask: median {statistics.median(lat) * 1000:.1f} ms "
          f"(in-process call {local * 1e6:.2f} us)")


if __name__ == "__main__":
    main()
