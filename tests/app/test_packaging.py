"""The package installs as a wheel and runs outside the checkout.

Fast: pyproject's `packages` list equals the package folders of the tree, the packaged
prefect.yaml uses module entrypoints that Prefect's own loader resolves from a directory outside
the checkout, the packaged configs are the checkout's, and code_version() knows the commit of an
editable install. Slow: build the wheel, install it into a fresh venv, run the `pipeline` console
script from outside the checkout, and check that every `pipeline*` module it imported came from
that venv.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TOP_PACKAGES = {"pipeline": ROOT / "src" / "pipeline", "pipeline_tasks": ROOT / "tasks", "pipeline_flows": ROOT / "flows"}
OWN = tuple(TOP_PACKAGES)


def tree_packages() -> set[str]:
    found = set()
    for name, folder in TOP_PACKAGES.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            found.add(".".join((name, *rel)))
    return found


# Not passed to children: they must not see the checkout (PYTHONPATH), and the CLI puts every
# tool's state into its own work dir, as for a user (not into this test session's dirs).
DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PREFECT_HOME", "PREFECT_API_URL", "PREFECT_LOCAL_STORAGE_PATH",
               "MLFLOW_TRACKING_URI", "YOLO_CONFIG_DIR", "MPLCONFIGDIR", "NUMBA_CACHE_DIR", "TORCH_HOME")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    return {**env, "PYTHONNOUSERSITE": "1", **extra}


def test_pyproject_packages_match_the_tree():
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert len(listed) == len(set(listed)), "a package is listed twice"
    assert set(listed) == tree_packages()
    # a folder of modules without __init__.py would be left out of the wheel silently
    for folder in TOP_PACKAGES.values():
        for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
            if any(sub.glob("*.py")):
                assert (sub / "__init__.py").is_file(), f"{sub} has modules but no __init__.py"


def test_every_data_file_is_package_data():
    """Files under src/pipeline other than modules reach the wheel only through package-data."""
    import glob

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"].get("package-data", {})
    covered: set[Path] = set()
    for package, globs in patterns.items():
        base = TOP_PACKAGES[package.split(".")[0]].joinpath(*package.split(".")[1:])
        for pattern in globs:
            covered |= {Path(f) for f in glob.glob(str(base / pattern), recursive=True) if Path(f).is_file()}
    data = {p for p in TOP_PACKAGES["pipeline"].rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert data, "no package data found (resources/ missing?)"
    missing = sorted(str(p.relative_to(ROOT)) for p in data - covered)
    assert not missing, f"not in [tool.setuptools.package-data], so left out of the wheel: {missing}"


def test_packaged_files_are_the_checkouts():
    from pipeline.app.deploy import DEPLOYMENTS
    from pipeline.app.packaged import DEFAULT_CONFIG, DEMO_CONFIG, PREFECT_YAML, packaged_file
    from pipeline.core.config import PipelineConfig, load_config

    assert (ROOT / "prefect.yaml").read_text() == packaged_file(PREFECT_YAML).read_text()
    for rel in (DEFAULT_CONFIG, DEMO_CONFIG):
        assert packaged_file(rel).read_text() == (ROOT / rel).read_text()
    assert load_config(packaged_file(DEFAULT_CONFIG)) == PipelineConfig()
    assert load_config(packaged_file(DEMO_CONFIG)).detect.backend == "none"
    doc = yaml.safe_load(packaged_file(PREFECT_YAML).read_text())
    assert tuple(d["name"] for d in doc["deployments"]) == DEPLOYMENTS
    with pytest.raises(FileNotFoundError, match="not in the installed package"):
        packaged_file("configs/nope.yaml")


# Loads every entrypoint of the packaged prefect.yaml with Prefect's own loader (what `prefect
# deploy` and a worker's flow run call).
LOAD_ENTRYPOINTS = """
import inspect, json, yaml
from prefect.flows import Flow, load_flow_from_entrypoint
from pipeline.app.packaged import packaged_file
doc = yaml.safe_load(packaged_file("prefect.yaml").read_text())
out = {}
for d in doc["deployments"]:
    flow = load_flow_from_entrypoint(d["entrypoint"], use_placeholder_flow=False)
    assert isinstance(flow, Flow), d
    out[d["name"]] = [d["entrypoint"], flow.name, inspect.getfile(flow.fn)]
