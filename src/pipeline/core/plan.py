"""`pipeline plan`: before anything runs, which phases would be cache hits and which would
recompute, and why (which input, param or code version changed), from the declarations alone."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.config import PipelineConfig
from pipeline.core.phases import PhaseNode, flow_targets, plan_order
from pipeline.core.runs import RunRecord
from pipeline.core.store import ArtifactNotFound, ArtifactStore
from pipeline.core.tracking import flatten
from pipeline.core.workspace import Workspace


def _previous(records: list[RunRecord], phase: str) -> str | None:
    for rec in records:
        ref = rec.phases.get(phase)
        if ref:
            return ref["artifact_id"]
    return None


def _param_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = flatten(old), flatten(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _dataset_changes(store: ArtifactStore, old_id: str, rows: list[dict[str, Any]]) -> str:
    import pyarrow.parquet as pq

    try:
        old = {r["path"]: r["sha256"] for r in pq.read_table(Path(store.dir_path("dataset", old_id)) / "files.parquet").to_pylist()}
    except (OSError, ArtifactNotFound):
        return "dataset files changed"
    new = {r["path"]: r["sha256"] for r in rows}
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(p for p in set(new) & set(old) if new[p] != old[p])
    parts = [f"{label} {len(xs)} ({', '.join(xs[:3])}{', ...' if len(xs) > 3 else ''})"
             for label, xs in (("added", added), ("removed", removed), ("changed", changed)) if xs]
    return "dataset files " + "; ".join(parts) if parts else "dataset files changed"


def _reason(node: PhaseNode, store: ArtifactStore, prev_id: str | None, params: dict, ids: dict[str, str],
            recompute: set[str], rows: list[dict] | None) -> str:
    if prev_id is None:
        return "never computed in this work dir"
    try:
        old = store.read_lineage(node.name, prev_id)
    except ArtifactNotFound:
        return "the previous artifact is gone from the store"
    reasons = []
    if str(old.get("phase_version")) != node.spec.version:
        reasons.append(f"code version {old.get('phase_version')} -> {node.spec.version}")
    if node.spec.source is not None and rows is not None:
        reasons.append(_dataset_changes(store, prev_id, rows))
    else:
        changes = _param_changes(old.get("params", {}), params)
        if changes:
            reasons.append("params changed: " + "; ".join(changes))
    old_inputs = {i["name"]: i["artifact_id"] for i in old.get("inputs", [])}
    for name, aid in sorted(ids.items()):
        if old_inputs.get(name) != aid:
            dep = node.inputs[name]
            reasons.append(f"input {name} {'recomputes' if dep in recompute else 'is a different artifact'}")
    return "; ".join(reasons) or "artifact missing from the store"


def plan(flow: str, cfg: PipelineConfig, workdir: Path, dataset_root: Path, fmt: str) -> list[dict[str, Any]]:
    """One row per phase of `flow`: name, artifact id, `hit` or `recompute`, and the reason."""
    ws = Workspace(Path(workdir))
    store = ArtifactStore(ws.artifact_uri(cfg), cache_dir=ws.cache / "artifacts")
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
