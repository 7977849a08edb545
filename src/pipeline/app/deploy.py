"""`pipeline deploy`: register prefect.yaml's deployments non-interactively.

Runs `prefect --no-prompt deploy` against the server of `pipeline up` (or PREFECT_API_URL),
filling prefect.yaml's `{{ $PIPELINE_* }}` variables from the options. The prefect.yaml is the
template shipped in the package unless one is given; its entrypoints are module paths
(`pipeline_flows.factory:factory`), so workers import the flows from the installed package. The
project dir (default: the current directory) is where flow runs start (the pull step), so
relative paths resolve there as they do where `pipeline deploy` ran.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pipeline.app.packaged import PREFECT_YAML, packaged_file
from pipeline.app.process import bin_path
from pipeline.core.flow_table import deployments
from pipeline.core.workspace import OFFLINE_ENV

# prefect.yaml's deployments: the flow table's (prefect.yaml is written from it, see pipeline.app.prefect_yaml).
DEPLOYMENTS = tuple(d.name for d, _ in deployments())


def deploy(workdir: Path, dataset: Path, fmt: str, timezone: str = "UTC", names: list[str] | None = None,
           api_url: str | None = None, timeout: float = 600, project_dir: Path | None = None,
           prefect_file: Path | None = None, inbox: Path | None = None) -> str:
    """Register the deployments (all, or `names`); return prefect's output. RuntimeError on failure."""
    from pipeline.app.services import api_url as running_api

    url = api_url or running_api(workdir) or os.environ.get("PREFECT_API_URL")
    if not url:
        raise RuntimeError(f"no Prefect server: start one with `pipeline up --workdir {workdir}` or set PREFECT_API_URL")
    unknown = set(names or []) - set(DEPLOYMENTS)
    if unknown:
        raise RuntimeError(f"unknown deployment(s) {sorted(unknown)}; prefect.yaml has {', '.join(DEPLOYMENTS)}")
    project = Path(project_dir or Path.cwd()).resolve()
    if not project.is_dir():
        raise RuntimeError(f"project dir {project} is not a directory")
    template = Path(prefect_file).resolve() if prefect_file else packaged_file(PREFECT_YAML)
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "PREFECT_API_URL": url,
        "PIPELINE_PROJECT_DIR": str(project),
        "PIPELINE_DATASET": str(dataset),
        "PIPELINE_FORMAT": fmt,
        "PIPELINE_WORKDIR": str(workdir),
        "PIPELINE_TIMEZONE": timezone,
        "PIPELINE_INBOX": str(inbox) if inbox else "",  # the nightly's data.inbox (empty: review says it is skipped)
    }
    cmd = [bin_path("prefect"), "--no-prompt", "deploy", "--prefect-file", str(template)]
    if names:
        for n in names:
            cmd += ["--name", n]
    else:
        cmd.append("--all")
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"prefect deploy failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout
