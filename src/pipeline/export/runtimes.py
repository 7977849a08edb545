"""The tools outside the project venv: the TF environment (converter) and Node with tfjs (wasm).

Both are found from config (`export.tf_python`, `export.node_dir`), else env vars
PIPELINE_EXPORT_PYTHON / PIPELINE_EXPORT_NODE_DIR, else next to the project venv (`.venv-export/`
and `export/node_modules`, which `make export-env` creates). A missing tool gives a reason
string, never an exception: the TF.js variants are then reported as skipped.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

WEB = Path(__file__).parent / "web"
WORKER = Path(__file__).parent / "tf_worker.py"


_PROBE = ("import importlib.util, sys; import tensorflow, onnx2tf; "
          "sys.exit(0 if importlib.util.find_spec('tensorflowjs') else 'tensorflowjs is not installed')")


def _project_root() -> Path:
    """The folder holding the running venv (the checkout for `make` installs)."""
    return Path(sys.prefix).resolve().parent


def tf_python(cfg: Any) -> tuple[Path | None, str]:
    """(python of the TF environment, reason when unusable)."""
    given = cfg.tf_python or os.environ.get("PIPELINE_EXPORT_PYTHON")
    path = Path(given) if given else _project_root() / ".venv-export" / "bin" / "python"
    if not path.exists():
        return None, f"no TF environment at {path} (run `make export-env`)"
    probe = subprocess.run([str(path), "-c", _PROBE], capture_output=True,
                           text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if probe.returncode != 0:
        return None, f"the TF environment {path} lacks the converters: {probe.stderr.strip()[-300:]}"
    return path, ""


def node_modules(cfg: Any) -> tuple[Path | None, str]:
    """(node_modules folder with @tensorflow/tfjs and the wasm backend, reason when unusable)."""
    if shutil.which("node") is None:
        return None, "node is not installed"
    given = cfg.node_dir or os.environ.get("PIPELINE_EXPORT_NODE_DIR")
    base = Path(given) if given else _project_root() / "export"
    mods = base / "node_modules"
    for pkg in ("@tensorflow/tfjs", "@tensorflow/tfjs-backend-wasm"):
        if not (mods / pkg / "package.json").is_file():
            return None, f"{pkg} is not installed under {mods} (run `make export-env`: npm ci in export/)"
    return mods, ""


def convert_tfjs(python: Path, onnx_path: Path, work: Path, out_root: Path, variants: list[str],
                 timeout_s: int, uint8_kinds: list[str] | None = None) -> dict[str, Any]:
    """Run tf_worker.py in the TF environment; {"variants": {v: {"ok", "layout" | "error"}}}."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    kinds = ",".join(uint8_kinds or ["pointwise", "dense"])
    proc = subprocess.run([str(python), str(WORKER), str(onnx_path), str(work), str(out_root), ",".join(variants), kinds],
                          capture_output=True, text=True, timeout=timeout_s, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        return {"variants": {v: {"ok": False, "error": f"converter failed: {tail}"} for v in variants}}
    return json.loads(line[len("RESULT "):])


def node_logits(mods: Path, model_dir: Path, x: np.ndarray, work: Path, timeout_s: int,
                backend: str = "wasm") -> tuple[np.ndarray, dict[str, Any]]:
    """(logits [N, K], timings) of a TF.js model in Node on NCHW float32 inputs."""
    work.mkdir(parents=True, exist_ok=True)
    inp, out = work / "inputs.f32", work / f"out_{model_dir.name}.f32"
    if not inp.is_file() or inp.stat().st_size != x.nbytes:
        np.ascontiguousarray(x, dtype="<f4").tofile(inp)
    env = {**os.environ, "NODE_PATH": str(mods)}
    proc = subprocess.run(["node", str(WEB / "run_tfjs.cjs"), str(model_dir), str(inp), ",".join(map(str, x.shape)),
                           str(out), backend], capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"node tfjs failed: {proc.stderr.strip()[-1500:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    logits = np.fromfile(out, dtype="<f4").reshape(len(x), int(info["k"]))
    out.unlink()
    return logits, info
