"""torch -> ONNX: FP32 with a dynamic batch, FP16, and INT8 (onnxruntime static QDQ quantisation).

The legacy TorchScript exporter at opset 17 is used (the dynamo exporter needs onnxscript, and
onnx2tf accepts both; see /work/shared/notes/export_path.md). FP16 keeps float32 inputs/outputs
(`keep_io_types`), so every variant takes the same NCHW float32 tensor. INT8 is static QDQ
quantisation (uint8 activations, per-channel weights) calibrated on inputs from the distribution
the model is served on (see inputs.py). The weight type is `export.int8_weight_type` (int8 by
default; the card records the CPU and the choice): int8 weights (U8S8) on an x86 CPU without VNNI,
where onnxruntime's u8s8 kernels sum pairs of products in int16 and can saturate, get `reduce_range`
(7 bits); uint8 weights (U8U8, `auto` picks them there) keep 8 bits without saturating but ran 10x
slower than FP32 in onnxruntime on a 2-core AVX2 machine (59.7 vs 6.0 ms per 160 px image), for the
same answers within noise (car-damage-coco crops: top-1 agreement 0.97 on the test views, like int8).
Dead output channels (weights ~0 beside a bias) are zeroed first (`zero_dead_channels`), so their
int32 bias is not clipped. The classifier layer can be kept in float (`keep_head_float`).
The per-layer table of a refused INT8 variant's report is in qdq_debug.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

INPUT_NAME, OUTPUT_NAME = "input", "logits"
OPSET = 17


def static_same_padding(model: Any, image_size: int, in_chans: int) -> tuple[Any, int]:
    """A copy of `model` whose TF-style 'SAME' convolutions and poolings (timm's Conv2dSame,
    MaxPool2dSame, AvgPool2dSame: EfficientNet-Lite's stride-2 layers) pad by constants computed
    for the export's input size, as ZeroPad2d + the plain layer: the same numbers, without the
    padding arithmetic on traced tensor shapes that the legacy exporter writes as float Sub/Mul/Add
    ops. Quantisation would treat those ops as activations and round the padding, so the INT8
    model's feature maps come out a pixel short (measured: Lite0 at 64 px, top-1 agreement 0.25).
    Returns (the copy, how many layers were frozen)."""
    import copy

    import torch
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import pad_same_arg
    from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame

    model = copy.deepcopy(model).eval().cpu()
    sizes: dict[str, tuple[int, int]] = {}
    kinds = (Conv2dSame, MaxPool2dSame, AvgPool2dSame)
    def record(name: str) -> Any:
        def hook(module: Any, args: tuple) -> None:
            sizes.setdefault(name, tuple(int(v) for v in args[0].shape[-2:]))
        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in model.named_modules() if isinstance(m, kinds)]
    with torch.inference_mode():
        model(torch.zeros(1, in_chans, image_size, image_size))
    for h in hooks:
        h.remove()
    for name, size in sizes.items():
        parent, _, leaf = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        old = getattr(holder, leaf)
        two = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        if isinstance(old, Conv2dSame):
            pad = pad_same_arg(list(size), list(old.weight.shape[-2:]), two(old.stride), two(old.dilation))
            layer = torch.nn.Conv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride, 0, old.dilation,
                                    old.groups, old.bias is not None)
            layer.load_state_dict(old.state_dict())
            fill = 0.0
        else:
            pad = pad_same_arg(list(size), list(two(old.kernel_size)), two(old.stride), two(getattr(old, "dilation", 1)))
            if isinstance(old, MaxPool2dSame):
                layer = torch.nn.MaxPool2d(old.kernel_size, old.stride, 0, old.dilation, ceil_mode=old.ceil_mode)
                fill = -float("inf")
            else:
                layer = torch.nn.AvgPool2d(old.kernel_size, old.stride, 0, old.ceil_mode, old.count_include_pad)
                fill = 0.0
        setattr(holder, leaf, torch.nn.Sequential(torch.nn.ConstantPad2d(tuple(pad), fill), layer))
    return model, len(sizes)


def export_fp32(model: Any, image_size: int, in_chans: int, out_path: Path) -> Path:
    """Write the eval-mode `model` as ONNX (one file, dynamic batch, 'SAME' padding frozen for
    image_size: `static_same_padding`) and check it."""
    import onnx
    import torch

    model, _ = static_same_padding(model, image_size, in_chans)
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


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_int8_info(cpuinfo: str | None = None) -> dict[str, object]:
    """{"vnni": bool | None, "flags": [the VNNI-type flags present], "arch"} of this CPU (None: unknown)."""
    import platform

    arch = platform.machine().lower()
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            flags = set(line.split(":", 1)[1].split())
            break
    found = [f for f in VNNI_FLAGS if f in flags]
    x86 = arch in ("x86_64", "amd64", "i686", "i386") or bool(flags & {"avx2", "sse4_2"})
    return {"arch": arch, "vnni": (bool(found) if flags else None) if x86 else None, "flags": found,
            "avx2": "avx2" in flags}


def resolve_weight_type(setting: str, cpu: dict[str, object]) -> tuple[str, str]:
    """(weight type "int8" | "uint8", why) for `export.int8_weight_type` auto | int8 | uint8 on this CPU."""
    if setting in ("int8", "uint8"):
        return setting, f"export.int8_weight_type={setting}"
    if cpu.get("vnni") is False:
        return "uint8", ("x86 CPU without VNNI: uint8 weights (U8U8), whose kernels do not saturate, at full 8 bits "
                         "(u8s8 kernels sum pairs of products in int16 there)")
    if cpu.get("vnni"):
        return "int8", f"CPU has {', '.join(cpu['flags'])}: int8 weights (U8S8)"
    return "int8", "CPU features unknown: int8 weights (U8S8)"


def resolve_reduce_range(setting: str, cpu: dict[str, object], weight_type: str = "int8") -> tuple[bool, str]:
    """(reduce_range, why) for `export.int8_reduce_range` auto | true | false on this CPU with `weight_type`."""
    if setting in ("true", True):
        return True, "export.int8_reduce_range=true"
    if setting in ("false", False):
        return False, "export.int8_reduce_range=false"
    if weight_type == "uint8":
        return False, "uint8 weights (U8U8) do not saturate: full-range weights"
    if cpu.get("vnni") is False:
        return True, "x86 CPU without VNNI (u8s8 int16 accumulation would saturate): 7-bit weights"
    if cpu.get("vnni"):
        return False, f"CPU has {', '.join(cpu['flags'])}: full-range weights"
    return True, "CPU features unknown: 7-bit weights, safe everywhere"


class _Reader:
    """onnxruntime CalibrationDataReader over preprocessed NCHW inputs, one per batch; `set_range` and
    `len` let quantize_static calibrate a chunk at a time (`CalibStridedMinMax`, see `calibration_stride`)."""

    def __init__(self, batches: np.ndarray):
        self._items = [{INPUT_NAME: b[None].astype(np.float32)} for b in batches]
        self._it = iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._items[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def __iter__(self):  # qdq_loss_debug.collect_activations iterates the reader
        return iter(self._items)


def head_nodes(onnx_path: Path) -> list[str]:
    """The classifier layer: the Gemm (or MatMul, with its bias Add) computing the logits; [] if none."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    node = producer.get(graph.output[0].name)
    if node is not None and node.op_type == "Add":
        inner = next((producer[i] for i in node.input if i in producer and producer[i].op_type == "MatMul"), None)
        return [node.name, inner.name] if inner is not None else []
    return [node.name] if node is not None and node.op_type in ("Gemm", "MatMul") else []


def first_convs(onnx_path: Path, k: int) -> list[str]:
    """The first `k` Conv nodes in graph order (the stem and the first block: where an INT8 CNN loses
    the most signal-to-noise, measured with `layer_errors`)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "Conv"][:k]


DEAD_CHANNEL = 1e-5  # an output channel whose largest |weight| is below this share of its layer's is dead


def zero_dead_channels(onnx_path: Path) -> int:
    """Set the weights of dead convolution output channels (largest |weight| < DEAD_CHANNEL x the layer's
    largest) to exactly 0 in place; returns how many. EfficientNet-Lite's folded batch norms leave such
    channels (122 of 10k in a fine-tuned Lite0, weights ~1e-8 beside a bias ~1): their output is their
    bias, but quantised per channel their scale is so small that the int32 bias (scale = input scale x
    weight scale) overflows and is clipped, for uint8 weights, which onnxruntime does not rescale. An
    all-zero channel gets scale 1 and its bias survives; the float output changes by < 1e-5 of the layer's range."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).copy()
        peak = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        dead = (peak < DEAD_CHANNEL * peak.max()) & (peak > 0)
        if dead.any():
            w[dead] = 0
            count += int(dead.sum())
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(w, node.input[1]))
    if count:
        onnx.save(model, str(onnx_path))
    return count


