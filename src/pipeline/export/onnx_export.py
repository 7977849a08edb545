"""torch -> ONNX: FP32 with a dynamic batch, FP16, and INT8 (onnxruntime static QDQ quantisation).

The legacy TorchScript exporter at opset 17 is used (the dynamo exporter needs onnxscript, and
onnx2tf accepts both; see /work/shared/notes/export_path.md). FP16 keeps float32 inputs/outputs
(`keep_io_types`), so every variant takes the same NCHW float32 tensor. INT8 is static QDQ
quantisation with per-channel weights, calibrated on preprocessed train images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

INPUT_NAME, OUTPUT_NAME = "input", "logits"
OPSET = 17


def export_fp32(model: Any, image_size: int, in_chans: int, out_path: Path) -> Path:
    """Write the eval-mode `model` as ONNX (one file, dynamic batch) and check it."""
    import onnx
    import torch

    model = model.eval().cpu()
    dummy = torch.zeros(1, in_chans, image_size, image_size)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(model, (dummy,), str(out_path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    onnx.checker.check_model(str(out_path), full_check=True)
    return out_path


def export_fp16(fp32_path: Path, out_path: Path) -> Path:
    """FP16 weights and compute, float32 input/output."""
    import logging

    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    logging.getLogger("onnxruntime.transformers.float16").setLevel(logging.ERROR)  # "truncated to 1e-07" warnings
    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))  # (its input Casts are appended last: onnxruntime loads it, the checker would not)
    return out_path


class _Reader:
    """onnxruntime CalibrationDataReader over preprocessed NCHW batches of one image."""

    def __init__(self, batches: np.ndarray):
        self._it = iter([{INPUT_NAME: b[None].astype(np.float32)} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def export_int8(fp32_path: Path, calib: np.ndarray, out_path: Path, per_channel: bool = True,
                method: str = "minmax") -> Path:
    """Static QDQ quantisation (uint8 activations, int8 weights) calibrated on `calib` [N, C, H, W]."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pre = out_path.with_name("pre.onnx")
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    try:
        quantize_static(str(pre), str(out_path), _Reader(calib), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method])
    finally:
        pre.unlink(missing_ok=True)
    return out_path


def ort_session(path: Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_logits(path: Path, x: np.ndarray, threads: int = 1) -> tuple[np.ndarray, float]:
    """(logits [N, K] float32, median ms per image) running one image at a time."""
    import time

    sess = ort_session(path, threads)
    sess.run(None, {INPUT_NAME: x[:1]})  # warm-up
    out, times = [], []
    for i in range(len(x)):
        t0 = time.perf_counter()
        out.append(sess.run(None, {INPUT_NAME: x[i:i + 1]})[0][0])
        times.append((time.perf_counter() - t0) * 1000)
    return np.asarray(out, dtype=np.float32), float(np.median(times))


def torch_logits(model: Any, x: np.ndarray) -> tuple[np.ndarray, float]:
    """(logits, median ms per image) of the torch model, batch 1 (the reference of the gate)."""
    import time

    import torch

    model = model.eval().cpu()
    out, times = [], []
    with torch.inference_mode():
        model(torch.from_numpy(x[:1]))
        for i in range(len(x)):
            t0 = time.perf_counter()
            out.append(model(torch.from_numpy(x[i:i + 1]))[0].float().numpy())
            times.append((time.perf_counter() - t0) * 1000)
    return np.asarray(out, dtype=np.float32), float(np.median(times))
