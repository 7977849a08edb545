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

    setup_environment(kwargs["workdir"])
    _use_server(Path(kwargs["workdir"]))
    module, name = FLOW_FUNCTIONS[flow_name].split(":")
    flow_fn = getattr(importlib.import_module(module), name)
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        try:
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


@app.command("deploy")
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
) -> None:
    """Register prefect.yaml's deployments (nightly, adhoc, data-prep, run-phase) non-interactively."""
    from pipeline.app.deploy import deploy

    try:
        out = deploy(workdir.resolve(), dataset.resolve(), format.value, timezone, names=name,
                     project_dir=project_dir, prefect_file=prefect_file)
    except RuntimeError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    typer.echo(out)


@app.command("demo-data")
def demo_data(
    out: Path = typer.Option(Path("demo-data"), "--out", "-o", help="Output folder."),
    n: Optional[int] = typer.Option(None, "--n", help="Number of images (default: demo.n_images)."),
    seed: Optional[int] = typer.Option(None, help="Seed (default: demo.seed)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
) -> None:
    """Generate synthetic LabelMe vehicle-damage data (deterministic by seed, marked synthetic)."""
    overrides = list(set_ or [])
    if n is not None:
        overrides.append(f"demo.n_images={n}")
    if seed is not None:
        overrides.append(f"demo.seed={seed}")
    cfg = _config(config, overrides)
    from pipeline.demo.generator import generate_demo_data

    summary = generate_demo_data(out, cfg.demo)
    typer.echo(f"wrote {summary.get('n_images', '?')} synthetic images to {out}")


@app.command("demo")
def demo(
    workdir: Path = typer.Option(Path("demo-work"), "--workdir", "-w", help="Work dir for the demo."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", exists=True, dir_okay=False,
                                          help="YAML config (default: the packaged configs/demo.yaml)."),
    set_: Optional[List[str]] = SetOpt,
) -> None:
    """Generate the demo data, run the factory flow on it (retrieval, training, export, promotion), print the
    table of models, calibration, promotion and export gate, and say where everything is."""
    import time

    from pipeline.app.demo_report import demo_table
    from pipeline.app.packaged import DEMO_CONFIG, packaged_file

    t0 = time.perf_counter()
    cfg = _config(config or packaged_file(DEMO_CONFIG), set_)
    workdir = workdir.resolve()
    data_dir = workdir / "demo-data"
    from pipeline.demo.generator import generate_demo_data

    if not (data_dir / "dataset.json").is_file():
        generate_demo_data(data_dir, cfg.demo)
    summary = _run_flow("factory", False, dataset=str(data_dir), format="labelme", workdir=str(workdir),
                        config=cfg, progress=True)
    _print_summary(summary, False)
    typer.echo(demo_table(summary, time.perf_counter() - t0))
    phases = summary["phases"]
    last = phases[list(phases)[-1]]
    typer.echo("")
    typer.echo(f"demo data:   {data_dir}")
    typer.echo(f"outputs:     {workdir / 'artifacts'}")
    typer.echo(f"manifest:    {phases['audit']['path']}/manifest.parquet")
    typer.echo(f"quarantine:  {phases['audit']['path']}/quarantine.parquet")
    typer.echo(f"split:       {phases['split']['path']}/split.parquet")
    for name, table in (("crops", "crops.parquet"), ("contexts", "contexts.parquet")):
        if name in phases:
            typer.echo(f"{name + ':':<12} {phases[name]['path']}/{table}")
    if summary.get("tracking_uri"):
        typer.echo(f"MLflow UI:   mlflow ui --backend-store-uri {summary['tracking_uri']} --host 127.0.0.1 --port 5000")
    typer.echo(f"lineage:     pipeline lineage {last['artifact_id'][:12]} --workdir {workdir}")


@app.command("lineage")
def lineage(
    id_or_path: str = typer.Argument(..., help="Artifact id (or a prefix of 6+ chars) or artifact directory."),
    workdir: Path = WorkdirOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    as_json: bool = JsonOpt,
    all_files: bool = typer.Option(False, "--all-files", help="List every raw file, not the first 20."),
) -> None:
    """Print an artifact's upstream graph down to the raw files and their hashes."""
    cfg = _config(config, set_)
    from pipeline.core.lineage import render, walk
    from pipeline.core.store import ArtifactNotFound, ArtifactStore
    from pipeline.core.workspace import Workspace

    ws = Workspace(workdir.resolve())
    store = ArtifactStore(ws.artifact_uri(cfg), cache_dir=ws.cache / "artifacts")
    try:
        tree = walk(store, id_or_path, max_files=None if (all_files or as_json) else 20)
    except ArtifactNotFound as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    typer.echo(json.dumps(tree, indent=2, sort_keys=True) if as_json else render(tree).rstrip())


@app.command("diff")
def diff_cmd(
    run_a: str = typer.Argument(..., help="Flow run id (or unique prefix, `latest`, `previous`) of the old run."),
    run_b: str = typer.Argument(..., help="Flow run id (or unique prefix, `latest`, `previous`) of the new run."),
    workdir: Path = WorkdirOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """What changed between two runs: dataset files, config keys, recomputed artifacts and why, metric deltas."""
    cfg = _config(config, set_)
    from pipeline.core.diff import RunNotFound, diff_runs, render
    from pipeline.core.store import ArtifactStore
    from pipeline.core.workspace import Workspace

    ws = Workspace(workdir.resolve())
    store = ArtifactStore(ws.artifact_uri(cfg), cache_dir=ws.cache / "artifacts")
    try:
        result = diff_runs(ws.root, run_a, run_b, store)
    except RunNotFound as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result, indent=2, default=str) if as_json else render(result))


