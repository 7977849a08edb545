"""Test environment: every tool's state in a temp dir, offline and quiet; one Prefect harness."""
import os
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="pipeline-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_DIR / "prefect-home"))
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
