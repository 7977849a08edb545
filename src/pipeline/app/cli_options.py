"""Options and helpers the `pipeline` commands share: config, work dir, dataset, --json."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

import typer

from pipeline.core.config import ConfigError, PipelineConfig, load_config


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
