"""Placement: a `gpu` phase runs as its own flow run of the `phase/gpu` deployment on the `gpu` pool.

When the flow talks to a Prefect server that has the `phase/gpu` deployment and an online worker in
its pool, each phase declared `pool="gpu"` is dispatched with `run_deployment` (a subflow in the UI),
parameters = the phase name, the config, the input artifact refs and the run info. The child writes
the artifact to the store; the parent reads it back by id, so no shared result storage is needed.

- A cache hit is decided first (the store holds the complete artifact): no GPU flow run at all.
- Idempotency key = phase + artifact id + store: a retried parent re-attaches to its child; a child
  that failed, crashed or was cancelled (or completed without the artifact) is rescheduled once.
- The parent waits for the child's final state and fails with its message.
- One GPU job per host comes from the infrastructure: the `gpu` worker runs with `--limit 1`.
Without a server, that deployment or an online worker, the phase runs in-process as before.
"""
from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from pipeline.core.config import PipelineConfig
from pipeline.core.phases import PhaseNode
from pipeline.core.runner import PhaseResult, phase_id, resolve_options, split_metrics
from pipeline.core.store import ArtifactRef
from pipeline_tasks.context import RunInfo, store_for

PHASE_DEPLOYMENT = "phase/gpu"
POLL_SECONDS = 2.0


class ChildPhaseFailed(RuntimeError):
    """The dispatched phase flow run ended in a non-completed state."""


def gpu_deployment(pool: str = "gpu") -> Any | None:
    """The `phase/gpu` deployment when a server has it and its pool has an online worker, else None."""
    if not os.environ.get("PREFECT_API_URL"):
        return None  # an ephemeral server has no workers
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus

    try:
        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name(PHASE_DEPLOYMENT)
            workers = client.read_workers_for_work_pool(
                dep.work_pool_name or pool, worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"])))
    except Exception:  # no such deployment, pool or server: run in-process
        return None
    return dep if workers else None


def full_artifact_id(node: PhaseNode, cfg: PipelineConfig, inputs: dict[str, ArtifactRef], run: RunInfo) -> str:
    """The artifact id the phase will have (with its source options: the detector it will pick)."""
    options = resolve_options(node.spec, cfg, run.options(), {**run.runtime(cfg, node.name), "progress": False})
    return phase_id(node.name, cfg, {k: r.artifact_id for k, r in inputs.items()}, options)[0]


def _idempotency_key(node: PhaseNode, aid: str, run: RunInfo, cfg: PipelineConfig) -> str:
    store = hashlib.sha256(store_for(cfg, run.workdir).uri.encode()).hexdigest()[:12]
    key = f"{node.name}-{aid}-{store}"
    if run.force or not node.spec.cacheable:  # always recomputed: one child per parent flow run
        from prefect.runtime import flow_run

        key += f"-{flow_run.id}"
    return key


def _wait(client: Any, flow_run_id: Any) -> Any:
    while True:
        fr = client.read_flow_run(flow_run_id)
        if fr.state is not None and fr.state.is_final():
            return fr
        time.sleep(POLL_SECONDS)


def dispatch(node: PhaseNode, cfg: PipelineConfig, inputs: dict[str, ArtifactRef], run: RunInfo, aid: str) -> PhaseResult:
    """Run `node` as a child flow run of the `phase/gpu` deployment and return its artifact from the store."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Scheduled

    store = store_for(cfg, run.workdir)
    params = {"phase": node.name, "config": cfg.model_dump(mode="json"),
              "inputs": {k: r.model_dump(mode="json") for k, r in inputs.items()}, "run": run.model_dump(mode="json")}
    child = run_deployment(PHASE_DEPLOYMENT, parameters=params, timeout=0, as_subflow=True,
                           idempotency_key=_idempotency_key(node, aid, run, cfg))
    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(child.id)
        stale = fr.state is not None and fr.state.is_final() and not (
            fr.state.is_completed() and store.is_complete(node.name, aid))
        if stale:  # a retried parent found its earlier child failed (or its artifact gone): run it again
            print(f"{node.name}: re-running child flow run {fr.name} ({fr.state.name})")
            client.set_flow_run_state(fr.id, Scheduled(message="re-run by its retried parent"), force=True)
        print(f"{node.name}: dispatched to deployment {PHASE_DEPLOYMENT} as flow run {fr.name} ({fr.id})")
        fr = _wait(client, fr.id)
    if not fr.state.is_completed():
        raise ChildPhaseFailed(f"phase {node.name} failed in flow run {fr.name} ({fr.id}) on pool "
                               f"{fr.work_pool_name}: {fr.state.name}: {fr.state.message}")
    if not store.is_complete(node.name, aid):
        raise ChildPhaseFailed(f"flow run {fr.name} completed but artifact {node.name}/{aid} is not in {store.uri} "
                               f"(the child computes the id itself: a source it resolves otherwise on its machine, "
                               f"such as other detector weights, gives another id)")
    lineage = store.read_lineage(node.name, aid)
    metrics, info = split_metrics({**lineage.get("metrics", {}), **lineage.get("info", {})})
    ref = store.ref(node.name, aid)
    path = str(store.local_path(ref)) if store.is_local else ref.uri
    return PhaseResult(**ref.model_dump(), metrics=metrics, info={**info, "flow_run": str(fr.id)},
                       mlflow_run_id=lineage.get("mlflow_run_id"), path=path)
