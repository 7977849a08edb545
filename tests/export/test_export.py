"""The export phase end to end on a tiny trained student: ONNX variants gated on onnxruntime, TF.js
variants in Node (wasm) and headless Chromium, a corrupted variant refused and not registered, and
the served page classifying test photos like torch. TF.js/browser parts skip, saying why, where the
TF environment, Node packages or Chromium are absent (`make export-env`, `make browser-deps`)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from export_fixtures import make_split, make_student
from pipeline.core.config import PipelineConfig
from pipeline.export import browser, gate, onnx_export, runtimes
from pipeline.export.variants import run_export

# every test here exports a real student (ONNX, TF.js) or loads one: `make test`, not the inner loop
pytestmark = pytest.mark.slow

SOURCE = {"calibration_artifact": "test-calibration", "arch": "tf_efficientnet_lite0"}


def _tfjs_missing() -> str:
    cfg = PipelineConfig().export
    return runtimes.tf_python(cfg)[1] or runtimes.node_modules(cfg)[1]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_data")
    split = make_split(root)
    return root, split, make_student(root, split)


@pytest.fixture(scope="module")
def exported(student, tmp_path_factory):
    root, split, model_dir = student
    out = tmp_path_factory.mktemp("export_out")
    metrics = run_export(model_dir, split, root, PipelineConfig().export, out, SOURCE)
    return out, metrics, json.loads((out / "export.json").read_text())


def test_onnx_variants_cards_and_gate(exported, student):
    out, metrics, summary = exported
    assert summary["inputs"]["inputs"] == 200 and summary["inputs"]["test_images"] == 20
    fp32 = summary["variants"]["onnx_fp32"]
    assert fp32["gate"]["passed"] and fp32["gate"]["checks"]["onnxruntime"]["corr"] > 0.99999
    assert (out / "onnx_fp32" / "model.onnx").is_file() and (out / "onnx_fp32" / "card.json").is_file()
    card = json.loads((out / "onnx_fp32" / "card.json").read_text())
    assert card["class_names"] == ["checker", "hstripes", "vstripes", "blobs"] and card["layout"] == "NCHW"
    assert card["temperature"] == pytest.approx(1.3) and card["threshold"] == pytest.approx(0.6)
    assert card["source"] == SOURCE and card["size_bytes"] > 100_000
    cfg = PipelineConfig().export
    for name, c in summary["variants"].items():  # every verdict follows from its recorded figures
        verdicts = [gate.verdict(f, cfg)[0] for f in c["gate"]["checks"].values()]
        assert c["gate"]["passed"] == (bool(verdicts) and all(verdicts)), name
        assert (name in summary["passed"]) == c["gate"]["passed"]
        assert (out / c["dir"]).is_dir() and c["dir"].startswith("rejected/") != c["gate"]["passed"]
    assert metrics["n_passed"] == len(summary["passed"]) and metrics["onnx_fp32_passed"] == 1.0
    # INT8 keeps the answers on the student's own test inputs (calibrated on its train images and their views)
    int8 = summary["variants"]["onnx_int8"]
    f = int8["gate"]["checks"]["onnxruntime"]
    assert int8["gate"]["passed"] and f["top1_agreement"] >= 0.99, int8["gate"]["reason"]
    assert f["test_top1"] == fp32["gate"]["checks"]["onnxruntime"]["test_top1"] and f["test_n"] == 20
    info = int8["int8"]
    assert info["settings"]["n_calibration"] == 256 and info["selected_on"].startswith("192 inputs from 16 validation images")
    chosen = onnx_export.resolve_weight_type(PipelineConfig().export.int8_weight_type, info["cpu"])[0]
    assert info["weight_type"] == chosen == info["settings"]["weight_type"]
    assert info["reduce_range"] == onnx_export.resolve_reduce_range("auto", info["cpu"], info["weight_type"])[0]
    assert "VNNI" in (out / "report.md").read_text() and int8["size_bytes"] < fp32["size_bytes"] / 3


def test_corrupted_variant_is_refused_and_not_registered(student, tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper

    from pipeline.export import onnx_export
    from pipeline.registry.export_io import attach_variants
    from pipeline.registry.versions import register_classifier, registry_client

    def corrupted_fp16(fp32_path, out_path):  # a "fp16" file whose first conv kernel is garbage
        model = onnx.load(str(fp32_path))
        init = next(i for i in model.graph.initializer if len(numpy_helper.to_array(i).shape) == 4)
        w = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(np.random.default_rng(0).normal(0, 1, w.shape).astype(w.dtype), init.name))
        onnx.save(model, str(out_path))
        return out_path

    monkeypatch.setattr(onnx_export, "export_fp16", corrupted_fp16)
    root, split, model_dir = student
    # |dp| <= 1e-4: FP32 passes, no INT8 can; one calibration method, no float-head candidates
    cfg = PipelineConfig().export.model_copy(update={"onnx_variants": ["fp32", "fp16", "int8"], "tfjs_variants": [],
                                                     "n_inputs": 40, "n_calibration": 40, "max_prob_diff": 1e-4,
                                                     "int8_method": "minmax", "int8_keep_head_float": "never"})
    out = tmp_path / "export"
    out.mkdir()
    run_export(model_dir, split, root, cfg, out, SOURCE)
    summary = json.loads((out / "export.json").read_text())
    assert summary["passed"] == ["onnx_fp32"]
    assert not summary["variants"]["onnx_fp16"]["gate"]["passed"]
    assert (out / "rejected" / "onnx_fp16" / "model.onnx").is_file() and not (out / "onnx_fp16").exists()
    # the refused INT8 variant: every candidate in its card, and the per-layer error table in card and report
    int8 = summary["variants"]["onnx_int8"]
    assert not int8["gate"]["passed"] and "max |dp|" in int8["gate"]["reason"]
    search = int8["int8"]["search"]
    assert [t["float_convs"] for t in search] == [0, 1, 4, 8] and "float_head" in int8["int8"]["settings"]
    # the most INT8 and the most-float candidates fail, so the two between are not tried (and say so)
    assert [t["passed"] for t in search] == [False, None, None, False]
    assert all(t["reason"].startswith("not tried: the most-float") for t in search[1:3])
    table = int8["layer_errors"]
    assert len(table) > 10 and all(r["xmodel_sqnr"] is not None for r in table[:-1])  # graph order, INT8 tensors
    assert table[-1]["tensor"] == "(weights, lowest SQNR)" and table[-1]["qdq_sqnr"] > 0, table[-1]
    assert json.loads((out / "rejected" / "onnx_int8" / "card.json").read_text())["layer_errors"] == table
    report = (out / "report.md").read_text()
    assert "onnx_int8: per-layer error" in report and f"| {table[1]['tensor']} |" in report

    client = registry_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mv = register_classifier(client, "test-student", model_dir, "test")
    assert attach_variants(client, mv, out) == ["onnx_fp32"]
    logged = {Path(a.path).name for a in client.list_artifacts(mv.run_id, "export")}
    assert "onnx_fp32" in logged and "onnx_fp16" not in logged
    tags = client.get_model_version("test-student", mv.version).tags
    assert tags["pipeline.export.passed"] == "onnx_fp32" and tags["pipeline.export.browser_variant"] == "none"


def test_tfjs_variants_in_node_and_chromium(exported):
    if why := _tfjs_missing():
        pytest.skip(f"TF.js export not available: {why}")
    _, metrics, summary = exported
    fp32 = summary["variants"]["tfjs_fp32"]
    assert fp32["layout"] == "NHWC" and fp32["gate"]["passed"]
    assert fp32["gate"]["checks"]["node"]["corr"] > 0.99999 and fp32["gate"]["checks"]["node"]["top1_agreement"] == 1.0
    assert summary["browser_variants"] and metrics["tfjs_fp32_node_latency_ms"] > 0
    if not (why := browser.browser_missing("/usr/bin/chromium", "/usr/bin/chromedriver")):
        assert fp32["gate"]["checks"]["chromium"]["top1_agreement"] == 1.0
    sizes = {v: summary["variants"][v]["size_bytes"] for v in ("tfjs_fp32", "tfjs_fp16", "tfjs_uint8")}
    assert sizes["tfjs_uint8"] < sizes["tfjs_fp16"] < sizes["tfjs_fp32"]
    # model.json in a canonical form (the converter's attribute order changed bytes between processes)
    out = exported[0]
    for v in ("tfjs_fp32", "tfjs_fp16"):
        text = (out / summary["variants"][v]["dir"] / "model.json").read_text()
        assert text == json.dumps(json.loads(text), sort_keys=True), v


def test_page_classifies_test_photos_like_torch(exported, student):
    if why := (_tfjs_missing() or browser.browser_missing("/usr/bin/chromium", "/usr/bin/chromedriver")):
        pytest.skip(f"browser check not available: {why}")
    from pipeline.training.inference import Predictor

    out, _, summary = exported
    root, split, model_dir = student
    variant = out / summary["variants"][summary["browser_variants"][0]]["dir"]
    test = pd.read_parquet(split).query("split == 'test'")
    photos = [root / p for p in test["path"]][:12]
    torch_answers = Predictor.from_dir(model_dir).predict(photos)
    shots = Path(tempfile.mkdtemp(prefix="export-page-"))
    mods, _ = runtimes.node_modules(PipelineConfig().export)
    site = browser.build_site(variant, json.loads((variant / "card.json").read_text()), mods, shots / "site")
    with browser.serve(site) as url, browser.Chromium("/usr/bin/chromium", "/usr/bin/chromedriver", 120) as chrome:
        assert url.startswith("http://127.0.0.1:")
        chrome.open(url)
        answers = [chrome.classify_file(p) for p in photos]
        chrome.screenshot(shots / "page.png")
    print(f"\nscreenshot of the page with a prediction: {shots / 'page.png'}")
    assert (shots / "page.png").stat().st_size > 5_000
    ref = Predictor.from_dir(model_dir)
    from pipeline.training.inference import batched_logits

    torch_logits, _ = batched_logits(ref.model, ref.meta, photos)
    figures = gate.compare(torch_logits, np.asarray([a["logits"] for a in answers], dtype=np.float32))
    assert gate.verdict(figures, PipelineConfig().export)[0], figures
    assert [a["label"] for a in answers] == list(torch_answers["label"])
    for a, nc in zip(answers, torch_answers["not_conclusive"]):
        assert a["conclusive"] == (not nc)
        assert ("not conclusive" in a["text"]) == nc


# -- a model trained on crops, given whole photos ------------------------------------------------------


@pytest.fixture(scope="module")
def crops_student(student, tmp_path_factory):
    """The student as a crops model (export_fixtures.CROP_RULE: 96 px windows fitted to 72 px, blobs =
    clean) and whole photos tiled from pattern tiles."""
    from export_fixtures import crops_model, make_photos

    _, _, model_dir = student
    base = tmp_path_factory.mktemp("crops_student")
    return crops_model(model_dir, base / "model"), make_photos(base / "photos")


def test_crops_model_answers_a_photo_per_window_and_for_the_photo(crops_student):
    from export_fixtures import PHOTOS, TILE
    from pipeline.data.images import load_rgb
    from pipeline.retrieval.crop_rule import photo_answer
    from pipeline.retrieval.crop_item import fit_size
    from pipeline.training.inference import Predictor, image_logits, softmax

    model_dir, photos = crops_student
    pred = Predictor.from_dir(model_dir)
    out = pred.predict([photos[n] for n in ("clean", "one_checker", "stripes", "odd")]).set_index(
        pd.Index(["clean", "one_checker", "stripes", "odd"]))
    for name, rows in PHOTOS.items():  # 96 px windows without overlap: exactly the tiles
        windows = json.loads(out.loc[name, "windows"])
        assert out.loc[name, "n_windows"] == len(rows) * len(rows[0]) == len(windows)
        assert [w["box"] for w in windows] == [[c * TILE, r * TILE, (c + 1) * TILE, (r + 1) * TILE]
                                               for r in range(len(rows)) for c in range(len(rows[0]))]
    odd = json.loads(out.loc["odd", "windows"])  # 250 x 170: windows clamped into the photo, overlapping
    assert sorted({w["box"][0] for w in odd}) == [0, 96, 154] and sorted({w["box"][1] for w in odd}) == [0, 74]
    # each window answered like the same region cut out and fitted as a training crop; the photo by the rule
    image = load_rgb(str(photos["one_checker"]), 10**8)[0]
    windows = json.loads(out.loc["one_checker", "windows"])
    cut = [fit_size(image.crop(tuple(w["box"])), 72) for w in windows]
    probs = softmax(image_logits(pred.model, pred.meta, cut), pred.temperature)
    assert [w["label"] for w in windows] == [pred.class_names[k] for k in probs.argmax(axis=1)]
    assert [w["confidence"] for w in windows] == pytest.approx(list(probs.max(axis=1)), abs=1e-5)
    expected = photo_answer(probs, pred.class_names, pred.threshold, "clean")
    assert out.loc["one_checker", "label"] == expected["label"] and out.loc["one_checker", "damaged"] == expected["damaged"]
    assert out.loc["one_checker", "confidence"] == pytest.approx(expected["confidence"], abs=1e-6)
    assert out.loc["one_checker", "label"] == "checker" and bool(out.loc["one_checker", "damaged"])
    assert windows[expected["window"]]["box"] == [TILE, 0, 2 * TILE, TILE]  # the checker tile answers
    assert out.loc["clean", "label"] == "clean" and not out.loc["clean", "damaged"]
    assert bool(out.loc["stripes", "damaged"]) and out.loc["stripes", "label"] in ("hstripes", "vstripes")
    # a crop given as such (whole_image) and a whole-image model answer on the whole image, as before
    whole = pred.predict([photos["clean"]], whole_image=True)
    assert pd.isna(whole.loc[0, "n_windows"]) and whole.loc[0, "label"] in pred.class_names


def test_page_answers_photos_per_window_like_python(exported, crops_student):
    """The page's JS crop rule against Python's on the same photos: same windows, same answers."""
    if why := (_tfjs_missing() or browser.browser_missing("/usr/bin/chromium", "/usr/bin/chromedriver")):
        pytest.skip(f"browser check not available: {why}")
    from export_fixtures import CROP_CLASSES, CROP_RULE
    from pipeline.training.inference import Predictor

    out, _, summary = exported
    model_dir, photos = crops_student
    variant = out / summary["variants"]["tfjs_fp32"]["dir"]
    card = {**json.loads((variant / "card.json").read_text()), "class_names": list(CROP_CLASSES), "crop_rule": CROP_RULE}
    mods, _ = runtimes.node_modules(PipelineConfig().export)
    site = browser.build_site(variant, card, mods, Path(tempfile.mkdtemp(prefix="export-crops-page-")) / "site")
    names = ["clean", "one_checker", "stripes", "odd"]
    with browser.serve(site) as url, browser.Chromium("/usr/bin/chromium", "/usr/bin/chromedriver", 120) as chrome:
        chrome.open(url)
        page = [chrome.classify_file(photos[n]) for n in names]
    python = Predictor.from_dir(model_dir).predict([photos[n] for n in names])
    agree, total, worst = 0, 0, 0.0
    for name, js, (_, py) in zip(names, page, python.iterrows()):
        windows = json.loads(py["windows"])
        assert [w["box"] for w in js["windows"]] == [w["box"] for w in windows], name
        agree += sum(a["label"] == b["label"] for a, b in zip(js["windows"], windows))
        total += len(windows)
        worst = max([worst] + [abs(a["confidence"] - b["confidence"]) for a, b in zip(js["windows"], windows)])
        assert js["label"] == py["label"] and js["damaged"] == py["damaged"], name
        assert js["confidence"] == pytest.approx(py["confidence"], abs=0.05), name
        assert ("not conclusive" in js["text"]) == bool(py["not_conclusive"]) and f"{len(windows)} windows" in js["text"]
    print(f"\nPython vs browser on {len(names)} photos: {agree}/{total} windows agree, max |d confidence| {worst:.4f}")
    assert agree == total
