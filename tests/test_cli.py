"""The `pipeline` command as users run it: subprocesses, exit codes, --json, lineage."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = str(Path(sys.executable).with_name("pipeline"))


def run(*args, cwd=None, timeout=600):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def test_help_is_fast_and_lists_commands():
    proc = run("--help")
    assert proc.returncode == 0
    for cmd in ("run", "demo", "demo-data", "lineage", "up", "down", "status", "deploy", "run-phase", "config"):
        assert cmd in proc.stdout
    heavy = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pipeline.cli"],
                           capture_output=True, text=True)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in heavy.stderr.splitlines()[1:]}
    assert not {"torch", "prefect", "mlflow", "timm", "open_clip"} & imported


def test_config_error_fails_before_work(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    proc = run("run", "data-prep", "--dataset", str(data), "--workdir", str(tmp_path / "w"), "--set", "audit.min_sid=3")
    assert proc.returncode == 2
    assert "audit.min_side" in proc.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_data_prep_json_then_lineage(demo_dataset, tmp_path):
    w = tmp_path / "w"
    proc = run("run", "data-prep", "--dataset", str(demo_dataset), "--format", "labelme", "--workdir", str(w), "--json")
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