print(json.dumps(out))
"""


def check_entrypoints(python: str, cwd: Path, package_root: Path) -> dict:
    proc = subprocess.run([python, "-I", "-c", LOAD_ENTRYPOINTS], cwd=cwd,
                          env=clean_env(PREFECT_HOME=str(cwd / ".prefect")), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    flows = {"nightly": "factory", "adhoc": "factory", "data-prep": "data-prep", "run-phase": "run-phase", "gpu": "phase"}
    assert {name: v[1] for name, v in loaded.items()} == flows
    for entrypoint, _, source in loaded.values():
        assert ".py:" not in entrypoint and entrypoint.startswith("pipeline_flows."), entrypoint
        assert Path(source).resolve().is_relative_to(package_root.resolve()), source
    return loaded


@pytest.mark.slow
def test_entrypoints_resolve_outside_the_checkout(tmp_path):
    check_entrypoints(sys.executable, tmp_path, TOP_PACKAGES["pipeline_flows"])


def test_code_version_commit(monkeypatch):
    from pipeline.core import store

    store.code_version.cache_clear()
    monkeypatch.setenv(store.GIT_COMMIT_ENV, "abc123")
    assert store.code_version()["git_commit"] == "abc123"
    store.code_version.cache_clear()
    monkeypatch.delenv(store.GIT_COMMIT_ENV)
    version = store.code_version()
    store.code_version.cache_clear()
    import pipeline

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    records = [json.loads(d.read_text("direct_url.json") or "{}") for d in metadata.distributions(name="vdamage-pipeline")]
    editable = any((r.get("dir_info") or {}).get("editable") for r in records)
    in_checkout = Path(pipeline.__file__).resolve().is_relative_to(ROOT)
    if head.returncode != 0 or not (editable and in_checkout):
        pytest.skip("not an editable install of a git checkout")
    assert version["git_commit"] == head.stdout.strip()


# --- the wheel ------------------------------------------------------------------------------------

BUILD_INPUTS = ("pyproject.toml", "README.md", "src", "tasks", "flows", "configs")
# Loaded through a .pth file of the test venv: every interpreter started from it (the console
# script and any child, such as Prefect's ephemeral server) writes the files of the modules of
# this project it imported to $IMPORT_RECORD/<pid>.json when it exits.
RECORDER = '''import atexit, json, os, sys
def _record():
    out = os.environ.get("IMPORT_RECORD")
    if not out:
        return
    mods = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())
            if n.split(".")[0] in ("pipeline", "pipeline_tasks", "pipeline_flows")}
    with open(os.path.join(out, f"{os.getpid()}.json"), "w") as fh:
        json.dump(mods, fh)
atexit.register(_record)
'''


def build_wheel(dest: Path) -> Path:
    """Build from a copy of the build inputs: no build/ or egg-info in the checkout, and no stale
    build/lib files (of since deleted modules) in the wheel. The copy keeps the symlinks of
    src/pipeline/resources/configs, so the build resolves them as it would in the checkout."""
    src = dest / "src-copy"
    src.mkdir(parents=True)
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-w", str(dest / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = (dest / "dist").glob("vdamage_pipeline-*.whl")
    return wheel


def make_venv(path: Path, wheel: Path) -> tuple[Path, Path]:
    """A venv holding only the wheel; the dependencies are this interpreter's site-packages,
    appended to sys.path by a plain path line in a .pth file. (A `--system-site-packages` venv
    would see the base interpreter's packages, not this venv's torch and friends; and a path line,
    unlike `site.addsitedir`, runs none of that directory's .pth files, so the editable install's
    import hook stays off and cannot shadow the wheel.)"""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "_parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (purelib / "_import_record.py").write_text(RECORDER)
    (purelib / "_import_record.pth").write_text("import _import_record\n")
    proc = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return python, purelib


def imported_files(record: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    for path in record.glob("*.json"):
        files.update({k: v for k, v in json.loads(path.read_text()).items() if v})
    return files


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    wheel = build_wheel(tmp_path / "build")
    names = set(zipfile.ZipFile(wheel).namelist())
    for member in ("pipeline/resources/prefect.yaml", "pipeline/resources/configs/default.yaml",
                   "pipeline/resources/configs/demo.yaml", "pipeline_flows/factory.py", "pipeline_tasks/__init__.py",
                   "pipeline/demo/generator.py"):
        assert member in names, member
    with zipfile.ZipFile(wheel) as zf:  # the content of the linked configs, not the link
        assert zf.read("pipeline/resources/configs/demo.yaml") == (ROOT / "configs" / "demo.yaml").read_bytes()

    python, purelib = make_venv(tmp_path / "venv", wheel)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    record = tmp_path / "imports"
    record.mkdir()
    env = clean_env(IMPORT_RECORD=str(record))
    cli = str(python.parent / "pipeline")

    proc = subprocess.run([cli, "--help"], cwd=outside, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run" in proc.stdout and "deploy" in proc.stdout

    from pipeline.core.config import DemoConfig
    from pipeline.demo.generator import generate_demo_data

    dataset = tmp_path / "data"
    generate_demo_data(dataset, DemoConfig(n_images=20, seed=1, width=256, height=192, bad_examples=False), progress=False)
    workdir = tmp_path / "work"
    proc = subprocess.run([cli, "run", "data-prep", "--dataset", str(dataset), "--format", "labelme",
                           "--workdir", str(workdir), "--json"], cwd=outside, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    assert summary["phases"]["audit"]["metrics"]["n_images_ok"] == 20
    assert (Path(summary["phases"]["split"]["path"]) / "split.parquet").is_file()

    files = imported_files(record)
    assert {"pipeline.app.cli", "pipeline_flows.data_prep", "pipeline.data.audit"} <= set(files)
    outside_venv = {k: v for k, v in files.items() if not Path(v).resolve().is_relative_to(purelib.resolve())}
    assert not outside_venv, f"modules imported from elsewhere than the wheel: {outside_venv}"

    # the packaged prefect.yaml's entrypoints load from the wheel with Prefect's loader
    check_entrypoints(str(python), outside, purelib / "pipeline_flows")
    # a wheel records no git commit
    proc = subprocess.run([str(python), "-I", "-c", "from pipeline.core.store import code_version; "
                           "print(code_version()['git_commit'])"], cwd=outside, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "None", proc.stderr
