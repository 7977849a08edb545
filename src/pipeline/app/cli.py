"""The `pipeline` command. Heavy libraries (Prefect, MLflow, torch) are imported inside commands,
so `pipeline --help` and light commands stay fast."""
from __future__ import annotations

import contextlib
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

import typer

from pipeline.core.config import ConfigError, PipelineConfig, load_config, valid_keys

app = typer.Typer(
    help="Vehicle-damage model factory: audit, split, crop, embed, index, train, export (Prefect 3 + MLflow).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
run_app = typer.Typer(help="Run a flow in this process (add `pipeline up` for a server and workers).", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(run_app, name="run")
app.add_typer(config_app, name="config")


class Format(str, Enum):
    labelme = "labelme"
    coco = "coco"
    jsonl = "jsonl"
    folders = "folders"


ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (see configs/).", exists=True, dir_okay=False)
SetOpt = typer.Option(None, "--set", help="Override a config key: section.key=value (repeatable).")
WorkdirOpt = typer.Option(Path("work"), "--workdir", "-w", help="Work dir: artifacts, MLflow, Prefect state.")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout and nothing else.")
DatasetOpt = typer.Option(..., "--dataset", "-d", help="Dataset root folder.", exists=True, file_okay=False)
FormatOpt = typer.Option(Format.labelme, "--format", "-f", help="Dataset format.")


def _config(config: Optional[Path], overrides: Optional[List[str]]) -> PipelineConfig:
    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from None


def _open_workdir(workdir: Path, config: Optional[Path], overrides: Optional[List[str]]):
    """(config, Workspace, ArtifactStore) of a work dir, for the commands that read it."""
    from pipeline.core.workspace import Workspace

    cfg = _config(config, overrides)
    ws = Workspace(workdir.resolve())
    return cfg, ws, ws.store(cfg)


def _exactly_one(**options: Any) -> None:
    """Exit 2 unless exactly one of the named options was given."""
    if sum(v is not None for v in options.values()) != 1:
        names = " or ".join(f"--{k}" for k in options)
        typer.secho(f"error: give exactly one of {names}", err=True, fg="red")
        raise typer.Exit(2)


def _use_server(workdir: Path) -> str | None:
    """Send runs to the Prefect server `pipeline up` started for this work dir, if it runs."""
    import os

    from pipeline.app.services import api_url

    url = api_url(Path(workdir))
    if url and "PREFECT_API_URL" not in os.environ:
        os.environ["PREFECT_API_URL"] = url
    return url


FLOW_FUNCTIONS = {
    "data-prep": "pipeline_flows.data_prep:data_prep",
    "retrieval": "pipeline_flows.retrieval:retrieval",
    "train": "pipeline_flows.train:train",
    "factory": "pipeline_flows.factory:factory",
    "embedding-study": "pipeline_flows.embedding_study:embedding_study",
    "run-phase": "pipeline_flows.run_phase:run_phase",
}


def _run_flow(flow_name: str, as_json: bool, **kwargs: Any) -> dict[str, Any]:
    import importlib

    from pipeline.core.errors import PipelineError
    from pipeline.core.workspace import setup_environment

    from pipeline.app.process import signals_unwind
    from pipeline_tasks.ephemeral import tie_prefect_ephemeral_server

    setup_environment(kwargs["workdir"])
    _use_server(Path(kwargs["workdir"]))
    tie_prefect_ephemeral_server()  # a killed run leaves no temporary Prefect server behind
    module, name = FLOW_FUNCTIONS[flow_name].split(":")
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


_flow_command("data-prep", "Audit and split a dataset (cached: unchanged inputs recompute nothing).")
_flow_command("retrieval", "data-prep, crops, contexts, embeddings, FAISS index and validation.")
_flow_command("train", "data-prep (and crops) then teachers, distillation, fine-tune, calibration and promotion.")
_flow_command("factory", "Run the whole DAG: retrieval and training (what the nightly deployment runs).")
_flow_command("embedding-study", "Compare backbones x metric-learning losses on the crops; register the best head.")


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
    flow: str = typer.Argument("factory", help="Flow to plan: data-prep, retrieval, train, factory."),
    workdir: Path = WorkdirOpt,
    dataset: Path = DatasetOpt,
    format: Format = FormatOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Dry run: which phases would be cache hits and which would recompute, and why. Runs nothing."""
    from pipeline.core.phases import FLOWS
    from pipeline.core.plan import plan, render_plan

    if flow not in FLOWS:
        typer.secho(f"error: unknown flow {flow!r}; flows: {', '.join(FLOWS)}", err=True, fg="red")
        raise typer.Exit(2)
    cfg = _config(config, set_)
    rows = plan(flow, cfg, workdir.resolve(), dataset.resolve(), format.value)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        typer.echo(render_plan(rows))


@config_app.command("show")
def config_show(config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt) -> None:
    """Print the resolved configuration as YAML."""
    import yaml

    typer.echo(yaml.safe_dump(_config(config, set_).model_dump(mode="json"), sort_keys=False).rstrip())


@config_app.command("keys")
def config_keys() -> None:
    """List every valid `--set` key with its description."""
    for key in valid_keys():
        model, field = PipelineConfig, None
        for part in key.split("."):  # nested sections, e.g. teacher.augment.resize_ratio
            field = model.model_fields[part]
            model = field.annotation
        typer.echo(f"{key:<40} {field.description or ''}")


# The other commands, registered on `app` when their modules are imported (they import no heavy library).
from pipeline.app import cli_data, cli_models, cli_monitor, cli_ops, cli_verify  # noqa: E402,F401


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
