"""The per-layer error table of an INT8 model against its float graph (onnxruntime's qdq_loss_debug),
for a refused INT8 variant's report (int8.layer_table)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.export.onnx_export import _Reader


def layer_errors(fp32_path: Path, int8_path: Path, x: np.ndarray, work: Path) -> list[dict[str, object]]:
    """Per-layer quantisation error of an INT8 model (onnxruntime.quantization.qdq_loss_debug) on a
    few inputs `x`: per activation, the SQNR (dB) of the INT8 model's tensor against the float
    model's (`xmodel_sqnr`: accumulated error so far) and of its own QDQ pair (`qdq_sqnr`: this
    tensor's quantisation alone; None for a Clip/Relu output fused into its producer, whose QDQ pair
    sees the unclipped input), in graph order, then the lowest weight SQNR and its initializer."""
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, compute_activation_error,
                                                         compute_weight_error, create_activation_matching,
                                                         modify_model_output_intermediate_tensors)

    from onnxruntime.quantization.shape_inference import quant_pre_process

    work.mkdir(parents=True, exist_ok=True)
    f_aug, q_aug, pre = work / "float_aug.onnx", work / "qdq_aug.onnx", work / "pre.onnx"
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)  # the float graph export_int8 quantised
    fp32_path = pre
    modify_model_output_intermediate_tensors(fp32_path, f_aug)
    modify_model_output_intermediate_tensors(int8_path, q_aug)
    f_act = collect_activations(str(f_aug), _Reader(x))
    q_act = collect_activations(str(q_aug), _Reader(x))
    act_err = compute_activation_error(create_activation_matching(q_act, f_act))
    w_err = compute_weight_error(_weight_matching(fp32_path, int8_path))
    import onnx

    graph = onnx.load(str(fp32_path)).graph
    order = [graph.input[0].name] + [o for node in graph.node for o in node.output]
    fused = {o for node in graph.node if node.op_type in ("Clip", "Relu") for o in node.output}
    rows = [{"tensor": name, "xmodel_sqnr": _finite(e.get("xmodel_err")),
             # an activation fused into its producer: its QDQ pair sees the unclipped input, not rounding
             "qdq_sqnr": None if name in fused else _finite(e.get("qdq_err"))}
            for name, e in act_err.items()]
    rank = {name: i for i, name in enumerate(order)}
    rows.sort(key=lambda r: rank.get(r["tensor"], len(rank)))
    weights = {k: _finite(v) for k, v in w_err.items()}
    out = rows
    if weights:
        out.append({"tensor": "(weights, lowest SQNR)", "xmodel_sqnr": None,
                    "qdq_sqnr": min((v for v in weights.values() if v is not None), default=None),
                    "weight": min(weights, key=lambda k: weights[k] if weights[k] is not None else np.inf)})
    for f in (f_aug, q_aug, pre):
        f.unlink(missing_ok=True)
    return out


def _weight_matching(fp32_path: Path, int8_path: Path) -> dict[str, dict[str, np.ndarray]]:
    """{weight: {"float", "dequantized"}} of every constant DequantizeLinear input: qdq_loss_debug's
    create_weight_matching, dequantising in int64 (its own subtracts a uint8 zero point from uint8
    weights in uint8, which wraps around: -18 dB for a classifier whose answers were unchanged)."""
    import onnx
    from onnx import numpy_helper

    floats = {i.name: i for i in onnx.load(str(fp32_path)).graph.initializer}
    q = onnx.load(str(int8_path)).graph
    inits = {i.name: i for i in q.initializer}
    out: dict[str, dict[str, np.ndarray]] = {}
    for node in q.node:
        name = node.input[0]
        if node.op_type != "DequantizeLinear" or name not in inits or not name.endswith("_quantized"):
            continue
        base = name[: -len("_quantized")]
        if base not in floats:
            continue
        w = numpy_helper.to_array(inits[name]).astype(np.int64)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        zp = (numpy_helper.to_array(inits[node.input[2]]).astype(np.int64) if len(node.input) > 2
              else np.zeros(scale.shape, dtype=np.int64))
        if scale.size > 1:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % w.ndim
            shape = [1] * w.ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        out[base] = {"float": numpy_helper.to_array(floats[base]), "dequantized": ((w - zp) * scale).astype(np.float32)}
    return out


def _finite(v: object) -> float | None:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None
