"""The `pipeline` Typer app and its command groups. The command modules (cli_flows, cli_data, ...)
register their commands on these; pipeline.app.cli imports them all, so `app` there has every command."""
from __future__ import annotations

import typer

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
