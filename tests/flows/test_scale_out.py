"""Scale-out: per-item phases sharded over a real `distributed` cluster give the same artifacts.

The retrieval phases run once in-process through the library (the reference), then the retrieval flow
runs over a 2-process Dask cluster (`task_runner=dask`, `cluster_address`, shards of 19 items: 2 shards of
the 20 photos' crops, 3 of their 57 crops' embeddings; every shard loads its models, so few). Every
artifact must be byte-identical (same ids, same content hashes), and the scheduler's own task stream
must show shard tasks on more than one worker. The library part (plan, shards, merge) is also run
without Prefect against a thread pool.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.core.config import DemoConfig, build_config

SMALL = ["detect.backend=none", "crops.grid_size=128", "crops.target_size=160", "embed.backend=hybrid",
         "embed.batch_size=8",
         "embed_head.adopt=never"]  # the sharded phases and the index alone (the head is judged in test_adopt)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    from pipeline.demo.generator import generate_demo_data

    out = tmp_path_factory.mktemp("scale") / "data"
    generate_demo_data(out, DemoConfig(n_images=20, seed=3, width=224, height=160, bad_examples=False), progress=False)
    return out


def test_chunks_keep_order_and_cover_everything():
    from pipeline.core.sharding import chunks

    assert chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert chunks([], 3) == []
    assert chunks([1, 2], 0) == [[1], [2]]  # a size below 1 means one item per shard


CHAIN = (("audit", ["dataset"]), ("split", ["audit"]), ("crops", ["split"]), ("contexts", ["crops"]),
         ("embeddings", ["crops", "contexts"]), ("index", ["embeddings", "crops", "contexts"]),
         ("validation", ["index", "embeddings", "crops", "split"]))
SHARDED = ("crops", "contexts", "embeddings")  # contexts is not per-item: execute_sharded runs it whole


def _library_chain(data: Path, workdir: Path, sharded: bool) -> tuple[dict[str, tuple[str, str]], dict]:
    """The retrieval phases through the library (no Prefect): ({phase: (artifact id, content hash)}, metrics of
    embeddings); `sharded`: crops and embeddings computed in two shards each on a thread pool first."""
    from pipeline.core.runner import PhaseContext, execute_phase, snapshot_dataset
    from pipeline.core.sharding import execute_sharded, plan_shards
    from pipeline.core.store import ArtifactStore

    cfg = build_config(overrides=SMALL)
    ctx = PhaseContext(store=ArtifactStore(workdir / "artifacts"), progress=False)
    rt = {"dataset_root": str(data), "workdir": str(workdir), "item_cache": str(workdir / "items"), "device": "cpu"}
    opts = {"format": "labelme"}
    r = {"dataset": snapshot_dataset(data, ctx)}
    shards: dict[str, int] = {}
    with ThreadPoolExecutor(2) as pool:
        for name, ins in CHAIN:
            inputs = {k: r[k] for k in ins}
            if sharded and name in SHARDED:  # two shards per sharded phase (each shard loads its models)
                plan = plan_shards(name, cfg, inputs, ctx.store, opts, rt)
                size = max(1, -(-len(plan.items) // 2)) if plan else None
                r[name], manifests = execute_sharded(name, cfg, inputs, ctx, map_fn=pool.map, shard_items=size,
                                                     options=opts, runtime=rt)
                shards[name] = len(manifests)
            else:
                r[name] = execute_phase(name, cfg, inputs, ctx, options=opts, runtime=rt)
    if sharded:
        assert shards == {"crops": 2, "contexts": 0, "embeddings": 2}, shards  # contexts: not a per-item phase
        assert r["embeddings"].metrics["n_embedded"] == 0  # the merge found every vector in the cache
    return {k: (v.artifact_id, v.content_hash) for k, v in r.items()}, dict(r["embeddings"].metrics)


@pytest.fixture(scope="module")
def single_process(small_dataset, tmp_path_factory) -> dict[str, tuple[str, str]]:
    """The in-process reference every sharded run must reproduce byte for byte (computed once)."""
    artifacts, embed_metrics = _library_chain(small_dataset, tmp_path_factory.mktemp("one"), sharded=False)
    assert embed_metrics["n_embedded"] > 0  # computed here, not read from a cache
    return artifacts


@pytest.mark.slow
def test_library_shards_merge_into_the_single_process_artifact(small_dataset, single_process, tmp_path):
    sharded, _ = _library_chain(small_dataset, tmp_path / "many", sharded=True)
    assert sharded == single_process


@pytest.fixture(scope="module")
def dask_cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.get_task_stream()  # installs the scheduler's task-stream plugin: its records start now
        yield cluster, client


@pytest.mark.slow
def test_retrieval_flow_on_two_dask_workers_is_byte_identical(prefect_server, small_dataset, single_process, tmp_path,
                                                              dask_cluster):
    import time

    from pipeline_flows.retrieval import retrieval

    cluster, client = dask_cluster
    cfg = build_config(overrides=SMALL + ["runtime.device=cpu", "runtime.task_runner=dask",
                                          f"runtime.cluster_address={cluster.scheduler_address}",
                                          "runtime.shard_items=19"])
    t0 = time.time()
    spread = retrieval(dataset=str(small_dataset), format="labelme", workdir=str(tmp_path / "dask"), config=cfg)
    # the same artifacts, byte for byte, as the in-process run (ids and content hashes)
    assert set(spread["phases"]) == set(single_process)
    for name, (artifact_id, content_hash) in single_process.items():
        q = spread["phases"][name]
        assert (q["artifact_id"], _content_hash(q["path"])) == (artifact_id, content_hash), name
    # the engine's own records: shard tasks ran on both worker processes
    stream = client.get_task_stream(start=t0)  # only shard tasks are submitted to Dask
    assert len(stream) >= 5, stream  # crops: 2 shards, embeddings: 3
    assert len({rec["worker"] for rec in stream}) > 1, stream
    # the merge read every vector from the cache the shards filled
    assert spread["phases"]["embeddings"]["metrics"]["n_embedded"] == 0


def _content_hash(path: str) -> str:
    import json

    return json.loads((Path(path) / "lineage.json").read_text())["content_hash"]