def prepare_int8(fp32_path: Path, out_path: Path) -> int:
    """The float graph every INT8 candidate quantises, written to `out_path`: onnxruntime's
    pre-processing (shape inference, optimisation), then `zero_dead_channels`; returns how many
    channels were zeroed. Done once per search: it is the same for every candidate."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path.parent.mkdir(parents=True, exist_ok=True)
    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    return zero_dead_channels(out_path)


CALIBRATION_CHUNK = 16


def calibration_stride(n: int, most: int | None = None) -> int:
    """How many calibration inputs onnxruntime runs before it folds their activations into the ranges
    (MinMax: min and max so far; Percentile and Entropy: the histograms so far): the largest divisor of
    `n` up to `most` (onnxruntime wants `n` divisible by it). In one go, onnxruntime keeps every
    activation of every input until the end and histograms them at once: Percentile on 256 inputs to
    EfficientNet-Lite0 at 224 px took 97-106 s and 16.2 GB peak (the whole flow peaked at 17.7 GB of
    this machine's 23), in chunks of 16 16.5 s and 1.4 GB (bench/int8_calibration.py). MinMax ranges
    are the same either way; a histogram merged chunk by chunk keeps the first chunk's bin width,
    extended to the largest value seen (ranges within 0.06% of one go's)."""
    most = CALIBRATION_CHUNK if most is None else most
    return max(d for d in range(1, max(1, min(n, most)) + 1) if n % d == 0)


def export_int8(prepared: Path, calib: np.ndarray, out_path: Path, per_channel: bool = True,
                method: str = "minmax", reduce_range: bool = False, keep_head_float: bool = False,
                percentile: float = 99.999, float_convs: int = 0, weight_type: str = "int8",
                ranges_cache: Path | None = None) -> dict[str, object]:
    """Static QDQ quantisation (uint8 activations, `weight_type` weights) of the `prepare_int8` graph
    `prepared`, calibrated on `calib` [N, C, H, W], the first `float_convs` convolutions (and the
    classifier with `keep_head_float`) left in float; returns the settings used (for the card).
    `ranges_cache`: onnxruntime's calibration cache (JSON activation ranges): the candidates of one
    search share the float graph, the calibration inputs and, per method, the ranges, so only the
    first candidate of a method runs the calibration (about 20 s of a candidate's 30 s at 160 px)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    exclude = first_convs(prepared, float_convs) + (head_nodes(prepared) if keep_head_float else [])
    extra = {"CalibPercentile": float(percentile)} if method == "percentile" else {}
    extra["CalibStridedMinMax"] = calibration_stride(len(calib))
    quantize_static(str(prepared), str(out_path), _Reader(calib), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QUInt8 if weight_type == "uint8" else QuantType.QInt8,
                    calibrate_method=methods[method], nodes_to_exclude=exclude, extra_options=extra,
                    calibration_cache_path=ranges_cache)
    return {"method": method, "weight_type": weight_type, "per_channel": per_channel, "reduce_range": reduce_range,
            "n_calibration": int(len(calib)), "float_convs": int(float_convs), "float_head": bool(keep_head_float),
            "float_nodes": exclude, **({"percentile": float(percentile)} if method == "percentile" else {})}


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
