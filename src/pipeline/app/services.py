"""Local services behind `pipeline up/down/status`: a Prefect server, an MLflow server and one
process worker per work pool, started in the background for one work dir.

Everything runs as subprocesses of the venv's own `prefect` / `mlflow` console scripts (no Prefect
import here); HTTP goes through urllib. What `up` started is recorded in <workdir>/services.json
(PID, command line and process start time), so `down` stops exactly that and never a recycled PID.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import psutil  # a hard dependency of ultralytics

from pipeline.core.workspace import OFFLINE_ENV

PROJECT_DIR = Path(__file__).resolve().parents[2]
STATE_FILE = "services.json"
STOP_TIMEOUT = 15.0

Log = Callable[[str], Any]
# Keeps the Popen objects of this process's children referenced (no "still running" warnings).
_CHILDREN: dict[int, subprocess.Popen] = {}
# urllib without proxies: the servers are local.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServiceError(RuntimeError):
    """A service could not be started (port taken, crash, timeout)."""


# ---------------------------------------------------------------------------------------------
# small helpers


def _bin(name: str) -> str:
    """The console script `name` next to this interpreter (the venv's), else on PATH."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else (shutil.which(name) or name)


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


def _tail(path: str | Path, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _state_path(workdir: Path) -> Path:
    return Path(workdir) / STATE_FILE


def _read_state(workdir: Path) -> dict[str, Any] | None:
    try:
        return json.loads(_state_path(workdir).read_text())
    except (OSError, ValueError):
        return None


def _entries(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every process of a state, by display name: prefect, mlflow, worker-<pool>."""
    out = {k: state[k] for k in ("prefect", "mlflow") if isinstance(state.get(k), dict)}
    for pool, info in (state.get("workers") or {}).items():
        out[f"worker-{pool}"] = info
    return out


def _process(entry: dict[str, Any]) -> psutil.Process | None:
    """The live process an entry names, or None if gone, a zombie, or a different program."""
    try:
        proc = psutil.Process(int(entry["pid"]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        args = list(entry.get("cmd") or [])[1:]  # argv[0] may show up as `python <script>`
        cmdline = proc.cmdline()
        if not args or cmdline[-len(args):] != args:
            return None
        created = entry.get("create_time")
        if created is not None and abs(proc.create_time() - float(created)) > 1.0:
            return None
        return proc
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# starting and stopping processes


def _spawn(name: str, cmd: list[str], env: dict[str, str], logs: Path, cwd: Path) -> dict[str, Any]:
    """Start `cmd` in its own session, output to logs/<name>.log; return its state entry."""
    log_path = logs / f"{name}.log"
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                env=env, cwd=str(cwd), start_new_session=True)
    _CHILDREN[proc.pid] = proc
    try:
        created: float | None = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        created = None
    return {"pid": proc.pid, "cmd": cmd, "create_time": created, "log": str(log_path)}


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _stop(entries: dict[str, dict[str, Any]], timeout: float = STOP_TIMEOUT) -> list[str]:
    """SIGTERM each verified process group (and descendants), wait, then SIGKILL what is left."""
    stopped: list[str] = []
    procs: list[psutil.Process] = []
    for name, entry in entries.items():
        leader = _process(entry)
        if leader is None:
            continue
        try:
            family = [leader, *leader.children(recursive=True)]
        except psutil.Error:
            family = [leader]
        grouped: set[int] = set()
        try:
            if os.getpgid(leader.pid) == leader.pid:
                os.killpg(leader.pid, signal.SIGTERM)
                grouped = {p.pid for p in family if _pgid(p.pid) == leader.pid}
        except OSError:
            pass
        for p in family:  # one SIGTERM each: a second one makes a Prefect worker SIGKILL itself
            if p.pid not in grouped:
                try:
                    p.terminate()  # psutil refuses if the PID was reused meanwhile
                except psutil.Error:
                    pass
        procs.extend(family)
        stopped.append(name)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    for entry in entries.values():
        child = _CHILDREN.pop(int(entry.get("pid", -1)), None)
        if child is not None:
            try:
                child.wait(timeout=1)
            except (subprocess.TimeoutExpired, OSError):
                pass
    return stopped


def _wait_until(ready: Callable[[], bool], entry: dict[str, Any], what: str, timeout: float) -> float:
    """Poll `ready` until true; raise with the log tail if the process exits or time runs out."""
    t0 = time.monotonic()
    while True:
        if ready():
            return time.monotonic() - t0
        child = _CHILDREN.get(entry["pid"])
        code = child.poll() if child is not None else None
        if code is not None or (child is None and _process(entry) is None):
            raise ServiceError(f"{what} exited (code {code}) before it was ready; "
                               f"last lines of {entry['log']}:\n{_tail(entry['log'])}")
        if time.monotonic() - t0 > timeout:
            raise ServiceError(f"{what} not ready after {timeout:.0f} s; "
                               f"last lines of {entry['log']}:\n{_tail(entry['log'])}")
        time.sleep(0.5)


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
                [_bin("prefect"), "--no-prompt", "work-pool", "create", pool, "--type", "process"],
                env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT), out_path)
    for pool, (proc, out_path) in running.items():
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        out = _tail(out_path)
        if code != 0 and "already exists" not in out and _http("GET", f"{api}/work_pools/{pool}")[0] != 200:
            raise ServiceError(f"creating work pool {pool!r} failed (exit {code}); last lines of {out_path}:\n{out}")
        log(f"work pool {pool!r} created")


def _ensure_gpu_limit(api: str, log: Log) -> str:
    """The global concurrency limit `gpu-host-<hostname>` (1 slot) the GPU tasks take."""
    name = f"gpu-host-{socket.gethostname()}"
    code, _ = _http("GET", f"{api}/v2/concurrency_limits/{name}")
    if code == 200:
        log(f"concurrency limit {name!r} exists")
        return name
    code, body = _http("POST", f"{api}/v2/concurrency_limits/", {"name": name, "limit": 1})
    if code not in (200, 201) and _http("GET", f"{api}/v2/concurrency_limits/{name}")[0] != 200:
        raise ServiceError(f"creating concurrency limit {name!r} failed: HTTP {code} {body}")
    log(f"concurrency limit {name!r} created (1 slot)")
    return name


# ---------------------------------------------------------------------------------------------
# public API


def up(workdir: Path, prefect_port: int = 4200, mlflow_port: int = 5000, pools: tuple[str, ...] = ("cpu", "gpu"),
       host: str = "127.0.0.1", timeout: float = 180, log: Log = print) -> dict[str, Any]:
    """Start the Prefect server, the MLflow server and one process worker per pool; return the state.

    If this work dir's services already run, report them and start nothing. A taken port, or any
    service not ready within `timeout` seconds, raises ServiceError (a RuntimeError) and leaves
    nothing running that this call started.
    """
    workdir = Path(workdir).resolve()
    existing = _read_state(workdir)
    if existing:
        entries = _entries(existing)
        live = {name for name, entry in entries.items() if _process(entry) is not None}
        if entries and live == set(entries):
            log(f"already running for {workdir}: {', '.join(sorted(live))} "
                f"(Prefect {existing['prefect']['url']}, MLflow {existing['mlflow']['url']}); "
                f"`pipeline down` stops them")
            return existing
        if live:
            log(f"partly running ({', '.join(sorted(live))} alive): stopping them and starting afresh")
        _stop(entries)
        _state_path(workdir).unlink(missing_ok=True)

    if prefect_port == mlflow_port:
        raise ServiceError(f"--prefect-port and --mlflow-port are both {prefect_port}: pick two different ports")
    for port, flag, what in ((prefect_port, "--prefect-port", "Prefect server"),
                             (mlflow_port, "--mlflow-port", "MLflow server")):
        if not _port_free(host, port):
            raise ServiceError(f"port {port} on {host} is already in use (wanted for the {what}); "
                               f"free it or choose another port with {flag}")

    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    url_host = _url_host(host)
    prefect_url = f"http://{url_host}:{prefect_port}"
    api = f"{prefect_url}/api"
    mlflow_url = f"http://{url_host}:{mlflow_port}"
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

    started: dict[str, dict[str, Any]] = {}
    t0 = time.monotonic()
    since = time.time()
    try:
        log(f"starting Prefect server on {prefect_url} and MLflow server on {mlflow_url} (logs in {logs})")
        prefect = _spawn("prefect-server", [_bin("prefect"), "server", "start", "--host", host,
                                            "--port", str(prefect_port)], server_env, logs, workdir)
        started["prefect"] = prefect
        mlflow = _spawn("mlflow-server", [
            _bin("mlflow"), "server", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
            "--artifacts-destination", str(workdir / "mlartifacts"), "--host", host,
            "--port", str(mlflow_port), "--workers", "1"], mlflow_env, logs, workdir)
        started["mlflow"] = mlflow
        took = _wait_until(lambda: _healthy(f"{api}/health"), prefect, "Prefect server", timeout)
        log(f"Prefect server ready ({took:.0f} s)")
        _wait_until(lambda: _healthy(f"{mlflow_url}/health"), mlflow, "MLflow server", timeout)
        log("MLflow server ready")
        prefect.update(url=prefect_url, api_url=api)
        mlflow.update(url=mlflow_url)

        _ensure_pools(api, pools, client_env, logs, log)
        gpu_limit = _ensure_gpu_limit(api, log)

        workers: dict[str, dict[str, Any]] = {}
        hostname = socket.gethostname()
        for pool in pools:
            name = f"{pool}-{hostname}"
            entry = _spawn(f"worker-{pool}", [
                _bin("prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", name,
                "--install-policy", "never", "--no-create-pool-if-not-found"], client_env, logs, PROJECT_DIR)
            entry.update(pool=pool, name=name)
            workers[pool] = started[f"worker-{pool}"] = entry
        for pool, entry in workers.items():
            _wait_until(lambda p=pool, e=entry: _worker_online(api, p, e["name"], since), entry,
                        f"worker for pool {pool!r}", timeout)
            log(f"worker for pool {pool!r} online")
    except BaseException:
        _stop(started)
        raise

    state = {"prefect": prefect, "mlflow": mlflow, "workers": workers, "pools": list(pools),
             "gpu_limit": gpu_limit, "host": host, "workdir": str(workdir),
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
    workers = {k: v for k, v in entries.items() if k.startswith("worker-")}
    servers = {k: v for k, v in entries.items() if k not in workers}
    stopped = _stop(workers) + _stop(servers)  # workers first, while their server still answers
    _state_path(Path(workdir)).unlink(missing_ok=True)
    return stopped


def status(workdir: Path) -> dict[str, dict[str, Any]]:
    """Per service: pid, alive, url, log, and for the servers whether the health endpoint answers."""
    state = _read_state(Path(workdir))
    if not state:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, entry in _entries(state).items():
        alive = _process(entry) is not None
        info: dict[str, Any] = {"pid": entry.get("pid"), "alive": alive, "url": entry.get("url"), "log": entry.get("log")}
        if name == "prefect":
            info["healthy"] = alive and _healthy(f"{entry['api_url']}/health")
        elif name == "mlflow":
            info["healthy"] = alive and _healthy(f"{entry['url']}/health")
        else:
            info["pool"] = entry.get("pool")
        out[name] = info
    return out


def api_url(workdir: Path) -> str | None:
    """The Prefect API URL of this work dir's running server (from services.json), else None."""
    state = _read_state(Path(workdir))
    prefect = (state or {}).get("prefect")
    if not isinstance(prefect, dict) or _process(prefect) is None:
        return None
    return prefect.get("api_url")
