"""Walk an artifact's lineage upstream, down to the raw files and their hashes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.core.store import LINEAGE, ArtifactNotFound, ArtifactStore


def resolve(store: ArtifactStore, id_or_path: str) -> tuple[str, str]:
    """(phase, artifact_id) from an id, an id prefix, or an artifact directory path."""
    p = Path(id_or_path)
    if (p / LINEAGE).is_file():
        rec = json.loads((p / LINEAGE).read_text())
        return rec["phase"], rec["artifact_id"]
    return store.find(id_or_path)


def walk(store: ArtifactStore, id_or_path: str, max_files: int | None = None) -> dict[str, Any]:
    """A nested dict: the artifact, its params and metrics, and its inputs, recursively."""
    phase, aid = resolve(store, id_or_path)
    return _node(store, phase, aid, max_files)


def _node(store: ArtifactStore, phase: str, aid: str, max_files: int | None) -> dict[str, Any]:
    rec = store.read_lineage(phase, aid)
    node: dict[str, Any] = {
        "phase": phase,
        "artifact_id": aid,
        "path": store.dir_uri(phase, aid),
        "created_at": rec.get("created_at"),
        "params": rec.get("params", {}),
        "metrics": rec.get("metrics", {}),
        "code_version": rec.get("code_version"),
        "mlflow_run_id": rec.get("mlflow_run_id"),
        "prefect": rec.get("prefect"),
        "inputs": [],
    }
    if phase == "dataset":
        local = Path(store.dir_path(phase, aid)) if store.is_local else None
        files_path = local / "files.parquet" if local else None
        rows = pq.read_table(files_path).to_pylist() if files_path and files_path.is_file() else []
        node["root"] = rec.get("runtime", {}).get("dataset_root")
        node["n_files"] = len(rows)
        node["files"] = rows if max_files is None else rows[:max_files]
    for inp in rec.get("inputs", []):
        try:
            node["inputs"].append(_node(store, inp["phase"], inp["artifact_id"], max_files))
        except ArtifactNotFound:
            node["inputs"].append({"phase": inp["phase"], "artifact_id": inp["artifact_id"], "missing": True})
    return node


def render(node: dict[str, Any], indent: int = 0) -> str:
    pad = "  " * indent
    if node.get("missing"):
        return f"{pad}- {node['phase']} {node['artifact_id'][:12]} (missing from the store)\n"
    head = f"{pad}- {node['phase']} {node['artifact_id'][:16]}  {node.get('created_at') or ''}\n"
    lines = [head, f"{pad}    path: {node['path']}\n"]
    if node.get("params"):
        lines.append(f"{pad}    params: {json.dumps(node['params'], sort_keys=True)[:300]}\n")
    if node["phase"] == "dataset":
        lines.append(f"{pad}    root: {node.get('root')}  ({node.get('n_files')} files)\n")
        for f in node.get("files", []):
            lines.append(f"{pad}      {f['sha256'][:16]}  {f['size']:>10}  {f['path']}\n")
        shown = len(node.get("files", []))
        if shown < node.get("n_files", 0):
            lines.append(f"{pad}      ... {node['n_files'] - shown} more (use --all-files or --json)\n")
    for child in node.get("inputs", []):
        lines.append(render(child, indent + 1))
    return "".join(lines)
