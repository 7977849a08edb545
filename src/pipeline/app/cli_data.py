"""Commands on data, runs and the index: demo-data, demo, lineage, diff, app, search."""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer


from pipeline.app.cli_app import app
from pipeline.app.cli_flows import _print_summary, _run_flow
from pipeline.app.cli_options import ConfigOpt, JsonOpt, SetOpt, WorkdirOpt, _config, _exactly_one, _open_workdir


@app.command("demo-data")
def demo_data(
    out: Path = typer.Option(Path("demo-data"), "--out", "-o", help="Output folder."),
    n: Optional[int] = typer.Option(None, "--n", help="Number of images (default: demo.n_images)."),
    seed: Optional[int] = typer.Option(None, help="Seed (default: demo.seed)."),
    vehicle_id: Optional[str] = typer.Option(
        None, "--vehicle-id", help="Name every photo zona1_<ko|ok>_<ID>_... (e.g. 2_3, as in the users' data)."),
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

    summary = generate_demo_data(out, cfg.demo, vehicle_id=vehicle_id)
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
    from pipeline.core.lineage import render, walk
    from pipeline.core.store import ArtifactNotFound

    _, _, store = _open_workdir(workdir, config, set_)
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
    from pipeline.core.diff import RunNotFound, diff_runs, render

    cfg, ws, store = _open_workdir(workdir, config, set_)
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
    from pipeline.app.process import child_options, run_foreground
    from pipeline.app.webapp.launch import start

    if not workdir.is_dir():
        typer.secho(f"error: no work dir {workdir} (run a flow first, e.g. `make demo`)", err=True, fg="red")
        raise typer.Exit(1)
    typer.echo(f"app: http://127.0.0.1:{port}  (work dir {workdir.resolve()}; Ctrl-C stops it)", err=True)
    try:
        proc = start(workdir, port, **child_options())  # its own group, and it dies with this process
    except ModuleNotFoundError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    code = run_foreground(proc)  # Ctrl-C, SIGTERM or SIGHUP stop Streamlit and its children
    raise typer.Exit(0 if code in (130, 143) else code)


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
    _exactly_one(image=image, text=text)
    cfg = _config(config, set_)
    from pipeline.core.workspace import setup_environment

    ws = setup_environment(workdir, prefect_home=False)
    from pipeline.retrieval.retrieve import Retriever
    from pipeline.core.store import ArtifactNotFound

    store = ws.store(cfg)
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
