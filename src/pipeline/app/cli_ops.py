"""Commands that run the stack: up, down, status, deploy, gc."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


from pipeline.app.cli_app import app
from pipeline.app.cli_options import ConfigOpt, Format, JsonOpt, SetOpt, WorkdirOpt, _open_workdir
from pipeline.core.flow_table import deployments


@app.command("up")
def up_cmd(
    workdir: Path = WorkdirOpt,
    prefect_port: int = typer.Option(4200, "--prefect-port", help="Prefect server port."),
    mlflow_port: int = typer.Option(5000, "--mlflow-port", help="MLflow server port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback by default)."),
    dask: int = typer.Option(0, "--dask", min=0, help="Also a local Dask scheduler and N workers (runtime.task_runner=dask)."),
    dask_port: int = typer.Option(8786, "--dask-port", help="Dask scheduler port."),
    dask_dashboard_port: int = typer.Option(8787, "--dask-dashboard-port", help="Dask dashboard port."),
    team: bool = typer.Option(False, "--team", help="Prefect and MLflow servers on a local Postgres (Debian postgresql)."),
    postgres_port: int = typer.Option(5432, "--postgres-port", help="--team: Postgres port (loopback)."),
) -> None:
    """Start a Prefect server, an MLflow server and one worker per pool (cpu, gpu) in the background."""
    from pipeline.app.services import up
    from pipeline.core.workspace import setup_environment

    ws = setup_environment(workdir, prefect_home=False)
    try:
        state = up(ws.root, prefect_port=prefect_port, mlflow_port=mlflow_port, host=host, log=typer.echo,
                   dask_workers=dask, dask_port=dask_port, dask_dashboard_port=dask_dashboard_port, team=team,
                   postgres_port=postgres_port)
    except RuntimeError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    typer.echo(f"Prefect UI:  {state['prefect']['url']}")
    typer.echo(f"MLflow UI:   {state['mlflow']['url']}")
    typer.echo(f"workers:     {', '.join(state['workers'])}")
    if state.get("dask"):
        typer.echo(f"Dask:        {state['dask']['address']} (dashboard {state['dask']['dashboard']}); "
                   f"flows use it with runtime.task_runner=dask")
    if state.get("postgres"):
        typer.echo(f"Postgres:    {state['postgres']['url']} (databases prefect, mlflow)")
    typer.echo(f"stop with:   pipeline down --workdir {workdir}")


@app.command("down")
def down_cmd(workdir: Path = WorkdirOpt) -> None:
    """Stop exactly what `pipeline up` started for this work dir."""
    from pipeline.app.services import down

    stopped = down(workdir.resolve())
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command("status")
def status_cmd(workdir: Path = WorkdirOpt, as_json: bool = JsonOpt) -> None:
    """Say which services of this work dir run."""
    from pipeline.app.services import status

    st = status(workdir.resolve())
    if as_json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return
    if not st:
        typer.echo("nothing started (pipeline up)")
    for name, info in st.items():
        where = info.get("url") or info.get("address") or ""
        typer.echo(f"{name:<14} pid {info.get('pid')}  {'running' if info.get('alive') else 'stopped'}  {where}")


@app.command("deploy", help="Register prefect.yaml's deployments "
             f"({', '.join(d.name for d, _ in deployments())}) non-interactively.")
def deploy_cmd(
    dataset: Path = typer.Option(..., "--dataset", "-d", help="Dataset the deployments run on.", file_okay=False),
    format: Format = typer.Option(Format.labelme, "--format", "-f"),
    workdir: Path = WorkdirOpt,
    timezone: str = typer.Option("UTC", "--timezone", help="Time zone of the nightly cron (02:00)."),
    name: Optional[List[str]] = typer.Option(None, "--name", help="Deploy only these (default: all of prefect.yaml)."),
    project_dir: Path = typer.Option(Path("."), "--project-dir", file_okay=False,
                                     help="Where the flow runs start (must exist where the workers run). Default: here."),
    prefect_file: Optional[Path] = typer.Option(None, "--prefect-file", exists=True, dir_okay=False,
                                                help="A prefect.yaml to deploy instead of the packaged one."),
    inbox: Optional[Path] = typer.Option(None, "--inbox", file_okay=False, help="Photos without labels the nightly "
                                         "reviews (its data.inbox); without it the nightly's review says it is skipped."),
) -> None:
    from pipeline.app.deploy import deploy

    try:
        out = deploy(workdir.resolve(), dataset.resolve(), format.value, timezone, names=name,
                     project_dir=project_dir, prefect_file=prefect_file, inbox=inbox.resolve() if inbox else None)
    except RuntimeError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    typer.echo(out)


@app.command("gc")
def gc_cmd(
    workdir: Path = WorkdirOpt,
    yes: bool = typer.Option(False, "--yes", help="Delete (default: only list what would go)."),
    min_age: float = typer.Option(15.0, "--min-age-minutes", min=0.0,
                                  help="Keep unreferenced artifacts and unowned leftovers younger than this."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List (or with --yes delete) artifacts no run record references, and crashed runs' leftovers."""
    from pipeline.core import gc

    cfg, ws, store = _open_workdir(workdir, config, set_)
    results = ws.results_uri(cfg).removeprefix("file://")
    args = (ws.root, store, None if "://" in results else Path(results), min_age * 60)
    try:
        found = gc.collect(*args) if yes else gc.plan(*args)
    except gc.GcRefused as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({**found.to_dict(), "deleted": yes}, indent=2))
        return
    for g in found.garbage:
        typer.echo(f"{g.kind:<15} {g.bytes:>12}  {g.path}")
    verb = "freed" if yes else "would free (dry run; --yes deletes)"
    typer.echo(f"{len(found.garbage)} item(s), {verb} {found.bytes} bytes; kept {len(found.kept)} artifact(s) "
               f"referenced by {found.n_runs} run record(s)")
    if found.young:
        typer.echo(f"{len(found.young)} unreferenced artifact(s) younger than {min_age:g} min kept")
    if found.active_runs and not yes:
        typer.echo(f"{len(found.active_runs)} run(s) in progress: --yes would refuse until they finish")
