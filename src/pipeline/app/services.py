"""Local services behind `pipeline up/down/status`: a Prefect server, an MLflow server and one
process worker per work pool, started in the background for one work dir; with `--dask N` a local
Dask scheduler and N workers (app/dask_services.py), with `--team` both servers on a local Postgres
(app/postgres.py). The `gpu` pool's worker runs one flow run at a time (`--limit 1`): one GPU job
per host comes from the infrastructure.

Everything runs as subprocesses of the venv's own `prefect` / `mlflow` console scripts (no Prefect
import here); HTTP goes through urllib. What `up` started is recorded in <workdir>/services.json
(PID, command line and process start time), so `down` stops exactly that and never a recycled PID.
"""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pipeline.app.process import ServiceError, bin_path, live_process, log_tail, signals_unwind, spawn, stop, wait_until
from pipeline.core.workspace import OFFLINE_ENV

STATE_FILE = "services.json"

Log = Callable[[str], Any]
# urllib without proxies: the servers are local.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---------------------------------------------------------------------------------------------
# small helpers


def _url_host(host: str) -> str:
    """The address clients use for a bind address: an unspecified (wildcard) address means loopback.

    Nothing binds to a wildcard by default (`up` binds to 127.0.0.1); this only turns a wildcard the
    user chose with `--host` into a URL clients can reach."""
    if not host:
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # a host name
        return host
    if ip.is_unspecified:
        return "127.0.0.1" if ip.version == 4 else "[::1]"
    return f"[{host}]" if ip.version == 6 else host