@app.command("app")
def app_cmd(
    workdir: Path = WorkdirOpt,
    port: int = typer.Option(8501, "--port", min=1, max=65535, help="Port on 127.0.0.1."),
) -> None:
    """The search and runs app (Streamlit) on http://127.0.0.1:PORT: search, runs, compare, models."""
    from pipeline.app.webapp.launch import start

    if not workdir.is_dir():
        typer.secho(f"error: no work dir {workdir} (run a flow first, e.g. `make demo`)", err=True, fg="red")
        raise typer.Exit(1)
    typer.echo(f"app: http://127.0.0.1:{port}  (work dir {workdir.resolve()}; Ctrl-C stops it)", err=True)
    try:
        proc = start(workdir, port)
    except ModuleNotFoundError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    try:
        raise typer.Exit(proc.wait())
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=10)


class YesNo(str, Enum):
    yes = "yes"
    no = "no"


def _latest(store, phase: str, runs_dir: Path | None = None) -> str:
    """Id of `phase`'s artifact in the most recent run record under runs_dir (cached or not) whose artifact
    still exists; else the store's most recently created artifact of `phase`."""
    from pipeline.core.store import ArtifactNotFound

    records = sorted(Path(runs_dir).glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True) if runs_dir else []
    for rec in records:
        try:
            aid = json.loads(rec.read_text(encoding="utf-8")).get("phases", {}).get(phase, {}).get("artifact_id")
        except (OSError, ValueError, AttributeError):
            continue
        if aid and store.is_complete(phase, aid):
            return aid
    try:
        return store.latest(phase)
    except ArtifactNotFound as exc:
        raise ArtifactNotFound(f"{exc}: run `pipeline run retrieval` first") from None


