"""Commands on what changed and what to label next: drift, review, shift-data."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from pipeline.app.cli_app import app
from pipeline.app.cli_options import ConfigOpt, Format, JsonOpt, SetOpt, WorkdirOpt, _config


def _run_config(record, config: Optional[Path], overrides: Optional[List[str]]):
    """The config a command on a recorded run uses: --config if given, else the run's own, with --set on top."""
    from pipeline.core.config import ConfigError, build_config

    if config is not None or record is None:
        return _config(config, overrides)
    try:
        return build_config(record.config, overrides)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from None


def _find(workdir: Path, ref: str):
    from pipeline.core.diff import RunNotFound, find_run

    try:
        return find_run(workdir, ref)
    except RunNotFound as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None


def _text_table(rows: list[dict[str, str]]) -> str:
    cols = ["section", "verdict", "check", "test", "statistic", "rule", "p", "n (ref / cur)", "detail"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols[:-1]}
    lines = ["  ".join(c.ljust(widths.get(c, 0)) for c in cols)]
    for r in rows:
        lines.append("  ".join(r[c].replace("**DRIFT**", "DRIFT").ljust(widths.get(c, 0)) for c in cols))
    return "\n".join(lines)


@app.command("drift")
def drift_cmd(
    run_a: str = typer.Argument("previous", help="Reference run: flow run id, unique prefix, `latest` or `previous`."),
    run_b: str = typer.Argument("latest", help="Current run: flow run id, unique prefix, `latest` or `previous`."),
    workdir: Path = WorkdirOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default <workdir>/drift/<a8>_<b8>)."),
    model: str = typer.Option("champion", "--model", help="Registry alias or version that scores both runs' items."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Did the data, the image embeddings or the model's answers shift between two runs? A verdict per section
    (test, statistic, threshold, n), drift.json, report.md and drift.html with plots."""
    import contextlib
    import sys

    from pipeline.core.workspace import setup_environment
    from pipeline.core.device import pick_device
    from pipeline.monitor.drift import compare
    from pipeline.monitor.drift_data import side_from_record
    from pipeline.monitor.drift_report import summary_line, table_rows
    from pipeline.monitor.scoring import Scorer, find_registry_model
    from pipeline.registry.versions import student_name

    ws = setup_environment(workdir, prefect_home=False)
    ra, rb = _find(ws.root, run_a), _find(ws.root, run_b)
    cfg = _run_config(rb, config, set_)
    store = ws.store(cfg)
    found = find_registry_model(ws.tracking_uri(cfg), student_name(cfg), model, ws.cache / "registry", download=True) \
        if cfg.tracking.enabled else "tracking is off: no registry"
    scorer = Scorer(found.model_dir, pick_device(cfg.runtime.device), cfg.train.eval_batch_size) \
        if not isinstance(found, str) else None
    if isinstance(found, str):
        typer.secho(f"note: the predictions section is skipped: {found}", err=True, fg="yellow")
    dest = (out or ws.root / "drift" / f"{ra.flow_run_id[:8]}_{rb.flow_run_id[:8]}").resolve()
    say = lambda m: typer.echo(m, err=True)  # noqa: E731
    with contextlib.redirect_stdout(sys.stderr):
        result = compare(side_from_record(store, ra, "reference"), side_from_record(store, rb, "current"), cfg.drift,
                         scorer, cfg.train, found.describe() if scorer else found, dest, say,
                         cfg.audit.near_duplicate_threshold, getattr(found, "trained", frozenset()))
    if as_json:
        print(json.dumps({**result, "out": str(dest)}, indent=2, default=str))
        return
    typer.echo(summary_line(result))
    typer.echo(_text_table(table_rows(result)))
    typer.echo(f"\nreport: {dest / 'report.md'}\npage:   {dest / 'drift.html'}")


@app.command("review")
def review_cmd(
    workdir: Path = WorkdirOpt,
    inbox: Optional[Path] = typer.Option(None, "--inbox", help="Folder of photos without labels (default data.inbox).",
                                         exists=True, file_okay=False),
    run: str = typer.Option("latest", "--run", help="The run whose labelled photos are known (id, prefix, latest)."),
    n: Optional[int] = typer.Option(None, "--n", min=1, help="Photos to queue (default review.n)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where review folders and the ledger live "
                                       "(default review.out_dir, else <workdir>/review)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Queue the photos the champion is least sure of (not-conclusive first, no two alike, never twice) as a
    folder a person opens in LabelMe; it reads back through the labelme adapter once labelled and renamed."""
    import contextlib
    import sys

    from pipeline.core.runner import PhaseContext, execute_phase
    from pipeline.core.store import ArtifactRef
    from pipeline.core.workspace import setup_environment

    ws = setup_environment(workdir, prefect_home=False)
    rec = _find(ws.root, run)
    extra = [f"data.inbox={inbox.resolve()}"] if inbox else []
    extra += [f"review.n={n}"] if n else []
    extra += [f"review.out_dir={out.resolve()}"] if out else []
    cfg = _run_config(rec, config, [*(set_ or []), *extra])
    if "split" not in rec.phases:
        typer.secho(f"error: run {rec.flow_run_id[:8]} has no split: run data-prep (or the factory) first",
                    err=True, fg="red")
        raise typer.Exit(1)
    runtime = {"dataset_root": rec.run.get("dataset_root"), "workdir": str(ws.root), "progress": not as_json,
               "hash_cache": str(ws.cache / "file-hashes.json"), "weights_dir": str(ws.weights)}
    ctx = PhaseContext(store=ws.store(cfg), progress=not as_json)
    with contextlib.redirect_stdout(sys.stderr):
        result = execute_phase("review", cfg, {"split": ArtifactRef.model_validate(rec.phases["split"])}, ctx,
                               runtime=runtime)
    report = Path(result.path) / "review.json"
    if as_json:
        print(json.dumps({"artifact_id": result.artifact_id, "metrics": result.metrics, "info": result.info,
                          "review": json.loads(report.read_text())}, indent=2, default=str))
        return
    if result.info.get("review", "").startswith("skipped"):
        typer.echo(f"review {result.info['review']}")
        return
    m = result.metrics
    typer.echo(f"queued {int(m['n_queued'])} of {int(m['n_inbox'])} inbox photo(s) ({int(m['n_not_conclusive'])} "
               f"scored not conclusive) with {result.info.get('model')}, scoring {result.info.get('scoring')}")
    typer.echo(f"left out: {int(m['n_queued_before'])} queued before, {int(m['n_labelled'])} labelled, "
               f"{int(m['n_near_duplicate_of_labelled'])} near duplicates of labelled, {int(m['n_unreadable'])} "
               f"unreadable, {int(m['n_too_close'])} too close to a queued one")
    folder = result.info.get("folder", "")
    if not m["n_queued"]:
        typer.echo(f"nothing new to queue; every photo left out is listed with its reason in "
                   f"{Path(result.path) / 'left_out.csv'}")
        return
    typer.echo(f"LabelMe folder: {folder}\n  labelme {folder} --flags {folder}/flags.txt --nodata --autosave")


@app.command("shift-data")
def shift_data_cmd(
    src: Path = typer.Argument(..., help="Dataset folder to copy.", exists=True, file_okay=False),
    out: Path = typer.Option(..., "--out", "-o", help="New folder (must not exist)."),
    format: Format = typer.Option(Format.labelme, "--format", "-f", help="Dataset format."),
    darken: Optional[float] = typer.Option(None, "--darken", min=0.0, max=1.0, help="Multiply every pixel by this."),
    resize: Optional[float] = typer.Option(None, "--resize", min=0.05, max=4.0,
                                           help="Scale every photo (and its annotations) by this."),
    drop_class: Optional[List[str]] = typer.Option(None, "--drop-class", help="Leave out the photos of this label "
                                                   "(labelme, folders; repeatable)."),
    bad_files: int = typer.Option(0, "--bad-files", min=0, help="Add this many bad inputs (misnamed photo, "
                                  "truncated JPEG, stray text file, in turn)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
) -> None:
    """A shifted copy of a dataset (darker, resized, a class left out, bad files added): a second run on it
    shows what `pipeline drift` names."""
    from pipeline.core.errors import PipelineError
    from pipeline.monitor.shift import shift_dataset

    cfg = _config(config, set_)
    try:
        summary = shift_dataset(src, out, format.value, cfg.data, darken=darken, resize=resize,
                                drop_labels=drop_class or [], bad_files=bad_files)
    except (PipelineError, FileExistsError) as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from None
    typer.echo(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
