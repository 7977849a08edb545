"""Commands that run flows: `pipeline run <flow>` (one per flow of the flow table), run-phase, plan."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from pipeline.app.cli_app import app, run_app
from pipeline.app.cli_options import ConfigOpt, DatasetOpt, Format, FormatOpt, JsonOpt, SetOpt, WorkdirOpt, _config
from pipeline.core.config import PipelineConfig
from pipeline.core.flow_table import FLOWS, dag_flows


def _use_server(workdir: Path) -> str | None:
    """Send runs to the Prefect server `pipeline up` started for this work dir, if it runs."""
    import os

    from pipeline.app.services import api_url

    url = api_url(Path(workdir))
    if url and "PREFECT_API_URL" not in os.environ:
        os.environ["PREFECT_API_URL"] = url
    return url


def _run_flow(flow_name: str, as_json: bool, **kwargs: Any) -> dict[str, Any]:
    """Run flow `flow_name` of the flow table in this process (its module imported from its entrypoint)."""
    import importlib

    from pipeline.core.errors import PipelineError
    from pipeline.core.workspace import setup_environment

    from pipeline.app.process import signals_unwind
    from pipeline_tasks.ephemeral import tie_prefect_ephemeral_server

    setup_environment(kwargs["workdir"])
    _use_server(Path(kwargs["workdir"]))
    tie_prefect_ephemeral_server()  # a killed run leaves no temporary Prefect server behind
    module, name = FLOWS[flow_name].entrypoint.split(":")
    flow_fn = getattr(importlib.import_module(module), name)
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext(), signals_unwind():
        try:  # SIGTERM / SIGHUP end the run as Ctrl-C does: the run is marked failed, the server stopped
            return flow_fn(**kwargs)
        except PipelineError as exc:  # systemic: one clear message, no traceback
            typer.secho(f"error: {exc}", err=True, fg="red")
            raise typer.Exit(2) from None


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return
    typer.echo(f"flow run {summary['flow_run_id']}  (MLflow parent run {summary['mlflow_run_id']})")
    for name, p in summary["phases"].items():
        status = "cache hit" if p["cache_hit"] else "computed"
        typer.echo(f"  {name:<12} {p['artifact_id'][:16]}  {status:<9}  {p['path']}")
        for key, value in sorted((p.get("info") or {}).items()):
            typer.echo(f"  {'':<12} {key}: {value}")


def _flow_command(flow_name: str, help_text: str):
    def command(
        dataset: Path = DatasetOpt,
        format: Format = FormatOpt,
        workdir: Path = WorkdirOpt,
        config: Optional[Path] = ConfigOpt,
        set_: Optional[List[str]] = SetOpt,
        as_json: bool = JsonOpt,
        progress: bool = typer.Option(True, help="Progress bars on stderr."),
    ) -> None:
        cfg = _config(config, set_)
        summary = _run_flow(flow_name, as_json, dataset=str(dataset.resolve()), format=format.value,
                            workdir=str(workdir.resolve()), config=cfg, progress=progress and not as_json)
        _print_summary(summary, as_json)

    command.__doc__ = help_text
    run_app.command(flow_name)(command)


for _flow in dag_flows().values():  # `pipeline run <flow>`: every flow of the DAG, in the table's order
    _flow_command(_flow.name, _flow.cli_help)


@app.command("run-phase")
def run_phase_cmd(
    phase: str = typer.Argument(..., help="Phase to re-run (see `pipeline plan`): dataset, audit, split, crops, ..."),
    from_run: str = typer.Option(..., "--from-run", help="Flow run id whose recorded inputs and config to use."),
    workdir: Path = WorkdirOpt,
    force: bool = typer.Option(False, "--force", help="Recompute even when a cached artifact exists."),
    as_json: bool = JsonOpt,
) -> None:
    """Re-run one phase of a finished (or failed) flow run with the input artifacts it recorded."""
    from pipeline.core.phases import nodes
    from pipeline.core.runs import RunRecord

    record = RunRecord.load(workdir.resolve(), from_run)
    cfg = PipelineConfig.model_validate(record.config) if record else PipelineConfig()
    known = nodes(cfg)
    if phase not in known:
        typer.secho(f"error: unknown phase {phase!r}; phases: {', '.join(known)}", err=True, fg="red")
        raise typer.Exit(2)
    summary = _run_flow("run-phase", as_json, phase=phase, from_run=from_run, workdir=str(workdir.resolve()),
                        force=force)
    _print_summary(summary, as_json)


@app.command("plan")
def plan_cmd(
    flow: str = typer.Argument("factory", help=f"Flow to plan: {', '.join(dag_flows())}."),
    workdir: Path = WorkdirOpt,
    dataset: Path = DatasetOpt,
    format: Format = FormatOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Dry run: which phases would be cache hits and which would recompute, and why. Runs nothing."""
    from pipeline.core.plan import plan, render_plan

    flows = dag_flows()
    if flow not in flows:
        typer.secho(f"error: unknown flow {flow!r}; flows: {', '.join(flows)}", err=True, fg="red")
        raise typer.Exit(2)
    cfg = _config(config, set_)
    rows = plan(flow, cfg, workdir.resolve(), dataset.resolve(), format.value)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        typer.echo(render_plan(rows))