@app.command("search")
def search(
    image: Optional[Path] = typer.Option(None, "--image", help="Query image.", exists=True, dir_okay=False),
    text: Optional[str] = typer.Option(None, "--text", help="Query text."),
    k: int = typer.Option(5, "--k", min=1, help="Number of results."),
    zone: Optional[List[int]] = typer.Option(None, "--zone", min=1, max=10,
                                             help="Only these vehicle zones (1-10, repeatable)."),
    damaged: Optional[YesNo] = typer.Option(None, "--damaged", help="Only damaged (yes) or clean (no) crops."),
    damage_type: Optional[str] = typer.Option(None, "--damage-type", help="Only crops with this damage type."),
    index: Optional[str] = typer.Option(None, "--index", help="Index artifact id or prefix (default: the index of the work dir's latest run)."),
    workdir: Path = WorkdirOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Search the crop index by image or text, with zone / damage filters."""
    if (image is None) == (text is None):
        typer.secho("error: give exactly one of --image or --text", err=True, fg="red")
        raise typer.Exit(2)
    cfg = _config(config, set_)
    from pipeline.core.workspace import setup_environment

    ws = setup_environment(workdir, prefect_home=False)
    from pipeline.retrieval.retrieve import Retriever
    from pipeline.core.store import ArtifactNotFound, ArtifactStore

    store = ArtifactStore(ws.artifact_uri(cfg), cache_dir=ws.cache / "artifacts")
    try:
        aid = store.find(index)[1] if index else _latest(store, "index", ws.runs)
        index_dir = store.dir_for("index", aid)
        retriever = Retriever.open(index_dir, device=cfg.runtime.device, store=store)  # its crops, by artifact id
    except ArtifactNotFound as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    if image is not None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(image) as im:
                im.verify()
        except (UnidentifiedImageError, OSError) as exc:
            typer.secho(f"error: cannot read the query image {image}: {exc}", err=True, fg="red")
            raise typer.Exit(2) from None
    filters = {"zones": zone or None, "has_damage": None if damaged is None else damaged == YesNo.yes,
               "damage_type": damage_type}
    hits = retriever.search(str(image) if image else text, k=k, **filters)
    if not hits:
        present_zones = sorted({m["zone"] for m in retriever.metadata if m["zone"] is not None})
        present_types = sorted({t for m in retriever.metadata for t in (m["damage_types"] or [])})
        typer.secho(f"no indexed crop satisfies the filters; the index has zones {present_zones} and damage types "
                    f"{present_types}", err=True, fg="yellow")
    keep = ("rank", "score", "crop_id", "zone", "zone_name", "has_damage", "damage_types", "part", "split",
            "crop_path", "text")
    rows = [{key: h.get(key) for key in keep} for h in hits]
    if as_json:
        print(json.dumps({"index": aid, "query": str(image) if image else text, "hits": rows}, indent=2, default=str))
        return
    typer.echo(f"index {aid[:12]}: {len(rows)} result(s)")
    for r in rows:
        state = "damaged" if r["has_damage"] else "clean"
        typer.echo(f"{r['rank']:>3}. {r['score']:.3f}  zone {r['zone']} {r['zone_name'] or ''}  {state} "
                   f"{','.join(r['damage_types'] or [])}\n     {r['crop_path']}\n     {r['text']}")


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
    cfg = _config(config, set_)
    from pipeline.core import gc
    from pipeline.core.store import ArtifactStore
    from pipeline.core.workspace import Workspace

    ws = Workspace(workdir.resolve())
    store = ArtifactStore(ws.artifact_uri(cfg), cache_dir=ws.cache / "artifacts")
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


@app.command("predict")
def predict_cmd(
    image: Optional[Path] = typer.Option(None, "--image", help="One image.", exists=True, dir_okay=False),
    folder: Optional[Path] = typer.Option(None, "--folder", help="Every image under a folder.", exists=True,
                                          file_okay=False),
    model: str = typer.Option("champion", "--model", help="Registry alias (champion, challenger) or version number."),
    name: Optional[str] = typer.Option(None, "--name", help="Registered model (default: <experiment>-student)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the answers as CSV."),
    workdir: Path = WorkdirOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Answer from the model registry: label, calibrated confidence, and whether it is not conclusive."""
    if (image is None) == (folder is None):
        typer.secho("error: give exactly one of --image or --folder", err=True, fg="red")
        raise typer.Exit(2)
    cfg = _config(config, set_)
    from pipeline.training.predict import image_files, predict_images

    paths = [image] if image is not None else image_files(folder, cfg.data.image_extensions)
    if not paths:
        typer.secho(f"error: no images ({', '.join(cfg.data.image_extensions)}) under {folder}", err=True, fg="red")
        raise typer.Exit(2)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            answers = predict_images(paths, model, workdir.resolve(), cfg, name)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    answers.insert(0, "path", [str(p) for p in paths])
    if out is not None:
        answers.to_csv(out, index=False)
    if as_json:
        print(answers.to_json(orient="records"))
        return
    for row in answers.itertuples():
        verdict = "NOT CONCLUSIVE" if row.not_conclusive else ""
        typer.echo(f"{row.label or '-':<20} {row.confidence:6.3f}  {verdict:<14} {row.path}"
                   + (f"  ({row.error})" if row.error else ""))


@app.command("promote")
def promote_cmd(
    version: int = typer.Option(..., "--version", min=1, help="Model version to make champion."),
    name: Optional[str] = typer.Option(None, "--name", help="Registered model (default: <experiment>-student)."),
    reason: str = typer.Option("manual", "--reason", help="Why (kept in the registry's history)."),
    workdir: Path = WorkdirOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Pin or roll back the champion by hand, recorded in the registry's history."""
    cfg = _config(config, set_)
    from pipeline.core.workspace import setup_environment
    from pipeline.training.registry import pin_champion, registry_client, student_name

    ws = setup_environment(workdir, prefect_home=False)
    try:
        event = pin_champion(registry_client(ws.tracking_uri(cfg)), name or student_name(cfg), version, reason)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(event, indent=2, sort_keys=True))
        return
    typer.echo(f"{name or student_name(cfg)}: champion = version {event['version']} ({event['action']}; "
               f"previous champion {event['previous_champion']})")


@app.command("serve-model")
def serve_model_cmd(
    alias: str = typer.Option("champion", "--alias", help="Registry alias (champion, challenger) or version number."),
    name: Optional[str] = typer.Option(None, "--name", help="Registered model (default: <experiment>-student)."),
    export_dir: Optional[Path] = typer.Option(None, "--variant-dir", help="Serve this TF.js variant folder instead "
                                              "of the registry's (e.g. an export artifact's tfjs_fp16).",
                                              exists=True, file_okay=False),
    port: int = typer.Option(8765, "--port", help="Port on 127.0.0.1 (0: any free port)."),
    workdir: Path = WorkdirOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
) -> None:
    """Serve a static page (127.0.0.1) that classifies a dropped photo with the champion's TF.js model."""
    cfg = _config(config, set_)
    from pipeline.core.workspace import setup_environment
    from pipeline.export.browser import serve_forever
    from pipeline.export.registry_io import browser_model_dir
    from pipeline.export.runtimes import node_modules
    from pipeline.training.registry import registry_client, student_name

    ws = setup_environment(workdir, prefect_home=False)
    mods, why = node_modules(cfg.export)
    if mods is None:
        typer.secho(f"error: {why}", err=True, fg="red")
        raise typer.Exit(1)
    try:
        variant = export_dir or browser_model_dir(registry_client(ws.tracking_uri(cfg)), name or student_name(cfg),
                                                  alias, ws.cache / "registry")
    except ConfigError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    serve_forever(variant, mods, ws.cache / "serve-model", port,
                  lambda url: typer.echo(f"serving {variant.name} at {url} (Ctrl-C stops)"))


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


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
