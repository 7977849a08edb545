"""Servers and processes: `pipeline app`, `pipeline serve-model` and `pipeline up` stop their children on
SIGTERM and SIGINT (and the app's Streamlit dies with its parent even on SIGKILL); serve-model's static
server serves only its own files; uploads are bounded; the suite itself fails when a test leaves a
process behind (tests/conftest.py)."""
from __future__ import annotations

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
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = str(Path(sys.executable).with_name("pipeline"))
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def family(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        return []


def all_gone(procs: list[psutil.Process], timeout: float = 20) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
@pytest.mark.slow
def test_pipeline_app_stops_streamlit_on_sigterm_sigint_and_when_killed(tmp_path, sig):
    pytest.importorskip("streamlit")
    (tmp_path / "work").mkdir()
    proc = subprocess.Popen([PIPELINE, "app", "--workdir", str(tmp_path / "work"), "--port", str(free_port())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        streamlit = wait_for(lambda: [p for p in family(proc) if "streamlit" in " ".join(p.cmdline())], 60,
                             "the Streamlit child")
        time.sleep(1.0)
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=30)
        assert not all_gone(streamlit), "Streamlit outlived `pipeline app`"
        if sig != signal.SIGKILL:
            assert code == 0, proc.stderr.read().decode(errors="replace")[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _variant(tmp_path: Path) -> Path:
    variant = tmp_path / "tfjs_fp16"
    variant.mkdir()
    (variant / "model.json").write_text('{"format": "graph-model", "weightsManifest": []}')
    (variant / "card.json").write_text(json.dumps({"variant": "tfjs_fp16", "class_names": ["a", "b"], "image_size": 32}))
    return variant


def _get(url: str) -> tuple[int, bytes]:
    try:
        with NO_PROXY.open(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _raw_get(port: int, target: str) -> tuple[int, bytes]:
    """A request line sent as is (urllib would normalise `..` away)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.slow
def test_serve_model_serves_only_its_own_files_and_stops_on_sigterm(tmp_path):
    from pipeline.core.config import PipelineConfig
    from pipeline.export.runtimes import node_modules

    if node_modules(PipelineConfig().export)[0] is None:
        pytest.skip("no Node packages (export/node_modules): `make export-env`")
    work = tmp_path / "work"
    secret = "TOP-SECRET-OUTSIDE-THE-SITE"
    (tmp_path / "secret.txt").write_text(secret)
    (work / ".cache").mkdir(parents=True)
    (work / ".cache" / "secret.txt").write_text(secret)
    port = free_port()
    proc = subprocess.Popen([PIPELINE, "serve-model", "--variant-dir", str(_variant(tmp_path)), "--port", str(port),
                             "--workdir", str(work)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for(lambda: _port_open(port), 60, "serve-model to listen")
        assert _get(f"http://127.0.0.1:{port}/model/card.json")[0] == 200
        for target in ("/../secret.txt", "/../../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt",
                       "/vendor/../../secret.txt", "/model/%2e%2e/%2e%2e/secret.txt", "//etc/passwd",
                       "/..%5c..%5csecret.txt", f"/{tmp_path}/secret.txt", "/etc/passwd", "/.cache/secret.txt"):
            code, body = _raw_get(port, target)
            assert code in (400, 404), (target, code)
            assert secret.encode() not in body and b"root:" not in body, target
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_pipeline_up_stops_what_it_started_when_terminated_while_starting(tmp_path):
    work = tmp_path / "work"
    proc = subprocess.Popen([PIPELINE, "up", "--workdir", str(work), "--prefect-port", str(free_port()),
                             "--mlflow-port", str(free_port())], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        servers = wait_for(lambda: [p for p in family(proc) if p.ppid() == proc.pid] if len(
            [p for p in family(proc) if p.ppid() == proc.pid]) >= 2 else None, 120, "the two servers")
        started = family(proc)
        os.kill(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode(errors="replace")
        assert proc.returncode != 0, out
        assert not all_gone(started + servers), out
        assert not (work / "services.json").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_uploads_are_bounded_in_size_and_pixels():
    from hostile_corpus import png_bomb
    from PIL import Image

    from pipeline.app.webapp import backend
    from pipeline.app.webapp.launch import streamlit_command

    img, why = backend.read_upload(png_bomb(20000, 20000))
    assert img is None and "too large" in why
    img, why = backend.read_upload(b"\xff\xd8" + b"\0" * (backend.UPLOAD_MAX_MB * 1024 * 1024 + 1))
    assert img is None and "limit is 20 MB" in why
    import io

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(buf, "PNG")
    img, why = backend.read_upload(buf.getvalue())
    assert why is None and img.size == (64, 48)
    cmd = streamlit_command(8501)
    assert cmd[cmd.index("--server.maxUploadSize") + 1] == str(backend.UPLOAD_MAX_MB)
    page = (ROOT / "src" / "pipeline" / "export" / "web" / "app.js").read_text()
    assert "MAX_UPLOAD_MB" in page and "MAX_PIXELS" in page


@pytest.mark.slow
def test_the_suite_fails_when_a_test_leaves_a_process_behind(tmp_path):
    shutil.copyfile(Path(__file__).parent.parent / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_leaky.py").write_text(
        "import subprocess, sys\n"
        "def test_leaks():\n"
        "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")},
                              "PIPELINE_TEST_LEFTOVER_GRACE_S": "0.5"})  # a session of its own, not an xdist worker
    assert out.returncode == 1, out.stdout + out.stderr
    assert "process(es) started by the tests are still alive" in out.stderr and "time.sleep(300)" in out.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
@pytest.mark.slow
def test_a_killed_pipeline_run_leaves_no_temporary_prefect_server(tmp_path, sig):
    from pipeline.core.config import DemoConfig
    from pipeline.demo.generator import generate_demo_data

    generate_demo_data(tmp_path / "data", DemoConfig(n_images=20, seed=1, width=160, height=120), progress=False)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # no server: Prefect starts its own
    proc = subprocess.Popen([PIPELINE, "run", "data-prep", "--dataset", str(tmp_path / "data"), "--workdir",
                             str(tmp_path / "work"), "--no-progress"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        server = wait_for(lambda: [p for p in family(proc) if "uvicorn" in " ".join(p.cmdline())], 120,
                          "the temporary Prefect server")
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
        assert not all_gone(server, timeout=30), "the temporary Prefect server outlived `pipeline run`"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
