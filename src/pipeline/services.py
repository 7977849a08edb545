"""Local services for `pipeline up | down | status`: a Prefect server, an MLflow server and one
process worker per work pool, started in the background on loopback, their PIDs in
`<workdir>/services.json` so that `down` stops exactly what `up` started.

No Prefect import here: everything goes through subprocesses and plain HTTP.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .workspace import OFFLINE_ENV

PROJECT_DIR = Path(__file__).resolve().parents[2]
STATE = "services.json"


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def state_path(workdir: Path) -> Path:
    return Path(workdir) / STATE


def _read_state(workdir: Path) -> dict[str, Any] | None:
    p = state_path(workdir)
    return json.loads(p.read_text()) if p.is_file() else None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(info: dict[str, Any]) -> bool:
    """The PID runs AND still belongs to the command we started (never trust a recycled PID)."""
    pid = info.get("pid")
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return info.get("match", "") in _cmdline(pid)


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except Exception:
        return False


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _services(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {"prefect": state["prefect"], "mlflow": state["mlflow"]}
    out.update({f"worker-{k}": v for k, v in state.get("workers", {}).items()})
    return out


def _spawn(cmd: list[str], env: dict[str, str], log: Path, match: str) -> dict[str, Any]:
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log, "ab")
    proc = subprocess.Popen(cmd, env=env, cwd=PROJECT_DIR, stdout=fh, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    fh.close()
    return {"pid": proc.pid, "log": str(log), "match": match, "cmd": cmd}


def _tail(path: str, n: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _wait(url: str, info: dict[str, Any], name: str, deadline: float) -> None:
    while time.time() < deadline:
        if _healthy(url):
            return
        if not _alive(info):
            raise RuntimeError(f"{name} exited during start-up; its log ({info['log']}) ends:\n{_tail(info['log'])}")
        time.sleep(1)
    raise RuntimeError(f"{name} did not answer {url} in time; its log ({info['log']}) ends:\n{_tail(info['log'])}")


def _stop(info: dict[str, Any], grace: float = 15) -> bool:
    if not _alive(info):
        return False
    pid = info["pid"]
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
            if "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
                break
        except OSError:
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    return True


def base_env(workdir: Path) -> dict[str, str]:
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in OFFLINE_ENV.items()}}
    env.pop("PREFECT_API_URL", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def up(workdir: Path, prefect_port: int = 4200, mlflow_port: int = 5000, pools: tuple[str, ...] = ("cpu", "gpu"),
       host: str = "127.0.0.1", timeout: float = 180, log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Start the Prefect server, the MLflow server and one process worker per pool; wait until they answer."""
    workdir = Path(workdir).resolve()
    existing = _read_state(workdir)
    if existing and any(_alive(i) for i in _services(existing).values()):
        log(f"services already running for {workdir} (pipeline status / pipeline down)")
        return existing
    for port, flag in ((prefect_port, "--prefect-port"), (mlflow_port, "--mlflow-port")):
        if not _port_free(host, port):
            raise RuntimeError(f"port {port} on {host} is already in use: choose another with {flag}")

    logs = workdir / "logs"
    env = base_env(workdir)
    prefect_home = workdir / ".prefect-server"
    prefect_home.mkdir(parents=True, exist_ok=True)
    url = f"http://{host}:{prefect_port}"
    api = f"{url}/api"
    mlflow_url = f"http://{host}:{mlflow_port}"
    started: dict[str, Any] = {"workers": {}}
    state: dict[str, Any] = {}
    try:
        log(f"starting Prefect server on {url} ...")
        penv = {**env, "PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_UI_API_URL": api, "PREFECT_SERVER_API_HOST": host, "PREFECT_SERVER_API_PORT": str(prefect_port)}
        started["prefect"] = _spawn([_bin("prefect"), "server", "start", "--host", host, "--port", str(prefect_port)],
                                    penv, logs / "prefect-server.log", "server start")
        log(f"starting MLflow server on {mlflow_url} ...")
        menv = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        started["mlflow"] = _spawn(
            [_bin("mlflow"), "server", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
             "--artifacts-destination", str(workdir / "mlartifacts"), "--serve-artifacts",
             "--host", host, "--port", str(mlflow_port), "--workers", "1",
             "--allowed-hosts", f"{host}:{mlflow_port},localhost:{mlflow_port},{host},localhost"],
            menv, logs / "mlflow-server.log", "mlflow")
        deadline = time.time() + timeout
        _wait(f"{api}/health", started["prefect"], "Prefect server", deadline)
        _wait(f"{mlflow_url}/health", started["mlflow"], "MLflow server", deadline)

        cenv = {**env, "PREFECT_API_URL": api, "PREFECT_HOME": str(prefect_home)}
        for pool in pools:
            subprocess.run([_bin("prefect"), "work-pool", "create", pool, "--type", "process", "--overwrite"],
                           env=cenv, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120, check=True)
        gcl = f"gpu-host-{socket.gethostname()}"
        if subprocess.run([_bin("prefect"), "gcl", "inspect", gcl], env=cenv, capture_output=True,
                          timeout=60).returncode != 0:
            subprocess.run([_bin("prefect"), "gcl", "create", gcl, "--limit", "1"], env=cenv,
                           capture_output=True, timeout=60, check=True)

        wenv = {**cenv, "MLFLOW_TRACKING_URI": mlflow_url, "PIPELINE_PROJECT_DIR": str(PROJECT_DIR)}
        for pool in pools:
            log(f"starting worker for pool {pool} ...")
            started["workers"][pool] = _spawn(
                [_bin("prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name",
                 f"{pool}-{socket.gethostname()}-{prefect_port}"],
                wenv, logs / f"worker-{pool}.log", f"--pool {pool}")
        time.sleep(2)
        for pool, info in started["workers"].items():
            if not _alive(info):
                raise RuntimeError(f"worker {pool} exited; its log ends:\n{_tail(info['log'])}")
        state = {
            "prefect": {**started["prefect"], "url": url, "api_url": api},
            "mlflow": {**started["mlflow"], "url": mlflow_url},
            "workers": started["workers"],
            "pools": list(pools),
            "host": host,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        state_path(workdir).write_text(json.dumps(state, indent=2))
        return state
    except BaseException:
        for info in [*started.get("workers", {}).values(), started.get("mlflow"), started.get("prefect")]:
            if info:
                _stop(info)
        raise


def down(workdir: Path) -> list[str]:
    """Stop what `up` started (workers first), by PID, only if the PID is still ours."""
    state = _read_state(Path(workdir))
    if not state:
        return []
    stopped = []
    order = [*[(f"worker-{k}", v) for k, v in state.get("workers", {}).items()],
             ("mlflow", state["mlflow"]), ("prefect", state["prefect"])]
    for name, info in order:
        if _stop(info):
            stopped.append(name)
    state_path(Path(workdir)).unlink(missing_ok=True)
    return stopped


def status(workdir: Path) -> dict[str, Any]:
    state = _read_state(Path(workdir))
    if not state:
        return {}
    out = {}
    for name, info in _services(state).items():
        entry = {"pid": info.get("pid"), "alive": _alive(info), "url": info.get("url"), "log": info.get("log")}
        if name == "prefect":
            entry["healthy"] = _healthy(f"{info['api_url']}/health")
        elif name == "mlflow":
            entry["healthy"] = _healthy(f"{info['url']}/health")
        out[name] = entry
    return out


def api_url(workdir: Path) -> str | None:
    """The Prefect API of this work dir's running server, if any."""
    state = _read_state(Path(workdir))
    if state and _alive(state["prefect"]):
        return state["prefect"]["api_url"]
    return None
