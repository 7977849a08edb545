"""Pure rules of the export side: the photo's answer from its windows, the crop rule a model records,
and the INT8 reduce_range decision from the CPU flags (no model needed)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import PipelineConfig
from pipeline.export import onnx_export as ox
from pipeline.retrieval.crop_rule import photo_answer, rule_of, training_rule

CLASSES = ["clean", "dent", "scratch"]


def test_photo_is_damaged_with_its_most_confident_damaged_window():
    probs = np.array([[0.9, 0.05, 0.05], [0.3, 0.6, 0.1], [0.2, 0.1, 0.7], [0.2, 0.75, 0.05]])
    a = photo_answer(probs, CLASSES, 0.65, "clean")
    assert a == {"label": "dent", "confidence": 0.75, "damaged": True, "window": 3, "not_conclusive": False}
    assert photo_answer(probs, CLASSES, 0.8, "clean")["not_conclusive"] is True


def test_clean_photo_takes_its_least_sure_window():
    probs = np.array([[0.9, 0.05, 0.05], [0.55, 0.4, 0.05], [0.8, 0.1, 0.1]])
    a = photo_answer(probs, CLASSES, 0.6, "clean")
    assert (a["label"], a["confidence"], a["damaged"], a["window"]) == ("clean", 0.55, False, 1)
    assert a["not_conclusive"] is True


def test_without_a_clean_class_the_most_confident_window_answers():
    probs = np.array([[0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    a = photo_answer(probs, ["a", "b", "c"], None, None)
    assert (a["label"], a["confidence"], a["damaged"], a["not_conclusive"]) == ("c", 0.8, None, False)
    assert photo_answer(np.zeros((0, 3)), ["a", "b", "c"], None, None)["label"] is None


def test_training_rule_records_the_crop_geometry_and_the_detector_used(tmp_path):
    crops = tmp_path / "crops_artifact"
    (crops / "crops" / "ab").mkdir(parents=True)
    (crops / "lineage.json").write_text(json.dumps({"info": {"detector": "opencv_dnn", "detector_reason": "SSD",
                                                             "detector_weights": "frozen_inference_graph.pb"}}))
    frame = pd.DataFrame({"path": [str(crops / "crops/ab/x.jpg")], "crop_path": ["crops/ab/x.jpg"]})
    cfg = PipelineConfig.model_validate({"crops": {"grid_size": 320, "grid_overlap": 0.5}})
    rule = training_rule(SimpleNamespace(source="crops", target="damage_class", class_names=["clean", "dent"],
                                         frame=frame), cfg)
    assert (rule["grid_size"], rule["grid_overlap"], rule["target_size"], rule["clean_class"]) == (320, 0.5, 448, "clean")
    assert rule["detector"] == {"backend": "opencv_dnn", "reason": "SSD", "weights": "frozen_inference_graph.pb"}
    assert rule["detect"] == cfg.detect.model_dump(mode="json") and rule_of({"crop_rule": rule}) is rule
    images = training_rule(SimpleNamespace(source="images", target="label", class_names=["a"], frame=frame), cfg)
    assert images == {"source": "images"} and rule_of({"crop_rule": images}) is None and rule_of({}) is None


@pytest.mark.parametrize("flags, vnni, weights", [
    ("fpu sse4_2 avx avx2 fma", False, "uint8"),
    ("fpu sse4_2 avx avx2 avx512f avx512_vnni", True, "int8"),
    ("fpu sse4_2 avx avx2 avx_vnni", True, "int8"),
])
def test_weight_type_and_reduce_range_follow_vnni(flags, vnni, weights):
    cpu = ox.cpu_int8_info(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu["vnni"] is vnni and cpu["avx2"] is True
    assert ox.resolve_weight_type("auto", cpu)[0] == weights and ox.resolve_weight_type("int8", cpu)[0] == "int8"
    # uint8 weights need no 7-bit range; int8 weights without VNNI do (u8s8 saturation), with VNNI they do not
    assert ox.resolve_reduce_range("auto", cpu, weights)[0] is False
    assert ox.resolve_reduce_range("auto", cpu, "int8")[0] is (not vnni)
    assert ox.resolve_reduce_range("true", cpu)[0] is True and ox.resolve_reduce_range("false", cpu)[0] is False


def test_dead_channels_are_zeroed_so_their_bias_survives_int8(tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    w = np.random.default_rng(0).normal(0, 1, (4, 3, 3, 3)).astype(np.float32)
    w[1] *= 1e-8  # a dead channel: its output is its bias
    b = np.array([0.1, 2.0, -0.3, 0.5], dtype=np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert ox.zero_dead_channels(path) == 1
    kept = numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])
    assert not kept[1].any() and np.array_equal(kept[[0, 2, 3]], w[[0, 2, 3]])
    assert ox.zero_dead_channels(path) == 0  # nothing left to zero (an all-zero channel is not "dead")


def test_calibration_runs_in_chunks_that_divide_the_inputs_and_keep_minmax_ranges(tmp_path, monkeypatch):
    """onnxruntime calibrates chunk by chunk (CalibStridedMinMax): each chunk divides the inputs (it refuses
    otherwise), and the MinMax ranges are those of one pass over every input, the largest value included
    wherever it falls."""
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.calibrate import load_tensors_data

    assert [ox.calibration_stride(n, 16) for n in (1, 7, 16, 200, 256, 257)] == [1, 7, 16, 10, 16, 1]
    w = np.random.default_rng(1).normal(0, 1, (4, 3, 3, 3)).astype(np.float32)
    conv = helper.make_node("Conv", [ox.INPUT_NAME, "w"], ["c"], pads=[1, 1, 1, 1])
    relu = helper.make_node("Relu", ["c"], ["y"])
    graph = helper.make_graph([conv, relu], "g", [helper.make_tensor_value_info(ox.INPUT_NAME, onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
                              [numpy_helper.from_array(w, "w")])
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    x = np.random.default_rng(2).normal(0, 1, (24, 3, 8, 8)).astype(np.float32)
    x[17] *= 10  # the extreme input sits in a later chunk
    strides, real = [], ox.calibration_stride
    monkeypatch.setattr(ox, "calibration_stride", lambda n, most=None: strides.append(real(n, 5)) or strides[-1])
    ox.export_int8(model, x, tmp_path / "chunks.onnx", method="minmax", ranges_cache=tmp_path / "chunks.json")
    monkeypatch.setattr(ox, "calibration_stride", lambda n, most=None: None)  # onnxruntime's one pass
    ox.export_int8(model, x, tmp_path / "one.onnx", method="minmax", ranges_cache=tmp_path / "one.json")
    assert strides == [4]  # 24 inputs: chunks of 4 (the largest divisor up to 5)
    chunks, one = load_tensors_data(tmp_path / "chunks.json"), load_tensors_data(tmp_path / "one.json")
    assert sorted(chunks.keys()) == sorted(one.keys()) and "y" in chunks.keys()
    for name in one.keys():
        assert np.allclose(np.ravel(chunks[name].range_value), np.ravel(one[name].range_value)), name
    assert float(np.ravel(one[ox.INPUT_NAME].range_value)[1]) == pytest.approx(float(x.max()))


def test_int8_search_tries_the_ends_first_and_skips_the_middle_when_the_most_float_fails():
    from pipeline.export.int8 import candidates, search_order

    assert search_order(5) == [0, 4, 1, 2, 3] and search_order(2) == [0, 1] and search_order(1) == [0]
    cfg = PipelineConfig().export.model_copy(update={"int8_keep_head_float": "auto"})
    cands = candidates(cfg, "minmax")
    # the order of the candidates themselves: fewer float layers first, the float head last
    assert [(c["float_convs"], c["keep_head_float"]) for c in cands] == [(0, False), (1, False), (4, False),
                                                                          (8, False), (8, True)]
