"""ONNX -> TF SavedModel (onnx2tf) -> TF.js graph models. Runs INSIDE the TF environment (.venv-export).

Usage: python tf_worker.py MODEL.onnx WORK_DIR OUT_ROOT fp32,fp16,uint8
Writes OUT_ROOT/<variant>/model.json + shards and prints one JSON line {"variants": {...}, "layout"}.
Imports nothing of the pipeline package (that venv has no torch): stdlib here, TF inside functions.

tensorflowjs 4.22 imports tensorflow_decision_forests and jax at import time although a SavedModel
conversion uses neither; they are not installed (they pull 1.2 GB and break on a protobuf pin), so
this process gets empty stand-ins for them (measured: output byte-identical to the full install).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

QUANT = {"fp32": [], "fp16": ["--quantize_float16=*"], "uint8": ["--quantize_uint8=*"]}


def _stub_optional_imports() -> None:
    if "tensorflow_decision_forests" in sys.modules or "tensorflowjs.converters.jax_conversion" in sys.modules:
        return  # stubbed (or imported) already
    if importlib.util.find_spec("tensorflow_decision_forests") is None:
        sys.modules["tensorflow_decision_forests"] = types.ModuleType("tensorflow_decision_forests")
    if importlib.util.find_spec("jax") is None:
        jc = types.ModuleType("tensorflowjs.converters.jax_conversion")
        jc.convert_jax = None  # type: ignore[attr-defined]
        sys.modules["tensorflowjs.converters.jax_conversion"] = jc


def to_saved_model(onnx_path: Path, work: Path) -> Path:
    """onnx2tf with an NHWC input (the browser's pixel layout); the venv's bin on PATH for onnxsim."""
    out = work / "saved_model"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [str(Path(sys.executable).parent / "onnx2tf"), "-i", str(onnx_path), "-o", str(out), "-osd", "-n"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=work)
    if proc.returncode != 0 or not (out / "saved_model.pb").is_file():
        raise RuntimeError(f"onnx2tf failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    return out


def to_tfjs(saved_model: Path, out_dir: Path, variant: str) -> None:
    _stub_optional_imports()
    from tensorflowjs.converters import converter

    out_dir.mkdir(parents=True, exist_ok=True)
    converter.convert(["--input_format=tf_saved_model", "--output_format=tfjs_graph_model",
                       "--signature_name=serving_default", *QUANT[variant], str(saved_model), str(out_dir)])


def layout_of(model_json: Path) -> tuple[str, list[int]]:
    sig = json.loads(model_json.read_text()).get("signature", {}).get("inputs", {})
    dims = [int(d.get("size", -1)) for d in next(iter(sig.values()))["tensorShape"]["dim"]]
    return ("NHWC" if dims[-1] in (1, 3) else "NCHW"), dims


def main(argv: list[str]) -> int:
    onnx_path, work, out_root = Path(argv[0]), Path(argv[1]), Path(argv[2])
    variants = [v for v in argv[3].split(",") if v]
    work.mkdir(parents=True, exist_ok=True)
    saved = to_saved_model(onnx_path, work)
    result: dict = {"variants": {}}
    for v in variants:
        try:
            to_tfjs(saved, out_root / v, v)
            layout, dims = layout_of(out_root / v / "model.json")
            result["variants"][v] = {"ok": True, "layout": layout, "input_shape": dims}
        except Exception as exc:  # noqa: BLE001 - one variant's failure is reported, the others go on
            result["variants"][v] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:1000]}
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
