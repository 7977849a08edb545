"""The library (src/pipeline below app/) works without Prefect and Typer.

In a child interpreter where importing `prefect` or `typer` fails as if they were not installed,
every module of `pipeline` except `pipeline.app.*` imports, and the retrieval half runs as plain
library calls on a tiny synthetic dataset: audit -> split -> crops -> contexts -> embeddings ->
index -> validation. Neither package is in sys.modules at the end.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BLOCKED = ("prefect", "typer")

# Installed first in the child: a meta-path finder that answers "no such module" for BLOCKED.
PRELUDE = f"""
import importlib.abc, sys
BLOCKED = {BLOCKED!r}

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by this test)", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
for name in [m for m in sys.modules if m.split(".")[0] in BLOCKED]:
    del sys.modules[name]


def leaked():
    return sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
"""

IMPORT_ALL = """
import importlib, json
from pathlib import Path
import pipeline

root = Path(pipeline.__file__).parent
names = sorted(
    ".".join(("pipeline", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
    for p in root.rglob("*.py") if "__pycache__" not in p.parts
)
names = [n for n in names if n != "pipeline.app" and not n.startswith("pipeline.app.")]
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:  # report every failure, not only the first
        failed[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"imported": names, "failed": failed, "leaked": leaked()}))
"""

CHAIN = """
import json, sys
from pathlib import Path
from pipeline.core.config import DemoConfig, build_config
from pipeline.data.audit import run_audit
from pipeline.data.split import run_split
from pipeline.demo.generator import generate_demo_data
from pipeline.retrieval.contexts import run_contexts
from pipeline.retrieval.crops import run_crops
from pipeline.retrieval.embeddings import run_embeddings
from pipeline.retrieval.index import run_index
from pipeline.retrieval.validate import run_validation

tmp = Path(sys.argv[1])
data = tmp / "data"
generate_demo_data(data, DemoConfig(n_images=20, seed=4, width=256, height=192, bad_examples=False), progress=False)
cfg = build_config(overrides=["detect.backend=none", "crops.grid_size=128", "crops.target_size=160",
                              "embed.backend=hybrid", "embed.allow_random_init=true"])
d = {name: tmp / name for name in ("audit", "split", "crops", "contexts", "embeddings", "index", "validation")}
for path in d.values():
    path.mkdir()
m = {}
m["audit"] = run_audit(data, "labelme", cfg.data, cfg.audit, d["audit"], progress=False)
m["split"] = run_split(d["audit"] / "manifest.parquet", cfg.split, d["split"])
m["crops"] = run_crops(d["split"] / "split.parquet", data, cfg.detect, cfg.crops, d["crops"], None, progress=False)
m["contexts"] = run_contexts(d["crops"], d["contexts"])
m["embeddings"] = run_embeddings(d["crops"], d["contexts"], cfg.embed, d["embeddings"], device="cpu", progress=False)
m["index"] = run_index(d["embeddings"], d["crops"], d["contexts"], cfg.index, d["index"])

m["validation"] = run_validation(d["index"], d["embeddings"], d["crops"], d["validation"], k=5, seed=0)
files = {name: sorted(p.name for p in path.iterdir()) for name, path in d.items()}
print(json.dumps({"metrics": m, "files": files, "leaked": leaked()}, default=str))
"""


def run_child(code: str, *args: str, timeout: int = 600) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(PRELUDE) + textwrap.dedent(code), *args],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_blocker_blocks():
    out = run_child("""
        import json
        errors = []
        for name in ("prefect", "typer", "prefect.flows"):
            try:
                __import__(name)
            except ModuleNotFoundError as exc:
                errors.append(exc.name)
        print(json.dumps({"errors": errors, "leaked": leaked()}))
    """)
    assert out == {"errors": ["prefect", "typer", "prefect"], "leaked": []}  # prefect.flows fails on its parent


@pytest.mark.slow
def test_every_library_module_imports_without_prefect_and_typer():
    out = run_child(IMPORT_ALL)
    assert out["failed"] == {}
    assert out["leaked"] == []
    imported = set(out["imported"])
    assert {"pipeline.core.store", "pipeline.data.audit", "pipeline.retrieval.embeddings", "pipeline.demo.generator",
            "pipeline.core.phases"} <= imported
    src = Path(__file__).resolve().parents[2] / "src" / "pipeline"
    assert len(imported) == sum(1 for p in src.rglob("*.py") if "__pycache__" not in p.parts and "app" not in
                                p.relative_to(src).parts[:1])


@pytest.mark.slow  # end to end: ~1 min on 2 shared cores, most of it loading torch and the two models
def test_retrieval_chain_as_library_calls_without_prefect(tmp_path):
    out = run_child(CHAIN, str(tmp_path))
    m, files = out["metrics"], out["files"]
    assert out["leaked"] == []
    assert m["audit"]["n_images_ok"] == 20
    assert {"manifest.parquet", "quarantine.parquet"} <= set(files["audit"])
    assert "split.parquet" in files["split"]
    n_crops = m["crops"]["n_crops"]
    assert n_crops > 0 and "crops.parquet" in files["crops"]
    assert "contexts.parquet" in files["contexts"]
    assert m["embeddings"]["n_embedded"] == n_crops
    assert {"index.faiss", "metadata.parquet", "index.json"} <= set(files["index"])
    assert m["index"]["self_hit_rate"] == 1.0
    assert {"report.md", "metrics.json"} <= set(files["validation"])
    assert m["validation"]["filter_checks_passed"] == m["validation"]["filter_checks_total"] > 0
