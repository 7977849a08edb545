"""The `pipeline` command. Heavy libraries (Prefect, MLflow, torch) are imported inside commands,
so `pipeline --help` and light commands stay fast.

The app and its groups are in cli_app, the shared options in cli_options; each cli_* module registers
its commands on the app when imported, and this module imports them all (in the order `--help` lists
them), so `pipeline.app.cli:app` is the whole command."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from pipeline.app import cli_flows  # noqa: F401  (run, run-phase, plan: first in --help)
from pipeline.app import cli_data, cli_models, cli_monitor, cli_ops, cli_verify  # noqa: F401  (their commands)
from pipeline.app.cli_app import app, config_app
from pipeline.app.cli_options import ConfigOpt, SetOpt, _config
from pipeline.core.config import PipelineConfig, valid_keys

__all__ = ["app", "main"]


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