def _http(method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """One JSON request; returns (status, parsed body or None). Status 0: no answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with _HTTP.open(req, timeout=timeout) as resp:
            code, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        code, raw = exc.code, exc.read()
    except (OSError, ValueError):
        return 0, None
    try:
        return code, json.loads(raw) if raw else None
    except ValueError:
        return code, raw.decode(errors="replace")


def _healthy(url: str) -> bool:
    return _http("GET", url, timeout=3.0)[0] == 200


def _port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port (TIME_WAIT leftovers do not count)."""
    try:
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServiceError(f"invalid host {host!r}: {exc}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError:
            return False
    return True


def _state_path(workdir: Path) -> Path:
    return Path(workdir) / STATE_FILE


def _read_state(workdir: Path) -> dict[str, Any] | None:
    try:
        return json.loads(_state_path(workdir).read_text())
    except (OSError, ValueError):
        return None


def _entries(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every process of a state, by display name: postgres, prefect, mlflow, worker-<pool>, dask-*."""
    from pipeline.app.dask_services import dask_entries

    out = {k: state[k] for k in ("postgres", "prefect", "mlflow") if isinstance(state.get(k), dict)}
    for pool, info in (state.get("workers") or {}).items():
        out[f"worker-{pool}"] = info
    out.update(dask_entries(state))
    return out


def _parse_time(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def _worker_online(api: str, pool: str, name: str, since: float) -> bool:
    """Whether worker `name` of `pool` sent a heartbeat after `since` (epoch seconds)."""
    code, body = _http("POST", f"{api}/work_pools/{pool}/workers/filter", {})
    if code != 200 or not isinstance(body, list):
        return False
    return any(w.get("name") == name and _parse_time(w.get("last_heartbeat_time")) >= since - 5 for w in body)


def _ensure_pools(api: str, pools: tuple[str, ...], env: dict[str, str], logs: Path, log: Log) -> None:
    """Create the missing process-type work pools (the CLI fills in the default job template)."""
    running: dict[str, tuple[subprocess.Popen, Path]] = {}
    for pool in pools:
        if _http("GET", f"{api}/work_pools/{pool}")[0] == 200:
            log(f"work pool {pool!r} exists")
            continue
        out_path = logs / f"work-pool-{pool}.log"
        with open(out_path, "wb") as fh:  # the creations run side by side: each CLI call takes ~2 s
            running[pool] = (subprocess.Popen(
                [bin_path("prefect"), "--no-prompt", "work-pool", "create", pool, "--type", "process"],
                env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT), out_path)
    for pool, (proc, out_path) in running.items():
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        out = log_tail(out_path)
        if code != 0 and "already exists" not in out and _http("GET", f"{api}/work_pools/{pool}")[0] != 200:
            raise ServiceError(f"creating work pool {pool!r} failed (exit {code}); last lines of {out_path}:\n{out}")
        log(f"work pool {pool!r} created")


# ---------------------------------------------------------------------------------------------
# public API


def _running(workdir: Path, log: Log) -> dict[str, Any] | None:
    """This work dir's state if every service it names runs; otherwise stop what is left, None."""
    existing = _read_state(workdir)
    if not existing:
        return None
    entries = _entries(existing)
    live = {name for name, entry in entries.items() if live_process(entry) is not None}
    if entries and live == set(entries):
        log(f"already running for {workdir}: {', '.join(sorted(live))} "
            f"(Prefect {existing['prefect']['url']}, MLflow {existing['mlflow']['url']}); "
            f"`pipeline down` stops them")
        return existing
    if live:
        log(f"partly running ({', '.join(sorted(live))} alive): stopping them and starting afresh")
    stop(entries)
    _state_path(workdir).unlink(missing_ok=True)
    return None


def _check_ports(host: str, prefect_port: int, mlflow_port: int) -> None:
    if prefect_port == mlflow_port:
        raise ServiceError(f"--prefect-port and --mlflow-port are both {prefect_port}: pick two different ports")
    for port, flag, what in ((prefect_port, "--prefect-port", "Prefect server"),
                             (mlflow_port, "--mlflow-port", "MLflow server")):
        if not _port_free(host, port):
            raise ServiceError(f"port {port} on {host} is already in use (wanted for the {what}); "
                               f"free it or choose another port with {flag}")


def _environments(workdir: Path, api: str, mlflow_url: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """The environments of the Prefect server, the MLflow server and the workers."""
    base = {**OFFLINE_ENV, **os.environ}  # the caller's settings win, as in setup_environment
    server_home = workdir / ".prefect-server"
    server_home.mkdir(exist_ok=True)
    client_home = workdir / ".prefect"
    client_home.mkdir(exist_ok=True)
    server_env = {**base, "PREFECT_HOME": str(server_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                  "PREFECT_API_URL": api, "PREFECT_UI_API_URL": os.environ.get("PREFECT_UI_API_URL", api)}
    mlflow_env = {**base, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": base.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
    client_env = {**base, "PREFECT_HOME": str(client_home), "PREFECT_API_URL": api,
                  "MLFLOW_TRACKING_URI": mlflow_url}
    client_env.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(workdir / "prefect-results"))
    client_env.pop("PREFECT_API_KEY", None)
    return server_env, mlflow_env, client_env


def _start_workers(api: str, pools: tuple[str, ...], env: dict[str, str], logs: Path, workdir: Path,
                   since: float, timeout: float, started: dict[str, dict[str, Any]], log: Log) -> dict[str, dict[str, Any]]:
    """One process worker per pool, started in the work dir (deployments set their own working
    directory in their pull step); returns once each sent a heartbeat."""
    workers: dict[str, dict[str, Any]] = {}
    hostname = socket.gethostname()
    for pool in pools:
        name = f"{pool}-{hostname}"
        limit = ["--limit", "1"] if pool == "gpu" else []  # one GPU job at a time on this host
        entry = spawn(f"worker-{pool}", [
            bin_path("prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", name,
            "--install-policy", "never", "--no-create-pool-if-not-found", *limit], env, logs, workdir)
        entry.update(pool=pool, name=name)
        workers[pool] = started[f"worker-{pool}"] = entry
    for pool, entry in workers.items():
        wait_until(lambda p=pool, e=entry: _worker_online(api, p, e["name"], since), entry,
                   f"worker for pool {pool!r}", timeout)
        log(f"worker for pool {pool!r} online")
    return workers


def up(workdir: Path, prefect_port: int = 4200, mlflow_port: int = 5000, pools: tuple[str, ...] = ("cpu", "gpu"),
       host: str = "127.0.0.1", timeout: float = 180, log: Log = print, dask_workers: int = 0,
       dask_port: int = 8786, dask_dashboard_port: int = 8787, team: bool = False,
       postgres_port: int = 5432) -> dict[str, Any]:
    """Start the Prefect server, the MLflow server and one process worker per pool; return the state.

    `dask_workers` > 0: also a Dask scheduler (dask_port, dashboard on dask_dashboard_port) and that many
    workers. `team`: both servers on a local Postgres (postgres_port) instead of SQLite.

    If this work dir's services already run, report them and start nothing. A taken port, or any
    service not ready within `timeout` seconds, raises ServiceError (a RuntimeError) and leaves
    nothing running that this call started.
    """
    workdir = Path(workdir).resolve()
    existing = _running(workdir, log)
    if existing:
        return existing
    _check_ports(host, prefect_port, mlflow_port)
    if dask_workers:
        from pipeline.app.dask_services import check_dask_ports

        check_dask_ports(host, (dask_port, dask_dashboard_port), _port_free)
    if team and not _port_free("127.0.0.1", postgres_port):
        raise ServiceError(f"port {postgres_port} on 127.0.0.1 is already in use (wanted for Postgres); use --postgres-port")
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    url_host = _url_host(host)
    prefect_url = f"http://{url_host}:{prefect_port}"
    api = f"{prefect_url}/api"
    mlflow_url = f"http://{url_host}:{mlflow_port}"
    server_env, mlflow_env, client_env = _environments(workdir, api, mlflow_url)
    backend = f"sqlite:///{workdir / 'mlflow.db'}"
    extra: dict[str, Any] = {}

    started: dict[str, dict[str, Any]] = {}
    t0 = time.monotonic()
    since = time.time()
    unwind = signals_unwind()  # SIGTERM / SIGHUP while starting: stop what was started, as Ctrl-C does
    unwind.__enter__()
    try:
        if team:
            from pipeline.app.postgres import start_postgres, urls

            extra["postgres"] = start_postgres(workdir, postgres_port, logs, server_env, timeout, started, log)
            server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = urls(postgres_port)["prefect"]
            backend = urls(postgres_port)["mlflow"]
        if dask_workers:
            from pipeline.app.dask_services import DASK_ADDRESS_ENV, start_dask

            extra["dask"] = start_dask(dask_workers, host, url_host, dask_port, dask_dashboard_port, client_env, logs,
                                       workdir, timeout, started, _http, log)
            client_env[DASK_ADDRESS_ENV] = extra["dask"]["address"]
        log(f"starting Prefect server on {prefect_url} and MLflow server on {mlflow_url} (logs in {logs})")
        prefect = spawn("prefect-server", [bin_path("prefect"), "server", "start", "--host", host,
                                           "--port", str(prefect_port)], server_env, logs, workdir)
        started["prefect"] = prefect
        mlflow = spawn("mlflow-server", [
            bin_path("mlflow"), "server", "--backend-store-uri", backend,
            "--artifacts-destination", str(workdir / "mlartifacts"), "--host", host,
            "--port", str(mlflow_port), "--workers", "1"], mlflow_env, logs, workdir)
        started["mlflow"] = mlflow
        took = wait_until(lambda: _healthy(f"{api}/health"), prefect, "Prefect server", timeout)
        log(f"Prefect server ready ({took:.0f} s)")
        wait_until(lambda: _healthy(f"{mlflow_url}/health"), mlflow, "MLflow server", timeout)
        log("MLflow server ready")
        prefect.update(url=prefect_url, api_url=api)
        mlflow.update(url=mlflow_url)

        _ensure_pools(api, pools, client_env, logs, log)
        workers = _start_workers(api, pools, client_env, logs, workdir, since, timeout, started, log)
    except BaseException:
        stop(started)
        raise
    finally:
        unwind.__exit__(None, None, None)

    state = {"prefect": prefect, "mlflow": mlflow, "workers": workers, "pools": list(pools), **extra,
             "team": team, "host": host, "workdir": str(workdir),
             "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tmp = _state_path(workdir).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(_state_path(workdir))
    log(f"all up in {time.monotonic() - t0:.0f} s")
    return state


def down(workdir: Path) -> list[str]:
    """Stop what `up` started for this work dir (verified by PID, command line and start time)."""
    state = _read_state(Path(workdir))
    if state is None:
        _state_path(Path(workdir)).unlink(missing_ok=True)
        return []
    entries = _entries(state)
    workers = {k: v for k, v in entries.items() if k.startswith(("worker-", "dask-worker-"))}
    database = {k: v for k, v in entries.items() if k == "postgres"}
    servers = {k: v for k, v in entries.items() if k not in workers and k not in database}
    # workers first, while their server still answers; the database last, after its servers
    stopped = stop(workers) + stop(servers) + stop(database)
    _state_path(Path(workdir)).unlink(missing_ok=True)
    return stopped


def status(workdir: Path) -> dict[str, dict[str, Any]]:
    """Per service: pid, alive, url, log, and for the servers whether the health endpoint answers."""
    state = _read_state(Path(workdir))
    if not state:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, entry in _entries(state).items():
        alive = live_process(entry) is not None
        info: dict[str, Any] = {"pid": entry.get("pid"), "alive": alive, "url": entry.get("url"), "log": entry.get("log")}
        if name == "prefect":
            info["healthy"] = alive and _healthy(f"{entry['api_url']}/health")
        elif name == "mlflow":
            info["healthy"] = alive and _healthy(f"{entry['url']}/health")
        elif name == "dask-scheduler":
            info.update(healthy=alive and _healthy(f"{entry['url']}/health"), address=entry.get("address"))
        elif name == "postgres" or name.startswith("dask-worker-"):
            info.update({k: entry[k] for k in ("port", "data", "gpu") if k in entry})
        else:
            info["pool"] = entry.get("pool")
        out[name] = info
    return out


def api_url(workdir: Path) -> str | None:
    """The Prefect API URL of this work dir's running server (from services.json), else None."""
    state = _read_state(Path(workdir))
    prefect = (state or {}).get("prefect")
    if not isinstance(prefect, dict) or live_process(prefect) is None:
        return None
    return prefect.get("api_url")
