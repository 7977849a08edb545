"""The Runs, Compare and Models pages: run records, the diff of two runs (`pipeline.core.diff`), the
model registry's champion and challenger."""
from __future__ import annotations

import json
from typing import Any

import streamlit as st

from pipeline.app.webapp import backend, runs_view
from pipeline.core.diff import diff_records

PLOTS = ("pca.png", "tsne.png", "examples.png")


def _pick_run(label: str, records: list, default: int, key: str):
    labels = {r.flow_run_id: runs_view.run_label(r) for r in records}
    chosen = st.selectbox(label, list(labels), index=min(default, len(records) - 1), format_func=labels.get, key=key)
    return next(r for r in records if r.flow_run_id == chosen)


def render_runs(workdir: str) -> None:
    st.title("Runs")
    ctx = backend.AppContext.open(workdir)
    records = ctx.records
    if not records:
        st.info(f"No flow runs recorded in {ctx.workdir}/runs yet.")
        return
    st.dataframe(runs_view.run_rows(records), hide_index=True)
    _latest_drift(ctx, records)
    rec = _pick_run("Run", records, 0, "run")
    st.markdown(f"**Run `{rec.flow_run_id}`** — {rec.flow}, {rec.status}, started {rec.started_at}, "
                f"finished {rec.finished_at or '-'}, dataset `{rec.run.get('dataset_root')}`")
    st.table(runs_view.phase_rows(ctx.store, rec))
    files = runs_view.validation_files(ctx.store, rec)
    if not files:
        st.caption("This run has no validation report.")
        return
    st.subheader("Validation")
    if "report.md" in files:
        with st.expander("report.md", expanded=True):
            st.markdown(files["report.md"].read_text(encoding="utf-8"))
    plots = [files[p] for p in PLOTS if p in files]
    for col, path in zip(st.columns(max(1, len(plots))), plots):
        col.image(str(path), caption=path.name, width="stretch")
    if "metrics.json" in files:
        with st.expander("metrics.json"):
            st.json(json.loads(files["metrics.json"].read_text(encoding="utf-8")))


def _latest_drift(ctx, records: list) -> None:
    """The newest drift report: its verdict per section and every check, the plots behind an expander."""
    from pipeline.monitor.drift_report import PLOTS, latest_drift, summary_line, table_rows

    found = latest_drift(ctx.store, records)
    st.subheader("Drift (latest)")
    if found is None:
        st.caption("No run has a drift report yet (the factory's drift phase compares each run with the previous "
                   "one; `pipeline drift` compares any two).")
        return
    rec, root, result = found
    text = summary_line(result)
    (st.error if "DRIFT in" in text else st.success if "no drift" in text else st.info)(
        f"Run `{rec.flow_run_id[:8]}`: {text}")
    if not result.get("skipped"):
        rows = [{k: v.replace(" **DRIFT**", " (drift)") for k, v in r.items()} for r in table_rows(result)]
        st.dataframe(rows, hide_index=True)
        plots = [root / p for p in PLOTS if (root / p).is_file()]
        if plots:
            with st.expander("Drift plots"):
                for path in plots:
                    st.image(str(path), caption=path.name, width="stretch")


def _diff_body(d: dict[str, Any]) -> None:
    files = d["dataset"]["files"]
    st.subheader("Dataset files")
    if files is None:
        st.warning("Unknown: a dataset artifact of these runs is no longer in the store.")
    elif not any(files.values()):
        st.markdown("No file added, removed or changed.")
    else:
        st.table([{"change": kind, "path": p} for kind in ("added", "removed", "changed") for p in files[kind]])
    st.subheader("Config")
    if d["config"]:
        st.table([{"key": c["key"], "A": json.dumps(c["a"]), "B": json.dumps(c["b"])} for c in d["config"]])
    else:
        st.markdown("No config key differs.")
    st.subheader("Phases")
    st.table([{"phase": r["phase"], "status": r["status"], "A": (r["a"] or "-")[:12], "B": (r["b"] or "-")[:12],
               "why": "; ".join(r["reasons"])} for r in d["phases"]])
    moved = [{"phase": r["phase"], **m} for r in d["phases"] for m in r["metrics"]]
    st.subheader("Metrics that moved")
    if moved:
        st.table([{**m, "a": json.dumps(m["a"]), "b": json.dumps(m["b"]),
                   "delta": "" if m["delta"] is None else f"{m['delta']:+.4g}"} for m in moved])
    else:
        st.markdown("No metric moved.")


def render_compare(workdir: str) -> None:
    st.title("Compare")
    ctx = backend.AppContext.open(workdir)
    records = ctx.records
    if len(records) < 2:
        st.info(f"{len(records)} run(s) recorded in {ctx.workdir}: comparing needs two.")
        return
    left, right = st.columns(2)
    with left:
        ra = _pick_run("Run A (older)", records, 1, "run_a")
    with right:
        rb = _pick_run("Run B (newer)", records, 0, "run_b")
    d = diff_records(ctx.store, ra, rb)
    n = sum(r["status"] == "recomputed" for r in d["phases"])
    st.markdown(f"**{n} of {len(d['phases'])} phase(s) recomputed** between `{ra.flow_run_id[:8]}` and "
                f"`{rb.flow_run_id[:8]}` — `pipeline diff {ra.flow_run_id[:8]} {rb.flow_run_id[:8]} "
                f"--workdir {ctx.workdir}`")
    _diff_body(d)


def render_models(workdir: str) -> None:
    st.title("Models")
    from pipeline.app.webapp.models_view import registry_summary

    summary = registry_summary(backend.AppContext.open(workdir))
    if summary.get("message"):
        st.info(summary["message"])
        return
    st.markdown(f"Registered model **{summary['name']}**")
    for alias, entry in summary["aliases"].items():
        st.subheader(f"{alias}: version {entry['version']}")
        if entry.get("metrics"):
            st.table([{"metric": k, "value": v} for k, v in sorted(entry["metrics"].items())])
        for path in entry.get("plots", []):
            st.image(str(path), caption=path.name, width=480)
    if summary.get("history"):
        with st.expander("Promotion history"):
            st.table(summary["history"][-20:])
