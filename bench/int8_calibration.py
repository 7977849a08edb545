"""Peak memory and wall of the INT8 calibration, in one go against chunk by chunk, and how far apart the ranges are.

    python bench/int8_calibration.py --onnx W/artifacts/export/<id>/onnx_fp32/model.onnx [--n 256]

Runs `onnx_export.export_int8` (MinMax and Percentile, everything quantised) on `--n` inputs in a fresh
process per setting (so each peak RSS is its own): once with onnxruntime's default (every activation of
every input kept until the end) and once in chunks (`calibration_stride`). Inputs: the model's
normalised pixel range drawn at random with a fixed seed, or `--inputs X.npy` ([N, C, H, W] float32).
Prints wall, peak RSS and the largest relative difference between the two settings' activation ranges.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = """
import json, resource, sys, time
from pathlib import Path
import numpy as np
import onnxruntime.quantization.quantize as q
from pipeline.export import onnx_export as ox

onnx_path, inputs, method, chunked, work = sys.argv[1:6]
x = np.load(inputs)
if chunked == "0":  # onnxruntime's default: one collect_data over every input
    ox.calibration_stride = lambda n, most=None: None
else:
    ox.CALIBRATION_CHUNK = int(chunked)
work = Path(work)
prepared = work / "prepared.onnx"
ox.prepare_int8(Path(onnx_path), prepared)
t = time.perf_counter()
ox.export_int8(prepared, x, work / "int8.onnx", method=method, ranges_cache=work / "ranges.json")
wall = time.perf_counter() - t
print("RESULT " + json.dumps({"wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def ranges(path: Path) -> dict[str, tuple[float, float]]:
    """{tensor: (low, high)} of an onnxruntime calibration cache."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    data = load_tensors_data(path)
    return {name: tuple(float(np.asarray(v).ravel()[0]) for v in data[name].range_value) for name in data.keys()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--inputs", default=None)
    ap.add_argument("--methods", default="minmax,percentile")
    ap.add_argument("--chunk", type=int, default=None, help="inputs per chunk (default: the export's)")
    args = ap.parse_args()
    import onnx

    from pipeline.export.onnx_export import CALIBRATION_CHUNK, calibration_stride

    chunk = args.chunk or CALIBRATION_CHUNK

    dims = [d.dim_value for d in onnx.load(args.onnx, load_external_data=False).graph.input[0].type.tensor_type.shape.dim]
    with tempfile.TemporaryDirectory(prefix="int8-bench-") as tmp:
        inputs = Path(args.inputs) if args.inputs else Path(tmp) / "x.npy"
        if not args.inputs:
            rng = np.random.default_rng(0)
            np.save(inputs, rng.normal(0, 1, (args.n, dims[1], dims[2], dims[3])).astype(np.float32))
        n = len(np.load(inputs, mmap_mode="r"))
        print(f"{Path(args.onnx)}: input {dims[1:]} , {n} calibration inputs, chunk {calibration_stride(n, chunk)}")
        print(f"{'method':<11} {'setting':<10} {'wall s':>7} {'peak RSS MB':>12}")
        for method in args.methods.split(","):
            got = {}
            for chunked in ("0", str(chunk)):
                work = Path(tmp) / f"{method}-{chunked}"
                work.mkdir()
                proc = subprocess.run([sys.executable, "-c", CHILD, args.onnx, str(inputs), method, chunked, str(work)],
                                      capture_output=True, text=True)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    print(f"{method:<11} {'chunks' if chunked != '0' else 'one go':<10} failed: {proc.stderr[-800:]}")
                    continue
                r = json.loads(line[7:])
                got[chunked] = ranges(work / "ranges.json")
                print(f"{method:<11} {'chunks' if chunked != '0' else 'one go':<10} {r['wall_s']:7.1f} {r['peak_rss_mb']:12.0f}")
            if len(got) == 2:
                diffs = [max(abs(a[0] - b[0]), abs(a[1] - b[1])) / max(abs(a[0]), abs(a[1]), 1e-6)
                         for k, a in got["0"].items() if (b := got[str(chunk)].get(k)) is not None]
                print(f"{method:<11} ranges of {len(diffs)} tensors: largest relative difference {max(diffs, default=0):.2e}, "
                      f"median {float(np.median(diffs)) if diffs else 0:.2e}")
    print(f"(this process: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, "
          f"wall {time.process_time():.0f} s CPU)")


if __name__ == "__main__":
    main()
