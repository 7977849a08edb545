"""Commands on trained models: predict, promote, serve-model."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from pipeline.core.config import ConfigError

from pipeline.app.cli_app import app
from pipeline.app.cli_options import ConfigOpt, JsonOpt, SetOpt, WorkdirOpt, _config, _exactly_one


@app.command("predict")
def predict_cmd(
    image: Optional[Path] = typer.Option(None, "--image", help="One image.", exists=True, dir_okay=False),
    folder: Optional[Path] = typer.Option(None, "--folder", help="Every image under a folder.", exists=True,
                                          file_okay=False),
    model: str = typer.Option("champion", "--model", help="Registry alias (champion, challenger) or version number."),
    name: Optional[str] = typer.Option(None, "--name", help="Registered model (default: <experiment>-student)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the answers as CSV."),
    windows: bool = typer.Option(False, "--windows", help="A model trained on crops: also print each grid window's "
                                 "answer (the CSV and --json always hold them)."),
    whole_image: bool = typer.Option(False, "--whole-image", help="Answer on the whole image even when the model was "
                                     "trained on crops (e.g. the images are crops already)."),
    workdir: Path = WorkdirOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Answer from the model registry: label, calibrated confidence, and whether it is not conclusive.
    A model trained on crops answers a photo the way its training crops were made (vehicle box, grid
    windows): one answer per window, and the photo damaged with its most confident damaged window."""
    _exactly_one(image=image, folder=folder)
    cfg = _config(config, set_)
    from pipeline.registry.predict import image_files, predict_images

    paths = [image] if image is not None else image_files(folder, cfg.data.image_extensions)
    if not paths:
        typer.secho(f"error: no images ({', '.join(cfg.data.image_extensions)}) under {folder}", err=True, fg="red")
        raise typer.Exit(2)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            answers = predict_images(paths, model, workdir.resolve(), cfg, name, whole_image=whole_image)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    answers.insert(0, "path", [str(p) for p in paths])
    if out is not None:
        answers.to_csv(out, index=False)
    if as_json:
        print(answers.to_json(orient="records"))
        return
    for row in answers.to_dict("records"):
        verdict = "NOT CONCLUSIVE" if row["not_conclusive"] else ""
        n = row.get("n_windows")
        where = f"  ({int(n)} windows)" if n is not None and n == n and n > 0 else ""
        typer.echo(f"{row['label'] or '-':<20} {row['confidence']:6.3f}  {verdict:<14} {row['path']}{where}"
                   + (f"  ({row['error']})" if row["error"] else "") + (f"  [{row['note']}]" if row.get("note") else ""))
        if windows and where:
            for w in json.loads(row["windows"]):
                typer.echo(f"    window r{w['row']} c{w['col']} {tuple(w['box'])}: {w['label']} {w['confidence']:.3f}")


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
    from pipeline.registry.versions import pin_champion, registry_client, student_name

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
    from pipeline.registry.export_io import browser_model_dir
    from pipeline.export.runtimes import node_modules
    from pipeline.registry.versions import registry_client, student_name

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
    from pipeline.app.process import signals_unwind

    with signals_unwind():  # SIGTERM / SIGHUP stop the server as Ctrl-C does
        serve_forever(variant, mods, ws.cache / "serve-model", port,
                      lambda url: typer.echo(f"serving {variant.name} at {url} (Ctrl-C stops)"))
