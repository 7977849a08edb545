"""Per-item phases over Dask: the shards of `pipeline.core.sharding`, submitted through Prefect's
DaskTaskRunner (prefect-dask) from the flow process.

`runtime.task_runner: dask` turns it on: `runtime.cluster_address` (or PIPELINE_DASK_ADDRESS, which
`pipeline up --dask N` gives its workers) joins a running scheduler, else a temporary local cluster of `runtime.dask_workers` processes (one
thread each, dashboard on loopback) lives for the phase. Each shard is a Prefect task run
(`<phase>-shard`) on a Dask worker: it fills the per-item cache and returns a small manifest; the
phase's own task then writes the artifact in the flow process, which alone writes to MLflow. A phase's
source (the crops' detector and its files' hashes) is resolved once here and handed to every shard. Workers on
several machines share the per-item cache through `store.items` (an fsspec URI such as s3://bucket/items,
see `pipeline.core.item_cache`): a shard uploads its entries before it returns. A shard
of a `gpu` phase on a CUDA device asks Dask for `GPU: 1`, so it only lands on workers started with
that resource (`pipeline up --dask` declares the GPUs it sees).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline.core.config import PipelineConfig
from pipeline.core.phases import PhaseNode
from pipeline.core.sharding import RESOLVED, chunks, plan_shards, run_shard
from pipeline.core.store import ArtifactRef
from pipeline_tasks.context import RunInfo, store_for

GPU_RESOURCE = "GPU"


@task(name="shard", task_run_name="{phase}-shard-{index}", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=[2, 10], persist_result=False)
def shard_task(phase: str, index: int, cfg: PipelineConfig, inputs: dict[str, ArtifactRef], run: RunInfo,
               items: list[Any], context: dict[str, Any], resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """One shard: its items computed into the per-item cache; a small manifest back (never arrays).
    `resolved`: the phase's source options the flow process resolved for its id (the detector, the head)."""
    from pipeline.core.workspace import setup_environment

    setup_environment(run.workdir)  # offline settings on a fresh Dask worker
    manifest = run_shard(phase, cfg, inputs, store_for(cfg, run.workdir), items, context,
                         run.options(), {**run.runtime(cfg, phase), RESOLVED: resolved or {}})
    try:
        from distributed import get_worker

        manifest["worker"] = get_worker().address
    except (ImportError, ValueError):
        manifest["worker"] = None
    return {**manifest, "index": index}


def dask_runner(cfg: PipelineConfig):
    """The DaskTaskRunner of the config: join `cluster_address`, or a temporary local cluster."""
    from prefect_dask import DaskTaskRunner

    rt = cfg.runtime
    address = rt.cluster_address or os.environ.get("PIPELINE_DASK_ADDRESS")  # set by `pipeline up --dask N`
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": rt.dask_workers, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"})


def _needs_gpu(node: PhaseNode, cfg: PipelineConfig) -> bool:
    if node.spec.pool != "gpu" or cfg.runtime.device == "cpu":
        return False
    from pipeline.core.device import pick_device

    return pick_device(cfg.runtime.device).startswith("cuda")


def _check_gpu_workers(client: Any) -> None:
    workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
    if not any((w.get("resources") or {}).get(GPU_RESOURCE) for w in workers):
        raise RuntimeError(f"the Dask cluster has no worker with a {GPU_RESOURCE} resource, so the GPU shards would "
                           f"wait forever; start workers with --resources {GPU_RESOURCE}=1 (pipeline up --dask does)")


def shard_node(node: PhaseNode, cfg: PipelineConfig, inputs: dict[str, ArtifactRef], run: RunInfo) -> list[dict[str, Any]]:
    """Compute a sharded phase's missing items over Dask; returns the shards' manifests ([] if nothing to do).

    The artifact is not written here: the phase's task does that next, from the warm per-item cache."""
    if node.spec.sharding is None or cfg.runtime.task_runner != "dask":
        return []
    runtime = run.runtime(cfg, node.name)
    resolved = node.spec.source(cfg, runtime) if node.spec.source is not None else {}  # once, for every shard
    plan = plan_shards(node.name, cfg, inputs, store_for(cfg, run.workdir), run.options(),
                       {**runtime, RESOLVED: resolved}, force=run.force)
    if plan is None or not plan.items:
        return []
    shards = chunks(plan.items, cfg.runtime.shard_items)
    gpu = _needs_gpu(node, cfg)
    with dask_runner(cfg) as runner:
        if gpu:
            _check_gpu_workers(runner.client)
        import dask

        with dask.annotate(resources={GPU_RESOURCE: 1}) if gpu else contextlib.nullcontext():
            futures = [runner.submit(shard_task, parameters={
                "phase": node.name, "index": i, "cfg": cfg, "inputs": inputs, "run": run, "items": items,
                "context": plan.context, RESOLVED: resolved}) for i, items in enumerate(shards)]
        manifests = [f.result() for f in futures]
    workers = sorted({m.get("worker") or m["host"] for m in manifests})
    print(f"{node.name}: {len(plan.items)} items in {len(shards)} shards of <= {cfg.runtime.shard_items} on "
          f"{len(workers)} Dask worker(s) ({', '.join(workers)}); shard seconds "
          f"{', '.join(str(m['seconds']) for m in manifests)}")
    return manifests
