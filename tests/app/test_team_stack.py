"""`pipeline up --team`: Prefect server and MLflow server on a local Postgres (Debian `postgresql`,
run as an unprivileged user on a loopback port, data under the work dir), plus `--dask 1`; a small
flow (data-prep) runs through it and lands in Postgres' own tables. Skips, saying why, where
Postgres cannot be installed."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_postgres() -> None:
    from pipeline.app.postgres import missing_programs

    if not missing_programs():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"Postgres programs {missing_programs()} missing and apt-get is not usable here (not root)")
    out = subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], capture_output=True, text=True,
                         env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=600)
    if out.returncode != 0 or missing_programs():
        pytest.skip(f"apt-get install postgresql failed: {out.stderr[-500:]}")


def _psql(port: int, db: str, sql: str) -> str:
    from pipeline.app.postgres import pg_bin

    out = subprocess.run([pg_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "pipeline", "-d", db, "-tAc", sql],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_team_stack_runs_a_flow_on_postgres(tmp_path, demo_dataset):
    from pipeline.app.services import down, status, up

    _ensure_postgres()
    # Postgres runs as an unprivileged user: its work dir must be reachable by it (pytest's tmp dirs are 0700)
    workdir = Path(tempfile.mkdtemp(prefix="pipeline-team-"))
    workdir.chmod(0o755)
    pg = _free_port()
    try:
        state = up(workdir, prefect_port=_free_port(), mlflow_port=_free_port(), pools=(), team=True, postgres_port=pg,
                   dask_workers=1, dask_port=_free_port(), dask_dashboard_port=_free_port(), timeout=240,
                   log=lambda *a: None)
        st = status(workdir)
        assert st["postgres"]["alive"] and st["prefect"]["healthy"] and st["mlflow"]["healthy"]
        assert st["dask-scheduler"]["healthy"] and st["dask-worker-0"]["alive"]
        env = {**os.environ, "PREFECT_API_URL": state["prefect"]["api_url"],
               "MLFLOW_TRACKING_URI": state["mlflow"]["url"], "PREFECT_HOME": str(workdir / ".prefect")}
        code = ("import sys; from pipeline_flows.data_prep import data_prep; "
                "r = data_prep(dataset=sys.argv[1], format='labelme', workdir=sys.argv[2]); print(r['flow_run_id'])")
        out = subprocess.run([sys.executable, "-c", code, str(demo_dataset), str(workdir / "w")], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        flow_run_id = out.stdout.strip().splitlines()[-1]
        # the records are in Postgres, not in SQLite files
        assert _psql(pg, "prefect", f"select state_type from flow_run where id = '{flow_run_id}'") == "COMPLETED"
        assert int(_psql(pg, "prefect", "select count(*) from task_run")) >= 3
        phases = _psql(pg, "mlflow", "select value from tags where key = 'pipeline.phase' order by value").split()
        assert phases == ["audit", "dataset", "split"]
        assert not (workdir / "mlflow.db").exists() and not (workdir / "w" / "mlflow.db").exists()
    finally:
        stopped = down(workdir)
    assert {"postgres", "prefect", "mlflow", "dask-scheduler", "dask-worker-0"} <= set(stopped)
    assert status(workdir) == {}
    shutil.rmtree(workdir, ignore_errors=True)
