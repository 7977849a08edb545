"""Test environment: every tool's state in a temp dir, offline and quiet; one Prefect harness; an S3 server."""
import os
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="pipeline-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_DIR / "prefect-home"))
# Every process the suite starts inherits this mark; at the end none may still run (pytest_sessionfinish).
SESSION_MARK = "PIPELINE_TEST_SESSION"
os.environ[SESSION_MARK] = f"{os.getpid()}-{_SESSION_DIR.name}"
os.environ.pop("MLFLOW_TRACKING_URI", None)

from pipeline.core.workspace import setup_environment  # noqa: E402

setup_environment(_SESSION_DIR / "session")

SHARED = Path(__file__).resolve().parents[2] / "shared"
COCO = SHARED / "data" / "car-damage-coco"


@pytest.fixture(scope="session")
def prefect_server():
    """A real (in-process) Prefect server for flow tests, started once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    """A small synthetic LabelMe dataset (with its bad examples), generated once."""
    from pipeline.core.config import DemoConfig
    from pipeline.demo.generator import generate_demo_data

    out = tmp_path_factory.mktemp("demo") / "data"
    generate_demo_data(out, DemoConfig(n_images=60, seed=1, width=256, height=192), progress=False)
    return out


@pytest.fixture
def coco_dir() -> Path:
    if not COCO.is_dir():
        pytest.skip(f"real dataset not present at {COCO}")
    return COCO


@pytest.fixture
def s3(monkeypatch):
    """moto's S3 server on 127.0.0.1 (a random port) with an empty bucket `factory`; the AWS variables
    point boto3 and s3fs at it. Yields the endpoint URL."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (test extra)")
    pytest.importorskip("s3fs", reason="s3fs is not installed (test extra)")
    import boto3
    import fsspec

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    import urllib.request

    # moto's state is per process, not per server: start from nothing, whatever an earlier test left
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30).close()
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="factory")
    fsspec.config.conf.setdefault("s3", {})
    yield endpoint
    server.stop()


def _leftover_processes() -> list:
    """Processes this session started (they carry its mark, orphans included) that still run, but for this
    process's own multiprocessing fork server and resource tracker (they exit with it)."""
    import psutil

    me, mark = os.getpid(), os.environ[SESSION_MARK]
    found = []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "status"]):
        try:
            if proc.pid == me or proc.info["status"] == psutil.STATUS_ZOMBIE or proc.environ().get(SESSION_MARK) != mark:
                continue
        except psutil.Error:
            continue
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["ppid"] == me and ("multiprocessing.forkserver" in cmd or "multiprocessing.resource_tracker" in cmd):
            continue
        found.append(proc)
    return found


def pytest_sessionfinish(session, exitstatus):
    """The suite fails if a process it started is still alive at the end (they are then killed)."""
    import sys

    import psutil

    left = _leftover_processes()
    if left:
        grace = float(os.environ.get("PIPELINE_TEST_LEFTOVER_GRACE_S", "5"))
        _, left = psutil.wait_procs(left, timeout=grace)  # those on their way out
    if not left:
        return
    lines = []
    for proc in left:
        try:
            lines.append(f"  pid {proc.pid} (parent {proc.ppid()}): {' '.join(proc.cmdline())[:200]}")
            proc.kill()
        except psutil.Error:
            pass
    sys.stderr.write(f"\nERROR: {len(left)} process(es) started by the tests are still alive (killed now):\n"
                     + "\n".join(lines) + "\n")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
