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


@pytest.mark.parametrize("flags, vnni, reduce", [
    ("fpu sse4_2 avx avx2 fma", False, True),
    ("fpu sse4_2 avx avx2 avx512f avx512_vnni", True, False),
    ("fpu sse4_2 avx avx2 avx_vnni", True, False),
])
def test_reduce_range_follows_vnni(flags, vnni, reduce):
    cpu = ox.cpu_int8_info(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu["vnni"] is vnni and cpu["avx2"] is True
    assert ox.resolve_reduce_range("auto", cpu)[0] is reduce
    assert ox.resolve_reduce_range("true", cpu)[0] is True and ox.resolve_reduce_range("false", cpu)[0] is False
