"""ONNX -> TF SavedModel (onnx2tf) -> TF.js graph models. Runs INSIDE the TF environment (.venv-export).

Usage: python tf_worker.py MODEL.onnx WORK_DIR OUT_ROOT fp32,fp16,uint8 [UINT8_KINDS]
Writes OUT_ROOT/<variant>/model.json + shards and prints one JSON line {"variants": {...}, "layout"}.
Imports nothing of the pipeline package (that venv has no torch): stdlib here, TF inside functions.

uint8 stores only the weights of UINT8_KINDS (comma-separated; default pointwise,dense) as uint8 and
the rest as fp16: tensorflowjs quantises a weight per tensor (affine min/max), which a BN-folded
depthwise kernel (a few values per channel, scales differing by orders of magnitude) does not
survive, while the large 1x1 and dense kernels hold most of the bytes. Kinds are read off the FP32
graph's weight shapes (HWIO kernels): pointwise [1, 1, I, O], depthwise [h, w, C, 1] (h*w > 1),
conv (other 4-D kernels), dense (2-D); `all` is every weight (--quantize_uint8=*). Biases stay fp16.

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


def to_tfjs(saved_model: Path, out_dir: Path, variant: str, uint8_names: list[str] | None = None) -> None:
    _stub_optional_imports()
    from tensorflowjs.converters import converter

    out_dir.mkdir(parents=True, exist_ok=True)
    quant = QUANT[variant] if uint8_names is None else ["--quantize_float16", f"--quantize_uint8={','.join(uint8_names)}"]
    converter.convert(["--input_format=tf_saved_model", "--output_format=tfjs_graph_model",
                       "--signature_name=serving_default", *quant, str(saved_model), str(out_dir)])


def weight_kind(shape: list[int]) -> str:
    if len(shape) == 2:
        return "dense"
    if len(shape) == 4:
        h, w, _, o = shape
        return "pointwise" if h == w == 1 else ("depthwise" if o == 1 else "conv")
    return "other"


def uint8_selection(fp32_json: Path, kinds: list[str]) -> tuple[list[str] | None, dict]:
    """(weight names to store as uint8, or None for every weight; a summary for the card)."""
    weights = [w for g in json.loads(fp32_json.read_text())["weightsManifest"] for w in g["weights"]]
    size = {w["name"]: _n(w["shape"]) for w in weights if w.get("dtype", "float32") == "float32"}
    if "all" in kinds:
        names = list(size)
    else:
        names = [w["name"] for w in weights if w["name"] in size and weight_kind(w["shape"]) in kinds]
    total = sum(size.values()) or 1
    return (None if "all" in kinds else names), {
        "rule": "all weights" if "all" in kinds else f"kinds {', '.join(kinds)}", "n_weights": len(size),
        "n_uint8": len(names), "uint8_share": sum(size[n] for n in names) / total,
        "by_kind": {k: sum(1 for w in weights if w["name"] in size and weight_kind(w["shape"]) == k)
                    for k in ("pointwise", "dense", "conv", "depthwise", "other")}}


def _n(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def layout_of(model_json: Path) -> tuple[str, list[int]]:
    sig = json.loads(model_json.read_text()).get("signature", {}).get("inputs", {})
    dims = [int(d.get("size", -1)) for d in next(iter(sig.values()))["tensorShape"]["dim"]]
    return ("NHWC" if dims[-1] in (1, 3) else "NCHW"), dims


def canonical_model_json(model_json: Path) -> None:
    """Rewrite model.json with sorted keys: the converter writes each node's attributes in an order that
    changes from one process to the next (the same model gave different bytes after a resumed run); lists,
    the weights manifest's order included, are kept as they are."""
    model_json.write_text(json.dumps(json.loads(model_json.read_text()), sort_keys=True))


def main(argv: list[str]) -> int:
    onnx_path, work, out_root = Path(argv[0]), Path(argv[1]), Path(argv[2])
    variants = [v for v in argv[3].split(",") if v]
    kinds = [k for k in (argv[4] if len(argv) > 4 else "pointwise,dense").split(",") if k]
    work.mkdir(parents=True, exist_ok=True)
    saved = to_saved_model(onnx_path, work)
    result: dict = {"variants": {}}
    for v in sorted(variants, key=lambda v: v != "fp32"):  # fp32 first: uint8 reads its weight shapes
        try:
            extra: dict = {}
            if v == "uint8":
                fp32 = out_root / "fp32" if "fp32" in variants else work / "fp32_shapes"
                if not (fp32 / "model.json").is_file():
                    to_tfjs(saved, fp32, "fp32")
                names, extra["quantized_weights"] = uint8_selection(fp32 / "model.json", kinds)
                to_tfjs(saved, out_root / v, v, names)
            else:
                to_tfjs(saved, out_root / v, v)
            canonical_model_json(out_root / v / "model.json")
            layout, dims = layout_of(out_root / v / "model.json")
            result["variants"][v] = {"ok": True, "layout": layout, "input_shape": dims, **extra}
        except Exception as exc:  # noqa: BLE001 - one variant's failure is reported, the others go on
            result["variants"][v] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:1000]}
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
