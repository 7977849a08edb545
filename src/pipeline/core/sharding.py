"""Per-item phases split into shards, without any engine: the plan, one shard's work, and a sharded run.

A phase declares `sharding=Sharding(plan, work)` (see below). The task layer (or a benchmark, or a
test) asks `plan_shards` which items are still to compute, cuts them into shards of
`runtime.shard_items` (`chunks`), runs `run_shard` for each shard wherever it likes (Dask workers,
threads, here), and then calls `execute_phase` as usual: every item is now in the phase's per-item
cache, so the phase's own run writes the artifact, byte-identical to a single-process run. Shards
return small manifests; only the flow process writes the artifact and tracks it.

The per-item cache is what shards share: a directory every worker reaches (one host, or a shared
file system), or an fsspec URI (`store.items: s3://...`, `pipeline.core.item_cache`) that shards on
several machines fill through their local mirrors (`runtime.item_mirror`). A phase without a per-item
cache (`runtime.item_cache` unset) is never sharded.
"""
from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from pipeline.core.item_cache import scratch_root
from pipeline.core.store import ArtifactRef, ArtifactStore

if TYPE_CHECKING:  # the phase declarations import this module: the phases and the runner only lazily
    from pipeline.core.config import PipelineConfig
    from pipeline.core.phases import PhaseRun
    from pipeline.core.runner import PhaseContext, PhaseResult

# runtime key of the source options (`PhaseSpec.source`: the detector and its files' hashes, a registry head)
# the flow process resolves once for a phase's id and hands to its shards: a source hook returns them as they
# are instead of resolving again (tasks/shards.py sets it, the stages' source hooks read it)
RESOLVED = "resolved"


@dataclass(frozen=True)
class Sharding:
    """How a per-item phase splits its work into shards (no engine here: the caller maps `work`).

    `plan(run)` -> (items, context): the items still to compute, in item order (small JSON values such as
    row numbers), and what every shard needs besides its items (small JSON). `work(run, items, context)`
    computes those items into the phase's per-item cache (`run.out_dir` is a scratch directory) and returns
    a small manifest, never arrays. The phase's own `run` then finds every item in the cache and writes the
    artifact: the same bytes as a single-process run, whatever the shards were."""

    plan: Callable[[PhaseRun], tuple[list[Any], dict[str, Any]]]
    work: Callable[[PhaseRun, list[Any], dict[str, Any]], dict[str, Any]]


@dataclass
class ShardPlan:
    phase: str
    artifact_id: str
    items: list[Any]  # the items still to compute, in item order
    context: dict[str, Any]  # what every shard gets besides its items


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    """`items` in consecutive shards of at most `size` (order kept)."""
    size = max(1, int(size))
    return [items[i:i + size] for i in range(0, len(items), size)]


def _phase_run(name: str, cfg: PipelineConfig, inputs: dict[str, ArtifactRef], store: ArtifactStore,
               options: dict[str, Any] | None, runtime: dict[str, Any], out_dir: Path) -> tuple[PhaseRun, str]:
    from pipeline.core.phases import PhaseRun
    from pipeline.core.runner import node_for, resolve_options

    node = node_for(name, cfg, options)
    spec = node.spec
    opts = resolve_options(spec, cfg, options or {}, runtime)
    params = spec.params(cfg, opts, node.instance or None)
    aid = spec.artifact_id(cfg, [r.artifact_id for r in inputs.values()], opts, node.instance or None)
    run = PhaseRun(inputs={k: store.local_path(r) for k, r in inputs.items()}, cfg=cfg, params=params,
                   out_dir=out_dir, runtime=runtime, store=store, instance=dict(node.instance))
    return run, aid


def plan_shards(name: str, cfg: PipelineConfig, inputs: dict[str, ArtifactRef], store: ArtifactStore,
                options: dict[str, Any] | None = None, runtime: dict[str, Any] | None = None,
                force: bool = False) -> ShardPlan | None:
    """The shard plan of phase `name`, or None when it is not sharded: no sharding declared, no per-item
    cache, or its artifact already complete (a cache hit is decided before any shard is cut)."""
    from pipeline.core.runner import node_for

    spec = node_for(name, cfg, options).spec
    runtime = {"progress": False, **(runtime or {})}
    if spec.sharding is None or not runtime.get("item_cache"):
        return None
    run, aid = _phase_run(name, cfg, inputs, store, options, runtime, scratch_root(runtime))
    if spec.cacheable and not force and store.is_complete(name, aid):
        return None
    items, context = spec.sharding.plan(run)
    return ShardPlan(name, aid, list(items), dict(context))


def run_shard(name: str, cfg: PipelineConfig, inputs: dict[str, ArtifactRef], store: ArtifactStore,
              items: list[Any], context: dict[str, Any], options: dict[str, Any] | None = None,
              runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compute one shard's items into the per-item cache; returns its manifest (+ host, pid, seconds)."""
    from pipeline.core.runner import node_for

    runtime = {"progress": False, **(runtime or {})}
    # local, on the file system of the cache (or of a remote cache's mirror): links into it work
    scratch = scratch_root(runtime) / ".scratch" / f"{name}-{uuid.uuid4().hex}"
    scratch.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        run, _ = _phase_run(name, cfg, inputs, store, options, runtime, scratch)
        manifest = node_for(name, cfg, options).spec.sharding.work(run, list(items), dict(context))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {**manifest, "n_items": len(items), "host": socket.gethostname(), "pid": os.getpid(),
            "seconds": round(time.perf_counter() - t0, 3)}


MapFn = Callable[[Callable[[list[Any]], dict[str, Any]], list[list[Any]]], Iterable[dict[str, Any]]]


def execute_sharded(name: str, cfg: PipelineConfig, inputs: dict[str, ArtifactRef], ctx: PhaseContext,
                    map_fn: MapFn | None = None, shard_items: int | None = None,
                    options: dict[str, Any] | None = None, runtime: dict[str, Any] | None = None,
                    force: bool = False) -> tuple[PhaseResult, list[dict[str, Any]]]:
    """`execute_phase` with the items computed shard by shard first (`map_fn(fn, shards)`, default: here,
    one after the other). Returns the result and the shards' manifests."""
    from pipeline.core.runner import execute_phase

    runtime = runtime or {}
    plan = plan_shards(name, cfg, inputs, ctx.store, options, runtime, force)
    manifests: list[dict[str, Any]] = []
    if plan is not None and plan.items:
        size = shard_items or cfg.runtime.shard_items

        def one(items: list[Any]) -> dict[str, Any]:
            return run_shard(name, cfg, inputs, ctx.store, items, plan.context, options, runtime)

        manifests = list((map_fn or map)(one, chunks(plan.items, size)))
    return execute_phase(name, cfg, inputs, ctx, options=options, runtime=runtime, force=force), manifests
