"""`pipeline up/down/status`: real Prefect + MLflow servers and process workers on free loopback
ports; a taken port starts nothing; `down` never kills a process whose PID was recycled."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from pipeline.app.services import api_url, down, status, up
from pipeline.core.store import process_start

pytestmark = pytest.mark.slow

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http(method: str, url: str, body: object = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with NO_PROXY.open(req, timeout=10) as resp:
        raw = resp.read()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:  # MLflow's /health answers plain "OK"
            return resp.status, raw.decode()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_up_status_down(tmp_path: Path) -> None:
    pport, mport = free_port(), free_port()
    while mport == pport:
        mport = free_port()
    pids: list[int] = []
    try:
        state = up(tmp_path, prefect_port=pport, mlflow_port=mport, timeout=150, log=lambda *a: None)
        api = state["prefect"]["api_url"]
        assert api == f"http://127.0.0.1:{pport}/api"
        assert state["mlflow"]["url"] == f"http://127.0.0.1:{mport}"
        assert http("GET", f"{api}/health")[0] == 200
        assert http("GET", f"{state['mlflow']['url']}/health")[0] == 200
        code, pools = http("POST", f"{api}/work_pools/filter", {})
        assert code == 200 and {"cpu", "gpu"} <= {p["name"] for p in pools}
        assert all(p["type"] == "process" for p in pools if p["name"] in ("cpu", "gpu"))
        assert set(state["workers"]) == {"cpu", "gpu"}
        for w in state["workers"].values():
            assert psutil.Process(w["pid"]).is_running()
        # one GPU job per host comes from the gpu worker's own limit, not from a global concurrency limit
        gpu_cmd = " ".join(psutil.Process(state["workers"]["gpu"]["pid"]).cmdline())
        assert "--limit 1" in gpu_cmd and "--limit" not in " ".join(psutil.Process(state["workers"]["cpu"]["pid"]).cmdline())
        saved = json.loads((tmp_path / "services.json").read_text())
        assert saved["prefect"]["pid"] == state["prefect"]["pid"] and saved["pools"] == ["cpu", "gpu"]

        st = status(tmp_path)
        assert set(st) == {"prefect", "mlflow", "worker-cpu", "worker-gpu"}
        assert all(info["alive"] for info in st.values()), st
        assert st["prefect"]["healthy"] and st["mlflow"]["healthy"]
        assert api_url(tmp_path) == api

        leaders = [e["pid"] for e in (state["prefect"], state["mlflow"], *state["workers"].values())]
        pids = leaders + [c.pid for pid in leaders for c in psutil.Process(pid).children(recursive=True)]
        again = up(tmp_path, prefect_port=pport, mlflow_port=mport, timeout=150, log=lambda *a: None)
        assert again == state  # reported, nothing new started
        servers = [p for p in psutil.process_iter(["cmdline"])
                   if p.info["cmdline"] and "server" in p.info["cmdline"] and str(pport) in p.info["cmdline"]]
        assert len(servers) == 1
    finally:
        stopped = down(tmp_path)
    assert sorted(stopped) == ["mlflow", "prefect", "worker-cpu", "worker-gpu"]
    assert all(gone(pid) for pid in pids), [p for p in pids if not gone(p)]
    assert not (tmp_path / "services.json").exists()
    assert port_free(pport) and port_free(mport)
    assert status(tmp_path) == {} and api_url(tmp_path) is None
    assert down(tmp_path) == []


@pytest.mark.parametrize("which", ["prefect", "mlflow"])
def test_taken_port_starts_nothing(tmp_path: Path, which: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = free_port()
        ports = {"prefect_port": port, "mlflow_port": other} if which == "prefect" else \
                {"prefect_port": other, "mlflow_port": port}
        with pytest.raises(RuntimeError) as err:
            up(tmp_path, timeout=5, log=lambda *a: None, **ports)
    message = str(err.value)
    assert str(port) in message and f"--{which}-port" in message
    assert not (tmp_path / "services.json").exists()
    assert not (tmp_path / "logs").exists()


def test_down_leaves_recycled_pids_alive(tmp_path: Path) -> None:
    """services.json names live PIDs that are not what `up` started: down must not touch them."""
    sleeper = subprocess.Popen(["sleep", "120"])
    code = "import time; time.sleep(120)"
    lookalike = subprocess.Popen([sys.executable, "-c", code])  # same command, other start time
    try:
        created = process_start(lookalike.pid)
        prefect_bin = str(Path(sys.executable).with_name("prefect"))
        state = {
            "prefect": {"pid": sleeper.pid, "cmd": [prefect_bin, "server", "start", "--port", "4200"],
                        "start": process_start(sleeper.pid), "log": "x",
                        "url": "http://127.0.0.1:4200", "api_url": "http://127.0.0.1:4200/api"},
            "mlflow": {"pid": lookalike.pid, "cmd": [sys.executable, "-c", code], "start": created - 10_000,
                       "log": "x", "url": "http://127.0.0.1:5000"},
            "workers": {"cpu": {"pid": sleeper.pid, "cmd": [prefect_bin, "worker", "start", "--pool", "cpu"],
                                "start": None, "log": "x", "pool": "cpu"}},
            "pools": ["cpu"],
        }
        (tmp_path / "services.json").write_text(json.dumps(state))
        assert api_url(tmp_path) is None
        assert not any(info["alive"] for info in status(tmp_path).values())
        assert down(tmp_path) == []
        assert sleeper.poll() is None and lookalike.poll() is None
        assert not (tmp_path / "services.json").exists()
    finally:
        for proc in (sleeper, lookalike):
            proc.kill()
            proc.wait()


def test_client_urls_map_wildcard_binds_to_loopback():
    from pipeline.app.services import _url_host

    assert _url_host("") == _url_host("0.0.0.0") == "127.0.0.1"
    assert _url_host("::") == "[::1]" and _url_host("fe80::1") == "[fe80::1]"
    assert _url_host("127.0.0.1") == "127.0.0.1" and _url_host("localhost") == "localhost"
