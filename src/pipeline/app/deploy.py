"""`pipeline deploy`: register prefect.yaml's deployments non-interactively.

Runs `prefect --no-prompt deploy` against the server of `pipeline up` (or PREFECT_API_URL),
filling prefect.yaml's `{{ $PIPELINE_* }}` variables from the options.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.core.workspace import OFFLINE_ENV

PROJECT_DIR = Path(__file__).resolve().parents[2]
DEPLOYMENTS = ("nightly", "adhoc", "data-prep", "run-phase")


def deploy(workdir: Path, dataset: Path, fmt: str, timezone: str = "UTC", names: list[str] | None = None,
           api_url: str | None = None, timeout: float = 600) -> str:
    from pipeline.app.services import api_url as running_api

    url = api_url or running_api(workdir) or os.environ.get("PREFECT_API_URL")
    if not url:
        raise RuntimeError(f"no Prefect server: start one with `pipeline up --workdir {workdir}` or set PREFECT_API_URL")
    unknown = set(names or []) - set(DEPLOYMENTS)
    if unknown:
        raise RuntimeError(f"unknown deployment(s) {sorted(unknown)}; prefect.yaml has {', '.join(DEPLOYMENTS)}")
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "PREFECT_API_URL": url,
        "PIPELINE_PROJECT_DIR": str(PROJECT_DIR),
        "PIPELINE_DATASET": str(dataset),
        "PIPELINE_FORMAT": fmt,
        "PIPELINE_WORKDIR": str(workdir),
        "PIPELINE_TIMEZONE": timezone,
    }
    cmd = [str(Path(sys.executable).with_name("prefect")), "--no-prompt", "deploy",
           "--prefect-file", str(PROJECT_DIR / "prefect.yaml")]
    if names:
        for n in names:
            cmd += ["--name", n]
    else:
        cmd.append("--all")
    proc = subprocess.run(cmd, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"prefect deploy failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout
