"""`pipeline diff RUN_A RUN_B`: what changed between two flow runs, from run records and lineage alone.

- dataset files added / removed / changed (by content hash), from the two dataset artifacts'
  `files.parquet`;
- config keys that differ (the run records' resolved configs, flattened), and the run's own
  inputs (dataset root, format);
- per phase: the same artifact, or recomputed and why (which params changed, which input is a
  different artifact, a new phase code version), from the two artifacts' `lineage.json`;
- metric deltas per phase (timings left out: they differ on every computed run).

Nothing is recomputed and nothing is read from Prefect or MLflow.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pipeline.core.runs import RunRecord
from pipeline.core.store import ArtifactNotFound, ArtifactStore
from pipeline.core.tracking import flatten
from pipeline.core.workspace import Workspace

TIMING_METRICS = ("seconds", "build_seconds")
RUN_KEYS = ("dataset_root", "format")  # the run's own inputs compared beside the config


class RunNotFound(LookupError):
    pass


def key_changes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Flattened (dotted) keys whose values differ: [{key, a, b}], sorted by key (a missing key is None)."""
    a, b = flatten(old), flatten(new)
    return [{"key": k, "a": a.get(k), "b": b.get(k)} for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def file_changes(old_rows: list[dict[str, Any]], new_rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Paths added, removed and changed (same path, other sha256) between two dataset file listings."""
    old = {r["path"]: r["sha256"] for r in old_rows}
    new = {r["path"]: r["sha256"] for r in new_rows}
    return {"added": sorted(set(new) - set(old)), "removed": sorted(set(old) - set(new)),
            "changed": sorted(p for p in set(new) & set(old) if new[p] != old[p])}


def find_run(workdir: str | Path, ref: str, records: list[RunRecord] | None = None) -> RunRecord:
    """A run record by flow run id, a unique id prefix, `latest` or `previous` (the one before it)."""
    records = RunRecord.all(workdir) if records is None else records
    if ref in ("latest", "previous"):
        i = 0 if ref == "latest" else 1
        if len(records) <= i:
            raise RunNotFound(f"the work dir has {len(records)} run record(s): no {ref!r} run")
        return records[i]
    hits = [r for r in records if r.flow_run_id.startswith(ref)]
    if len(hits) == 1:
        return hits[0]
    known = ", ".join(r.flow_run_id[:8] for r in records[:10]) or "none"
    what = "no run" if not hits else f"{len(hits)} runs"
    raise RunNotFound(f"{what} matches {ref!r} in {Workspace(Path(workdir)).runs} (newest first: {known})")


def _lineage(store: ArtifactStore, phase: str, aid: str | None) -> dict[str, Any] | None:
    if not aid:
        return None
    try:
        return store.read_lineage(phase, aid)
    except (ArtifactNotFound, OSError, ValueError):
        return None


def dataset_files(store: ArtifactStore, aid: str | None) -> list[dict[str, Any]] | None:
    """The dataset artifact's file listing (path, size, sha256), or None when it is not in the store."""
    import pyarrow.parquet as pq

    if not aid or not store.is_local:
        return None
    path = Path(store.dir_path("dataset", aid)) / "files.parquet"
    try:
        return pq.read_table(path).to_pylist()
    except (OSError, ValueError):
        return None


def phase_metrics(store: ArtifactStore, phase: str, ref: dict[str, Any]) -> dict[str, Any]:
    """A run record's metrics of a phase; for records that carry none, the artifact's lineage metrics."""
    if ref.get("metrics") is not None:
        return ref["metrics"]
    return (_lineage(store, phase, ref.get("artifact_id")) or {}).get("metrics", {})


def _metric_deltas(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for k in sorted(set(a) | set(b)):
        if k in TIMING_METRICS:
            continue
        va, vb = a.get(k), b.get(k)
        if va == vb:
            continue
        num = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (va, vb))
        delta = vb - va if num and math.isfinite(va) and math.isfinite(vb) else None
        out.append({"metric": k, "a": va, "b": vb, "delta": delta})
    return out


def phase_reasons(phase: str, la: dict[str, Any] | None, lb: dict[str, Any] | None,
                   changed: set[str], files: dict[str, list[str]] | None) -> list[str]:
    """Why the artifact of `phase` differs: code version, params, inputs (and the dataset files)."""
    if la is None or lb is None:
        gone = "a" if la is None else "b"
        return [f"lineage of run {gone.upper()}'s artifact is not in the store (collected?)"]
    reasons = []
    if str(la.get("phase_version")) != str(lb.get("phase_version")):
        reasons.append(f"code version {la.get('phase_version')} -> {lb.get('phase_version')}")
    source = phase == "dataset" and files is not None  # its params are the file listing's fingerprint
    for c in [] if source else key_changes(la.get("params", {}), lb.get("params", {})):
        reasons.append(f"param {c['key']}: {c['a']!r} -> {c['b']!r}")
    ins_a = {i["name"]: i for i in la.get("inputs", [])}
    ins_b = {i["name"]: i for i in lb.get("inputs", [])}
    for name in sorted(set(ins_a) | set(ins_b)):
        ia, ib = ins_a.get(name), ins_b.get(name)
        if (ia or {}).get("artifact_id") != (ib or {}).get("artifact_id"):
            dep = (ib or ia)["phase"]
            how = "was recomputed" if dep in changed else "is a different artifact"
            reasons.append(f"input {name} ({dep}) {how}")
    if source:
        for kind in ("added", "removed", "changed"):
            if files[kind]:
                shown = ", ".join(files[kind][:5]) + (", ..." if len(files[kind]) > 5 else "")
                reasons.append(f"files {kind}: {len(files[kind])} ({shown})")
    return reasons or ["same code version, params and inputs (the artifact was rebuilt)"]


def _phase_rows(store: ArtifactStore, ra: RunRecord, rb: RunRecord,
                files: dict[str, list[str]] | None) -> list[dict[str, Any]]:
    order = list(rb.phases) + [p for p in ra.phases if p not in rb.phases]
    rows, changed = [], set()
    for phase in order:
        pa_, pb_ = ra.phases.get(phase) or {}, rb.phases.get(phase) or {}
        aid_a, aid_b = pa_.get("artifact_id"), pb_.get("artifact_id")
        row: dict[str, Any] = {"phase": phase, "a": aid_a, "b": aid_b, "cache_hit_b": pb_.get("cache_hit")}
        if aid_a is None or aid_b is None:
            row.update(status="only_b" if aid_a is None else "only_a", reasons=[])
        elif aid_a == aid_b:
            row.update(status="same", reasons=[])
        else:
            changed.add(phase)
            reasons = phase_reasons(phase, _lineage(store, phase, aid_a), _lineage(store, phase, aid_b), changed,
                                     files)
            row.update(status="recomputed", reasons=reasons)
        row["metrics"] = _metric_deltas(phase_metrics(store, phase, pa_), phase_metrics(store, phase, pb_))
        rows.append(row)
    return rows


def _summary(rec: RunRecord) -> dict[str, Any]:
    return {"flow_run_id": rec.flow_run_id, "flow": rec.flow, "status": rec.status, "started_at": rec.started_at,
            "finished_at": rec.finished_at, "dataset_root": rec.run.get("dataset_root")}


def diff_records(store: ArtifactStore, ra: RunRecord, rb: RunRecord) -> dict[str, Any]:
    """The diff of two run records (see the module doc); JSON-serialisable."""
    ds_a = (ra.phases.get("dataset") or {}).get("artifact_id")
    ds_b = (rb.phases.get("dataset") or {}).get("artifact_id")
    rows_a, rows_b = dataset_files(store, ds_a), dataset_files(store, ds_b)
    if ds_a and ds_a == ds_b:
        files: dict[str, Any] | None = {"added": [], "removed": [], "changed": []}
    elif rows_a is not None and rows_b is not None:
        files = file_changes(rows_a, rows_b)
    else:
        files = None  # a dataset artifact is missing: unknown
    run_a = {k: ra.run.get(k) for k in RUN_KEYS}
    run_b = {k: rb.run.get(k) for k in RUN_KEYS}
    return {
        "a": _summary(ra), "b": _summary(rb),
        "dataset": {"a": ds_a, "b": ds_b, "files": files},
        "config": key_changes({"run": run_a, **ra.config}, {"run": run_b, **rb.config}),
        "phases": _phase_rows(store, ra, rb, files),
    }


def diff_runs(workdir: str | Path, run_a: str, run_b: str, store: ArtifactStore) -> dict[str, Any]:
    """`diff_records` of two runs of the work dir named by id, prefix, `latest` or `previous`."""
    records = RunRecord.all(workdir)
    return diff_records(store, find_run(workdir, run_a, records), find_run(workdir, run_b, records))


def _value(v: Any) -> str:
    return json.dumps(v, default=str) if not isinstance(v, str) else repr(v)


def render(d: dict[str, Any]) -> str:
    """The diff as text for the terminal."""
    a, b = d["a"], d["b"]
    lines = [f"A: {a['flow_run_id']}  {a['flow']}  {a['started_at']}  {a['status']}",
             f"B: {b['flow_run_id']}  {b['flow']}  {b['started_at']}  {b['status']}", "", "dataset files:"]
    files = d["dataset"]["files"]
    if files is None:
        lines.append("  unknown (a dataset artifact is not in the store)")
    elif not any(files.values()):
        lines.append("  no change")
    for kind, sign in (("added", "+"), ("removed", "-"), ("changed", "~")):
        lines += [f"  {sign} {p}" for p in (files or {}).get(kind, [])]
    lines += ["", "config:"]
    lines += [f"  {c['key']}: {_value(c['a'])} -> {_value(c['b'])}" for c in d["config"]] or ["  no change"]
    lines += ["", "phases:"]
    width = max((len(r["phase"]) for r in d["phases"]), default=5) + 2
    for r in d["phases"]:
        ids = f"{(r['a'] or '-')[:12]} -> {(r['b'] or '-')[:12]}" if r["a"] != r["b"] else (r["a"] or "")[:12]
        lines.append(f"  {r['phase']:<{width}}{r['status']:<12}{ids}")
        lines += [f"  {'':<{width}}  because {why}" for why in r["reasons"]]
        for m in r["metrics"]:
            delta = f" ({m['delta']:+.4g})" if m["delta"] is not None else ""
            lines.append(f"  {'':<{width}}  {m['metric']}: {_value(m['a'])} -> {_value(m['b'])}{delta}")
    n = sum(r["status"] == "recomputed" for r in d["phases"])
    lines.append(f"\n{n} of {len(d['phases'])} phase(s) recomputed.")
    return "\n".join(lines)
