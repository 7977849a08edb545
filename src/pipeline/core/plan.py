"""`pipeline plan`: before anything runs, which phases would be cache hits and which would
recompute, and why (which input, param or code version changed), from the declarations alone."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.config import PipelineConfig
from pipeline.core.phases import PhaseNode, flow_targets, plan_order
from pipeline.core.runs import RunRecord
from pipeline.core.store import ArtifactNotFound, ArtifactStore
from pipeline.core.diff import dataset_files, file_changes, phase_reasons
from pipeline.core.workspace import Workspace


def _previous(records: list[RunRecord], phase: str) -> str | None:
    for rec in records:
        ref = rec.phases.get(phase)
        if ref:
            return ref["artifact_id"]
    return None


def _reason(node: PhaseNode, store: ArtifactStore, prev_id: str | None, params: dict, ids: dict[str, str],
            recompute: set[str], rows: list[dict] | None) -> str:
    """Why `node` recomputes, against the artifact the latest run made for it (same words as `pipeline diff`)."""
    if prev_id is None:
        return "never computed in this work dir"
    try:
        old = store.read_lineage(node.name, prev_id)
    except ArtifactNotFound:
        return "the previous artifact is gone from the store"
    planned = {"phase_version": node.spec.version, "params": params,
               "inputs": [{"name": k, "phase": node.inputs[k], "artifact_id": v} for k, v in sorted(ids.items())]}
    old_rows = dataset_files(store, prev_id) if node.spec.source is not None and rows is not None else None
    files = file_changes(old_rows, rows) if old_rows is not None else None
    return "; ".join(phase_reasons(node.name, old, planned, recompute, files))


def plan(flow: str, cfg: PipelineConfig, workdir: Path, dataset_root: Path, fmt: str) -> list[dict[str, Any]]:
    """One row per phase of `flow`: name, artifact id, `hit` or `recompute`, and the reason."""
    ws = Workspace(Path(workdir))
    store = ws.store(cfg)
    records = RunRecord.all(ws.root)
    runtime = {"dataset_root": str(dataset_root), "hash_cache": str(ws.cache / "file-hashes.json"), "progress": False,
               "weights_dir": str(ws.weights), "workdir": str(ws.root)}
    options: dict[str, Any] = {"format": fmt}
    ids: dict[str, str] = {}
    recompute: set[str] = set()
    rows_out = []
    for node in plan_order(cfg, flow_targets(flow), options):
        spec = node.spec
        node_options = {**options, **spec.source(cfg, runtime)} if spec.source else options
        input_ids = {k: ids[dep] for k, dep in node.inputs.items()}
        params = spec.params(cfg, node_options, node.instance or None)
        aid = spec.artifact_id(cfg, list(input_ids.values()), node_options, node.instance or None)
        ids[node.name] = aid
        hit = spec.cacheable and store.is_complete(node.name, aid)
        if hit:
            reason = "cache hit: same code version, params and inputs"
        elif not spec.cacheable:
            reason = "always runs (depends on state outside the store)"
        else:
            reason = _reason(node, store, _previous(records, node.name), params, input_ids, recompute,
                             runtime.get("_snapshot_rows"))
            recompute.add(node.name)
        rows_out.append({"phase": node.name, "artifact_id": aid, "status": "hit" if hit else "recompute",
                         "reason": reason, "pool": spec.pool})
    return rows_out


def render_plan(rows: list[dict[str, Any]]) -> str:
    width = max((len(r["phase"]) for r in rows), default=5) + 2
    lines = [f"{'phase':<{width}}{'artifact':<14}{'status':<11}reason"]
    for r in rows:
        lines.append(f"{r['phase']:<{width}}{r['artifact_id'][:12]:<14}{r['status']:<11}{r['reason']}")
    n = sum(r["status"] == "recompute" for r in rows)
    lines.append(f"\n{n} of {len(rows)} phases would recompute; nothing was run.")
    return "\n".join(lines)
