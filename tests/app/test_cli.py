"""The `pipeline` command as users run it: subprocesses, exit codes, --json, lineage."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = str(Path(sys.executable).with_name("pipeline"))


def run(*args, cwd=None, timeout=600, api_url=None):
    """`pipeline *args` with no PREFECT_* variable of the suite's; with `api_url`, against that Prefect server
    (else a flow starts its own temporary server, as tests/app/test_processes.py checks)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


@pytest.mark.slow
def test_help_is_fast_and_lists_commands():
    proc = run("--help")
    assert proc.returncode == 0
    for cmd in ("run", "demo", "demo-data", "lineage", "up", "down", "status", "deploy", "run-phase", "config"):
        assert cmd in proc.stdout
    heavy = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pipeline.app.cli"],
                           capture_output=True, text=True)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in heavy.stderr.splitlines()[1:]}
    assert not {"torch", "prefect", "mlflow", "timm", "open_clip"} & imported


@pytest.mark.slow
def test_config_error_fails_before_work(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    proc = run("run", "data-prep", "--dataset", str(data), "--workdir", str(tmp_path / "w"), "--set", "audit.min_sid=3")
    assert proc.returncode == 2
    assert "audit.min_side" in proc.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_data_prep_json_then_lineage(prefect_server, demo_dataset, tmp_path):
    from prefect.settings import PREFECT_API_URL

    w = tmp_path / "w"  # on the session's Prefect server: no temporary one to start
    proc = run("run", "data-prep", "--dataset", str(demo_dataset), "--format", "labelme", "--workdir", str(w), "--json",
               api_url=PREFECT_API_URL.value())
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)  # stdout holds exactly one JSON object
    assert {"flow_run_id", "mlflow_run_id", "phases"} <= set(out)
    for phase in ("dataset", "audit", "split"):
        p = out["phases"][phase]
        assert {"artifact_id", "path", "cache_hit", "metrics"} <= set(p) and not p["cache_hit"]
        assert Path(p["path"], "lineage.json").is_file()

    lin = run("lineage", out["phases"]["split"]["artifact_id"][:10], "--workdir", str(w), "--json")
    assert lin.returncode == 0, lin.stderr
    tree = json.loads(lin.stdout)
    ds = tree["inputs"][0]["inputs"][0]
    assert ds["phase"] == "dataset" and ds["n_files"] == len([p for p in demo_dataset.rglob("*") if p.is_file()])
    text = run("lineage", out["phases"]["split"]["artifact_id"][:10], "--workdir", str(w))
    assert "dataset" in text.stdout and "audit" in text.stdout
    missing = run("lineage", "deadbeefdead", "--workdir", str(w))
    assert missing.returncode == 1 and "no artifact" in missing.stderr


def test_search_defaults_to_the_index_of_the_latest_run(tmp_path):
    """After a run whose index was a cache hit, search uses that run's index, not a newer artifact
    some other run made; with no run records, the newest artifact."""
    import time

    from pipeline.app.cli_data import _latest
    from pipeline.core.store import ArtifactNotFound, ArtifactStore

    store = ArtifactStore(str(tmp_path / "artifacts"))
    for aid, created in (("a" * 64, "2026-01-01T00:00:00"), ("b" * 64, "2026-02-01T00:00:00")):
        (tmp_path / "artifacts" / "index" / aid).mkdir(parents=True)
        (tmp_path / "artifacts" / "index" / aid / "lineage.json").write_text(json.dumps({"created_at": created}))
    runs = tmp_path / "runs"
    assert _latest(store, "index", runs) == "b" * 64  # no run records: the newest artifact
    runs.mkdir()
    (runs / "old.json").write_text(json.dumps({"phases": {"index": {"artifact_id": "b" * 64}}}))
    time.sleep(0.05)
    (runs / "new.json").write_text(json.dumps({"phases": {"index": {"artifact_id": "a" * 64}}}))
    assert _latest(store, "index", runs) == "a" * 64
    time.sleep(0.05)
    (runs / "gone.json").write_text(json.dumps({"phases": {"index": {"artifact_id": "c" * 64}}}))  # deleted artifact
    (runs / "prep.json").write_text(json.dumps({"phases": {"split": {"artifact_id": "d" * 64}}}))  # no index phase
    assert _latest(store, "index", runs) == "a" * 64
    with pytest.raises(ArtifactNotFound, match="pipeline run retrieval"):
        _latest(store, "crops", runs)


def test_config_keys_lists_every_key_with_nested_sections():
    from typer.testing import CliRunner

    from pipeline.app.cli import app
    from pipeline.core.config import valid_keys

    out = CliRunner().invoke(app, ["config", "keys"])
    assert out.exit_code == 0, out.output
    listed = {line.split()[0] for line in out.output.splitlines() if line.strip()}
    assert listed == set(valid_keys()) and "teacher.augment.resize_ratio" in listed
