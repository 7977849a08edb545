"""Vehicle detection: backends, the auto choice, class filter, largest box, margin, offline weight resolution."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pipeline.core.config import DetectConfig
from pipeline.retrieval.detect import (
    COCO90_NAMES,
    Detection,
    ModelUnavailable,
    expand_box,
    make_detector,
    parse_ssd,
    resolve_detector,
    parse_yolo,
    resolve_yolo_weights,
    select_vehicle,
    ultralytics_candidates,
)

SHARED = Path(__file__).resolve().parents[3] / "shared"
SSD_DIR = SHARED / "models" / "ssd_mobilenet_v2_coco"
PHOTOS = SHARED / "data" / "car-photos"


def _noise(w: int = 320, h: int = 240, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_none_backend_is_the_whole_image():
    det = make_detector(DetectConfig(backend="none"))
    d = det.detect(_noise(320, 240))
    assert d.found and d.box == (0, 0, 320, 240) and d.conf == 1.0 and d.area_ratio == 1.0
    assert det.describe() == {"backend": "none", "weights": None, "random_init": False}


def test_margin_is_a_fraction_of_the_box_rounded_outwards_and_clipped():
    assert expand_box((50, 50, 150, 100), 0.1, (400, 300)) == (40, 45, 160, 105)
    assert expand_box((10, 20, 110, 220), 0.1, (200, 230)) == (0, 0, 120, 230)  # clipped at 0 and at h
    assert expand_box((10.5, 10.5, 20.2, 20.2), 0.0, (100, 100)) == (10, 10, 21, 21)
    assert expand_box((0, 0, 200, 100), 0.5, (200, 100)) == (0, 0, 200, 100)


def test_select_vehicle_filters_classes_and_confidence_and_picks_the_largest_box():
    cfg = DetectConfig(conf=0.3, margin=0.0)
    cands = [
        ((0, 0, 300, 200), 0.9, "person"),  # largest, wrong class
        ((10, 10, 60, 60), 0.95, "car"),
        ((100, 50, 250, 150), 0.5, "truck"),  # the largest vehicle
        ((0, 0, 290, 190), 0.2, "bus"),  # larger still, below conf
    ]
    d = select_vehicle(cands, (320, 240), cfg, "test")
    assert d.found and d.class_name == "truck" and d.box == (100, 50, 250, 150)
    assert d.conf == pytest.approx(0.5) and d.area_ratio == pytest.approx(150 * 100 / (320 * 240))
    assert d.raw_box == (100.0, 50.0, 250.0, 150.0)


def test_no_vehicle_is_a_miss_with_the_whole_image_not_an_error():
    d = select_vehicle([((0, 0, 10, 10), 0.9, "person")], (64, 48), DetectConfig(), "test")
    assert d == Detection.miss((64, 48), "test")
    assert not d.found and d.box == (0, 0, 64, 48)


def test_ultralytics_output_parsing_with_a_fake_results_object():
    result = SimpleNamespace(
        boxes=SimpleNamespace(
            xyxy=np.array([[0, 0, 200, 200], [10, 10, 100, 80], [5, 5, 150, 120]], dtype=np.float32),
            conf=np.array([0.9, 0.8, 0.7], dtype=np.float32),
            cls=np.array([0, 2, 7], dtype=np.float32),
        ),
        names={0: "person", 2: "car", 7: "truck"},
    )
    cands = ultralytics_candidates(result)
    assert [c[2] for c in cands] == ["person", "car", "truck"]
    d = select_vehicle(cands, (320, 240), DetectConfig(margin=0.1), "ultralytics")
    assert d.class_name == "truck" and d.raw_box == (5.0, 5.0, 150.0, 120.0)
    assert d.box == (0, 0, 165, 132)  # 14.5 / 11.5 px margin, clipped at 0


def test_ultralytics_random_init_runs_the_real_predict_path():
    """Random-initialised YOLOv8n (no weights offline): real loading, preprocessing, NMS and parsing."""
    img = _noise(320, 240)
    det = make_detector(DetectConfig(backend="ultralytics", allow_random_init=True, classes=["person"], conf=0.0,
                                     imgsz=64))
    assert det.describe()["random_init"] is True
    d = det.detect(img)
    # a random head scores every class alike and argmax picks class 0 ('person'): boxes exist
    assert d.found and d.backend == "ultralytics" and d.class_name == "person"
    assert 0 <= d.x0 < d.x1 <= 320 and 0 <= d.y0 < d.y1 <= 240
    cars = make_detector(DetectConfig(backend="ultralytics", allow_random_init=True, conf=0.0, imgsz=64))
    assert cars.detect(img).box == (0, 0, 320, 240)  # no car among them: a miss, not an error


def test_ultralytics_missing_weights_fail_with_the_three_ways_to_provide_them(tmp_path):
    with pytest.raises(ModelUnavailable) as err:
        make_detector(DetectConfig(backend="ultralytics", weights="yolov8n-nowhere.pt"), tmp_path)
    msg = str(err.value)
    assert "yolov8n-nowhere.pt" in msg and "local file path" in msg and f"weights dir {tmp_path}" in msg
    assert "detect.allow_random_init=true" in msg
    with pytest.raises(ModelUnavailable, match="best.yaml"):  # random init needs a known architecture name
        make_detector(DetectConfig(backend="ultralytics", weights="best.pt", allow_random_init=True))


def test_yolo_weights_resolve_from_a_path_or_the_weights_dir(tmp_path):
    local = tmp_path / "mine.pt"
    local.write_bytes(b"x")
    cache = tmp_path / "weights"
    cache.mkdir()
    (cache / "yolov8n.pt").write_bytes(b"x")
    assert resolve_yolo_weights(str(local), cache) == local
    assert resolve_yolo_weights("yolov8n.pt", cache) == cache / "yolov8n.pt"
    assert resolve_yolo_weights("yolov8s.pt", cache) is None
    assert resolve_yolo_weights(str(tmp_path / "elsewhere" / "yolov8n.pt"), cache) is None  # a path is not a name
    assert resolve_yolo_weights("yolov8n.yaml", cache) is None
    assert resolve_yolo_weights("yolov8n.pt", None) is None  # no weights dir: only paths resolve


def test_a_bare_weights_name_never_resolves_from_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "yolov8n.pt").write_bytes(b"x")
    assert resolve_yolo_weights("yolov8n.pt", tmp_path / "weights") is None
    assert resolve_yolo_weights("./yolov8n.pt", tmp_path / "weights") == Path("yolov8n.pt")


def test_ssd_output_parsing_uses_the_coco_90_id_labels():
    assert (COCO90_NAMES[3], COCO90_NAMES[6], COCO90_NAMES[8], COCO90_NAMES[90]) == ("car", "bus", "truck", "toothbrush")
    out = np.array([[[[0, 3, 0.8, 0.1, 0.2, 0.5, 0.6], [0, 12, 0.9, 0, 0, 1, 1], [0, 8, 0.4, 0, 0, 0.5, 0.5]]]], np.float32)
    cands = parse_ssd(out, (200, 100))
    assert [c[2] for c in cands] == ["car", "truck"]  # id 12 is unused in the 90-id map
    assert cands[0][0] == pytest.approx((20, 20, 100, 60))


def test_yolo_onnx_output_parsing_with_nms_and_scale():
    # [1, 4 + nc, N]: cx, cy, w, h in input px, then nc class scores
    preds = np.array([
        [50, 50, 40, 40, 0.1, 0.9, 0.0],  # class 1
        [52, 50, 40, 40, 0.1, 0.8, 0.0],  # suppressed by the first (same class, IoU > 0.45)
        [52, 50, 40, 40, 0.0, 0.0, 0.7],  # class 2: kept (NMS per class)
        [10, 10, 4, 4, 0.05, 0.1, 0.0],  # below conf
    ], np.float32)
    out = preds.T[None]
    cands = parse_yolo(out, 0.5, ["a", "car", "truck"], conf=0.25)
    assert sorted((c[2], round(c[1], 2)) for c in cands) == [("car", 0.9), ("truck", 0.7)]
    car = next(c for c in cands if c[2] == "car")
    assert car[0] == pytest.approx((60, 60, 140, 140))  # input px / 0.5


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_opencv_dnn_runs_a_yolov8_onnx_export_of_a_random_model(tmp_path):
    """A random-initialised YOLOv8n exported to ONNX: OpenCV loading, letterbox and [1, 84, N] parsing."""
    import torch

    from pipeline.retrieval.detect import ultralytics_offline

    model = ultralytics_offline().YOLO("yolov8n.yaml").model.eval()
    for module in model.modules():
        if type(module).__name__ == "Detect":
            module.export, module.format = True, "onnx"
    path = tmp_path / "yolov8n-random.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 64, 64), str(path), dynamo=False, opset_version=17)
    det = make_detector(DetectConfig(backend="opencv_dnn", dnn_model=str(path), classes=["person"], conf=0.0, imgsz=64))
    d = det.detect(_noise(320, 240))
    assert det.describe()["model_kind"] == "yolo_onnx"
    assert d.found and d.backend == "opencv_dnn" and d.class_name == "person"
    assert 0 <= d.x0 < d.x1 <= 320 and 0 <= d.y0 < d.y1 <= 240


def test_importing_ultralytics_leaves_pillow_open_alone(tmp_path):
    """Ultralytics patches PIL.Image.open to fetch pi-heif on an unknown file: offline that turned every later
    bad file into ModuleNotFoundError (the audit's and drift's UnidentifiedImageError handling never ran)."""
    from PIL import Image, UnidentifiedImageError

    from pipeline.retrieval.detect import ultralytics_offline

    ultralytics_offline()
    bad = tmp_path / "not_an_image.jpg"
    bad.write_bytes(b"this is not a picture" * 10)
    with pytest.raises(UnidentifiedImageError):
        Image.open(bad)


def test_opencv_dnn_needs_local_files(tmp_path):
    with pytest.raises(ModelUnavailable, match="needs detect.dnn_model"):
        make_detector(DetectConfig(backend="opencv_dnn"))
    with pytest.raises(ModelUnavailable, match="not a local file"):
        make_detector(DetectConfig(backend="opencv_dnn", dnn_model=str(tmp_path / "none.pb")))
    pb = tmp_path / "graph.pb"
    pb.write_bytes(b"x")
    with pytest.raises(ModelUnavailable, match="dnn_config"):
        make_detector(DetectConfig(backend="opencv_dnn", dnn_model=str(pb)))


@pytest.mark.parametrize("photo", ["licenseplate_motion.jpg", "building.jpg"])
def test_opencv_dnn_ssd_finds_the_car_in_real_photos(photo):
    pb, pbtxt = SSD_DIR / "frozen_inference_graph.pb", SSD_DIR / "ssd_mobilenet_v2_coco_2018_03_29.pbtxt"
    if not (pb.is_file() and pbtxt.is_file() and (PHOTOS / photo).is_file()):
        pytest.skip(f"shared SSD model or photo not present under {SHARED}")
    from pipeline.data.images import load_rgb

    img, _ = load_rgb(PHOTOS / photo, 89_478_485)
    det = make_detector(DetectConfig(backend="opencv_dnn", dnn_model=str(pb), dnn_config=str(pbtxt), conf=0.4))
    d = det.detect(img)
    assert d.found and d.class_name == "car" and d.conf > 0.5
    assert 0 <= d.x0 < d.x1 <= img.width and 0 <= d.y0 < d.y1 <= img.height
    if photo == "building.jpg":  # a small car low in the frame
        assert d.area_ratio < 0.05 and d.y0 > img.height * 0.7
    else:  # the rear of a car filling the frame
        assert d.area_ratio > 0.5


# -- backend 'auto' (the default) --------------------------------------------------------------------


def test_auto_is_the_default_and_takes_the_whole_image_when_no_model_is_there(tmp_path):
    assert DetectConfig().backend == "auto"
    choice = resolve_detector(DetectConfig(), tmp_path / "weights")
    assert choice.backend == "none" and not choice.random_init and choice.weights is None
    assert choice.reason == ("detect.backend=auto, no Ultralytics weights ('yolov8n.pt' is not in the weights dir) "
                             "and no detect.dnn_model: the whole image is the vehicle box")
    assert str(tmp_path) not in choice.reason  # the reason goes into the artifact: no work-dir paths
    assert choice.info() == {"detector": "none", "detector_reason": choice.reason}
    det = make_detector(DetectConfig(), tmp_path / "weights")
    assert det.detect(_noise(64, 48)).box == (0, 0, 64, 48)
    assert "no weights dir" in resolve_detector(DetectConfig()).reason


def test_auto_takes_ultralytics_weights_from_the_weights_dir(tmp_path):
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    (weights_dir / "yolov8n.pt").write_bytes(b"yolo weights")
    cfg = DetectConfig(dnn_model=str(tmp_path / "ignored.onnx"))  # Ultralytics comes first
    choice = resolve_detector(cfg, weights_dir)
    assert choice.backend == "ultralytics" and choice.weights == weights_dir / "yolov8n.pt"
    assert choice.reason == "detect.backend=auto: Ultralytics weights 'yolov8n.pt' found (in the weights dir)"
    import hashlib

    assert choice.identity["weights"] == {"name": "yolov8n.pt", "sha256": hashlib.sha256(b"yolo weights").hexdigest()}
    assert choice.info()["detector_weights"] == "yolov8n.pt"


def test_auto_takes_the_configured_opencv_dnn_model_when_there_are_no_ultralytics_weights(tmp_path):
    pb, pbtxt = SSD_DIR / "frozen_inference_graph.pb", SSD_DIR / "ssd_mobilenet_v2_coco_2018_03_29.pbtxt"
    if not (pb.is_file() and pbtxt.is_file()):
        pytest.skip(f"shared SSD model not present under {SSD_DIR}")
    cfg = DetectConfig(dnn_model=str(pb), dnn_config=str(pbtxt))
    choice = resolve_detector(cfg, tmp_path)
    assert choice.backend == "opencv_dnn" and choice.weights == pb and choice.config == pbtxt
    assert choice.reason == ("detect.backend=auto, no Ultralytics weights ('yolov8n.pt' is not in the weights dir): "
                             "OpenCV DNN model 'frozen_inference_graph.pb' (detect.dnn_model)")
    assert make_detector(cfg, tmp_path).describe()["model_kind"] == "ssd"


def test_auto_never_falls_back_past_a_configured_file_that_is_missing(tmp_path):
    with pytest.raises(ModelUnavailable, match="not a local file"):
        resolve_detector(DetectConfig(dnn_model=str(tmp_path / "missing.onnx")), tmp_path)
    with pytest.raises(ModelUnavailable, match="is not a file"):
        resolve_detector(DetectConfig(weights=str(tmp_path / "runs" / "best.pt")), tmp_path)


# -- resolved once (the crops id), found again where it runs -------------------------------------------


def test_the_detector_an_id_names_is_found_again_never_re_decided(tmp_path):
    from pipeline.retrieval.detect import BUILDERS
    from pipeline.retrieval.detect_choice import RESOLVERS, choice_for

    assert set(RESOLVERS) == {"auto", "ultralytics", "opencv_dnn", "none"}  # detect.backend -> the decision
    assert set(BUILDERS) == {"ultralytics", "opencv_dnn", "none"}  # the decided backend -> its detector
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    none = resolve_detector(DetectConfig(), weights_dir)
    (weights_dir / "yolov8n.pt").write_bytes(b"yolo weights")
    again = choice_for(none.identity, DetectConfig(), weights_dir)  # weights arrived after the id: still `none`
    assert again == none and again.reason == none.reason
    yolo = resolve_detector(DetectConfig(), weights_dir)
    assert yolo.backend == "ultralytics" and choice_for(yolo.identity, DetectConfig(), weights_dir) == yolo
    cfg = DetectConfig(backend="ultralytics", weights="yolov8s.pt", allow_random_init=True)
    random = resolve_detector(cfg, weights_dir)
    assert random.random_init and choice_for(random.identity, cfg, weights_dir) == random
    with pytest.raises(ModelUnavailable, match="detect.backend=none cannot give"):
        choice_for(yolo.identity, DetectConfig(backend="none"), weights_dir)
    (weights_dir / "yolov8n.pt").write_bytes(b"retrained yolo weights")
    with pytest.raises(ModelUnavailable, match=r"names the detector `ultralytics` \(weights 'yolov8n.pt' \(sha256 "):
        choice_for(yolo.identity, DetectConfig(), weights_dir)


def test_a_file_is_hashed_once_per_process_until_it_changes(tmp_path, monkeypatch):
    import pipeline.retrieval.detect_choice as dc

    calls = []
    monkeypatch.setattr(dc, "sha256_file", lambda p: calls.append(p) or "0" * 64)
    weights = tmp_path / "mine.pt"
    weights.write_bytes(b"1")
    cfg = DetectConfig(weights=str(weights))
    for _ in range(3):  # the id, the phase, a shard in the same process
        assert resolve_detector(cfg).identity["weights"]["sha256"] == "0" * 64
    assert len(calls) == 1
    weights.write_bytes(b"22")
    resolve_detector(cfg).identity
    assert len(calls) == 2
