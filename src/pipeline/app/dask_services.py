"""`pipeline up --dask N`: a local `distributed` scheduler and N worker processes as services.

The scheduler and each worker are subprocesses of the venv's `dask` console script (started,
recognised and stopped like the other services of `pipeline up`), bound to the loopback address;
the dashboard is on loopback too. Each worker has one thread; the first `min(N, GPUs)` workers
declare `GPU=1` (with their own CUDA_VISIBLE_DEVICES), so the GPU shards of a phase land on them.
Flow runs of the stack's Prefect workers get PIPELINE_DASK_ADDRESS, which `runtime.task_runner=dask`
joins when `runtime.cluster_address` is not set.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

from pipeline.app.process import ServiceError, bin_path, spawn, wait_until

DASK_ADDRESS_ENV = "PIPELINE_DASK_ADDRESS"


def gpu_count() -> int:
    """GPUs `nvidia-smi -L` lists (0 without the tool or a driver)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


def _n_workers(dashboard: str, http: Callable[..., tuple[int, Any]]) -> int:
    code, body = http("GET", f"{dashboard}/json/counts.json", timeout=3.0)
    return int(body.get("workers", 0)) if code == 200 and isinstance(body, dict) else -1


def start_dask(n_workers: int, host: str, url_host: str, scheduler_port: int, dashboard_port: int,
               env: dict[str, str], logs: Path, workdir: Path, timeout: float,
               started: dict[str, dict[str, Any]], http: Callable[..., tuple[int, Any]],
               log: Callable[[str], Any]) -> dict[str, Any]:
    """Start the scheduler and the workers; return the `dask` state entry once all workers joined."""
    address = f"tcp://{url_host}:{scheduler_port}"
    dashboard = f"http://{url_host}:{dashboard_port}"
    scheduler = spawn("dask-scheduler", [bin_path("dask"), "scheduler", "--host", host, "--port", str(scheduler_port),
                                         "--dashboard-address", f"{host}:{dashboard_port}"], env, logs, workdir)
    started["dask-scheduler"] = scheduler
    wait_until(lambda: _n_workers(dashboard, http) >= 0, scheduler, "Dask scheduler", timeout)
    scheduler.update(url=dashboard, address=address)
    gpus = gpu_count()
    workers: dict[str, dict[str, Any]] = {}
    for i in range(n_workers):
        cmd = [bin_path("dask"), "worker", address, "--nthreads", "1", "--nworkers", "1", "--host", host,
               "--dashboard-address", f"{host}:0", "--name", f"dask-{i}",
               "--local-directory", str(workdir / ".dask" / f"worker-{i}")]
        wenv = dict(env)
        if i < gpus:
            cmd += ["--resources", "GPU=1"]
            wenv["CUDA_VISIBLE_DEVICES"] = str(i)
        entry = spawn(f"dask-worker-{i}", cmd, wenv, logs, workdir)
        entry.update(gpu=i < gpus)
        workers[f"dask-worker-{i}"] = started[f"dask-worker-{i}"] = entry
    wait_until(lambda: _n_workers(dashboard, http) >= n_workers, scheduler, f"{n_workers} Dask workers", timeout)
    log(f"Dask scheduler {address} with {n_workers} worker(s) ({min(gpus, n_workers)} with a GPU), dashboard {dashboard}")
    return {"scheduler": scheduler, "workers": workers, "address": address, "dashboard": dashboard}


def dask_entries(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The processes of the `dask` entry of services.json, by display name."""
    dask = state.get("dask")
    if not isinstance(dask, dict):
        return {}
    return {"dask-scheduler": dask["scheduler"], **dask.get("workers", {})}


def check_dask_ports(host: str, ports: tuple[int, int], port_free: Callable[[str, int], bool]) -> None:
    for port in ports:
        if not port_free(host, port):
            raise ServiceError(f"port {port} on {host} is already in use (wanted for Dask); "
                               f"choose others with --dask-port / --dask-dashboard-port")
