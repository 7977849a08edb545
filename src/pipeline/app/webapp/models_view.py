"""What the Models page shows, without Streamlit: the registry's `<experiment>-student` champion and
challenger with their run's figures, and the reliability diagram of the latest calibration artifact."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.app.webapp.backend import AppContext
from pipeline.core.workspace import Workspace

ALIASES = ("champion", "challenger")
PLOT_NAMES = ("reliability.png",)


def _calibration_plots(ctx: AppContext) -> list[Path]:
    """reliability.png of the newest run's artifacts that hold one (the calibration phase's)."""
    for rec in ctx.records:
        for phase, ref in rec.phases.items():
            aid = ref.get("artifact_id")
            if not aid or not ctx.store.is_local or not ctx.store.is_complete(phase, aid):
                continue
            root = Path(ctx.store.dir_path(phase, aid))
            found = [root / n for n in PLOT_NAMES if (root / n).is_file()]
            if found:
                return found
    return []


def registry_summary(ctx: AppContext) -> dict[str, Any]:
    """{name, aliases: {alias: {version, metrics, plots}}, history} or {message} when there is no model."""
    try:
        from pipeline.registry.versions import history, registry_client, student_name
    except ImportError:
        return {"message": "No model registry yet (the training package is not installed)."}
    ws = Workspace(ctx.workdir)
    uri = ws.tracking_uri(ctx.cfg)
    if uri.startswith("sqlite:///") and not ws.mlflow_db.is_file():
        return {"message": f"No model registry yet: {ws.mlflow_db} does not exist."}
    from mlflow.exceptions import MlflowException

    client, name = registry_client(uri), student_name(ctx.cfg)
    try:
        client.get_registered_model(name)
    except MlflowException:
        return {"message": f"No model registry yet: no registered model {name!r} (run `pipeline run train`)."}
    aliases: dict[str, Any] = {}
    plots = _calibration_plots(ctx)
    for alias in ALIASES:
        try:
            mv = client.get_model_version_by_alias(name, alias)
        except MlflowException:
            continue
        metrics = dict(client.get_run(mv.run_id).data.metrics) if mv.run_id else {}
        aliases[alias] = {"version": mv.version, "metrics": metrics, "plots": plots if alias == "champion" else []}
    if not aliases:
        return {"message": f"Registered model {name!r} has no champion or challenger yet."}
    return {"name": name, "aliases": aliases, "history": history(client, name)}
