"""`pipeline verify`: re-hash the work dir's artifacts and per-item caches (and check the registry)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from pipeline.app.cli_app import app
from pipeline.app.cli_options import ConfigOpt, JsonOpt, SetOpt, WorkdirOpt, _open_workdir


@app.command("verify")
def verify_cmd(
    workdir: Path = WorkdirOpt,
    fix: bool = typer.Option(False, "--fix", help="Remove what is damaged, so the next run recomputes it "
                             "(artifacts whole, cache entries); refuses while a run is live."),
    registry: bool = typer.Option(True, "--registry/--no-registry",
                                  help="Also check the MLflow registry's model files and aliases (reported only)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Re-hash every artifact file and per-item cache entry against what was recorded when it was written;
    list missing and changed files. Exit code 0: everything intact (or fixed); 1: damage found."""
    from pipeline.core.gc import GcRefused
    from pipeline.registry.verify import verify

    if not workdir.is_dir():
        typer.secho(f"error: no work dir {workdir}", err=True, fg="red")
        raise typer.Exit(2)
    cfg, ws, store = _open_workdir(workdir, config, set_)
    results = ws.results_uri(cfg).removeprefix("file://")
    tracking = None
    if registry and cfg.tracking.enabled and (cfg.tracking.uri or ws.mlflow_db.is_file()):
        from pipeline.core.workspace import setup_environment

        setup_environment(ws.root, prefect_home=False)
        tracking = ws.tracking_uri(cfg)
    try:
        report = verify(ws.root, store, None if "://" in results else Path(results), fix, tracking,
                        progress=None if as_json else lambda line: typer.echo(f"  {line}", err=True))
    except GcRefused as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for f in report.findings:
            state = "removed" if f.fixed else f.problem
            typer.echo(f"{f.kind:<10} {state:<10} {f.path}  ({f.detail})")
        typer.echo(f"checked {report.n_artifacts} artifact(s), {report.n_files} file(s), {report.n_bytes:,} bytes; "
                   f"{report.n_entries} cache entr{'y' if report.n_entries == 1 else 'ies'}"
                   + (f"; {report.n_versions} registry version(s)" if tracking else "")
                   + f": {len(report.findings)} problem(s)"
                   + (f", {sum(f.fixed for f in report.findings)} removed (the next run recomputes them)" if fix else ""))
        if report.findings and not fix:
            typer.echo("run `pipeline verify --fix` to remove them, then re-run the flow")
    raise typer.Exit(0 if report.ok else 1)
