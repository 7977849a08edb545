"""The review queue: the champion scores an inbox of photos without labels and queues the ones it is least
sure of, not-conclusive first, no two alike, never twice, as a LabelMe folder that reads back in."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monitor_fixtures import record_run, register_champion
from pipeline.core.config import DataConfig, build_config
from training_fixtures import colour_images, tiny_model_dir

SMALL = ["audit.min_side=16", "review.n=8", "review.min_distance=0.02"]


def _near_copy(src: Path, dst: Path) -> Path:
    """The photo with one pixel changed: other bytes, same perceptual hash."""
    arr = np.asarray(Image.open(src).convert("RGB")).copy()
    arr[0, 0] = 255 - arr[0, 0]
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(dst)
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A labelled run (class folders of colour photos), a tiny champion, and an inbox: new photos at two
    depths, an exact copy and a near copy of labelled photos, near copies of one inbox photo, a broken file."""
    root = tmp_path_factory.mktemp("review")
    train = colour_images(root / "tr", 10, seed=0, prefix="tr")
    dataset = root / "dataset"
    for r in train:
        dst = dataset / r["label"] / Path(r["path"]).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(r["path"], dst)
    workdir = root / "work"
    cfg = build_config({}, SMALL)
    rec = record_run(dataset, workdir, cfg, phases=("dataset", "audit", "split"), fmt="folders")
    model = tiny_model_dir(root / "model", train, threshold=0.5, scale=20.0)
    version = register_champion(workdir, model)
    inbox = root / "inbox"
    colour_images(inbox / "day1", 8, seed=5, prefix="in")
    colour_images(inbox / "day2" / "cam", 4, seed=6, prefix="deep")
    first = sorted((inbox / "day1").glob("*.png"))[0]
    for i in range(3):
        _near_copy(first, inbox / "dups" / f"copy{i}.png")
    shutil.copy(train[0]["path"], inbox / "labelled_copy.png")
    _near_copy(Path(train[1]["path"]), inbox / "labelled_near.png")
    (inbox / "broken.jpg").write_bytes(b"this is no image")
    return {"root": root, "workdir": workdir, "cfg": cfg, "record": rec, "model": model, "version": version,
            "inbox": inbox, "train": train}


def _review(world, out: Path, queued=frozenset(), dataset_root=None, **over):
    import pandas as pd

    from pipeline.monitor.review_run import ReviewInputs, inbox_rows, run_review
    from pipeline.monitor.scoring import ModelRef, Scorer

    cfg = build_config({}, SMALL + [f"review.{k}={v}" for k, v in over.items()])
    split = Path(world["workdir"]) / "artifacts" / "split" / world["record"].phases["split"]["artifact_id"]
    inp = ReviewInputs(world["inbox"], inbox_rows(world["inbox"], cfg.data.image_extensions),
                       pd.read_parquet(split / "split.parquet"), dataset_root, set(queued), "run-x", "f" * 64)
    figures = run_review(inp, cfg, ModelRef("dir", world["model"]), Scorer(world["model"]), out)
    with (out / "labelme" / "queue.csv").open(newline="") as fh:
        return figures, list(csv.DictReader(fh))


def _left(out: Path) -> dict[str, str]:
    with (out / "left_out.csv").open(newline="") as fh:
        return {r["source_path"]: r["reason"] for r in csv.DictReader(fh)}


@pytest.mark.slow
def test_selection_is_deterministic_prefers_not_conclusive_and_skips_duplicates(world, tmp_path):
    from pipeline.monitor.scoring import Scorer

    figures, queue = _review(world, tmp_path / "a")
    _, again = _review(world, tmp_path / "b")
    assert [r["content_hash"] for r in queue] == [r["content_hash"] for r in again]  # same seed, same queue
    assert figures["n_queued"] == len(queue) == 8 and figures["n_inbox"] == 42
    assert 0 < figures["n_not_conclusive"] < figures["n_scored"]  # the fixture has both kinds
    flags = [r["not_conclusive"] == "True" for r in queue]
    assert flags == sorted(flags, reverse=True)  # not-conclusive photos first
    assert sum(flags) == min(8, figures["n_not_conclusive"])
    nc = [float(r["uncertainty"]) for r in queue if r["not_conclusive"] == "True"]
    assert nc == sorted(nc, reverse=True)  # then by uncertainty
    left = _left(tmp_path / "a")
    assert left["labelled_copy.png"].startswith("already labelled")
    assert left["labelled_near.png"].startswith("near duplicate of labelled")
    assert left["broken.jpg"].startswith("unreadable")
    # no two queued photos are near copies: at most one of the planted copies, features apart
    sources = [r["source_path"] for r in queue]
    assert sum(s.startswith("dups/") or s == "day1/in_blue_000.png" for s in sources) <= 1
    scored = Scorer(world["model"]).score_images([world["inbox"] / s for s in sources])
    dist = 1.0 - scored.features @ scored.features.T
    assert dist[np.triu_indices(len(sources), 1)].min() >= 0.02
    # another uncertainty measure changes the order, not the rules
    _, margin = _review(world, tmp_path / "m", uncertainty="margin")
    assert [r["uncertainty_kind"] for r in margin] == ["margin"] * len(margin)


@pytest.mark.slow
def test_label_check_queues_labelled_photos_the_champion_contradicts(world, tmp_path):
    figures, queue = _review(world, tmp_path / "lc", dataset_root=Path(world["record"].run["dataset_root"]),
                             label_check="true", n=40, min_distance=0)
    checks = [r for r in queue if r["kind"] == "label_check"]
    assert checks and figures["n_label_checks_queued"] == len(checks)
    for r in checks:
        assert r["current_label"] in ("blue", "green", "red") and r["why_selected"].startswith("label check: labelled")
        assert float(r["uncertainty"]) == pytest.approx(1 - float(dict(
            kv.split(":") for kv in r["top_k"].split("; "))[r["current_label"]]), abs=1e-3)


@pytest.mark.slow
def test_review_phase_publishes_a_labelme_folder_skips_queued_photos_and_reads_back(world, tmp_path):
    from pipeline.core.runner import PhaseContext, execute_phase
    from pipeline.core.store import ArtifactRef
    from pipeline.core.workspace import Workspace
    from pipeline.data.adapters import scan
    from monitor_fixtures import runtime

    workdir, rec = world["workdir"], world["record"]
    ctx = PhaseContext(store=Workspace(workdir).store(world["cfg"]), progress=False)
    split = {"split": ArtifactRef.model_validate(rec.phases["split"])}
    rt = runtime(workdir, rec.run["dataset_root"])
    skipped = execute_phase("review", world["cfg"], split, ctx, runtime=rt)
    assert skipped.info["review"] == "skipped: no inbox: data.inbox is not set"
    assert "Review skipped: no inbox" in (Path(skipped.path) / "report.md").read_text()

    cfg = build_config({}, SMALL + [f"data.inbox={world['inbox']}", f"review.out_dir={tmp_path / 'queue'}"])
    first = execute_phase("review", cfg, split, ctx, runtime=rt)
    folder = Path(first.info["folder"])
    assert folder.parent == tmp_path / "queue" and first.metrics["n_queued"] == 8
    second = execute_phase("review", cfg, split, ctx, runtime=rt)
    assert second.artifact_id != first.artifact_id  # the ledger changed: the next batch
    q1 = list(csv.DictReader((folder / "queue.csv").open()))
    q2 = list(csv.DictReader((Path(second.info["folder"]) / "queue.csv").open()))
    assert q2 and not {r["content_hash"] for r in q1} & {r["content_hash"] for r in q2}
    assert second.metrics["n_queued_before"] == 8
    assert {r["model_version"] for r in q1} == {world["version"]}

    # the folder LabelMe opens: one JSON beside each photo, flags of every class, the predicted one set
    classes = (folder / "flags.txt").read_text().split()
    assert classes == ["blue", "green", "red"]
    for r in q1:
        doc = json.loads((folder / r["file"]).with_suffix(".json").read_text())
        assert doc["imagePath"] == r["file"] and doc["imageData"] is None
        assert (doc["imageWidth"], doc["imageHeight"]) == Image.open(folder / r["file"]).size
        assert set(doc["flags"]) == set(classes) and [k for k, v in doc["flags"].items() if v] == [r["predicted"]]
        assert doc["shapes"] == [] and r["top_k"].count(":") == 3 and r["why_selected"]

    # the person: damaged ones get a dent polygon, the others are marked clean; both renamed the users' way
    expected = {}
    for i, r in enumerate(q1[:6]):
        src = folder / r["file"]
        doc = json.loads(src.with_suffix(".json").read_text())
        state = "ko" if i % 2 == 0 else "ok"
        stem = f"zona1_{state}_2_3_20250102T0304{i:02d}_zona_{i + 1}"
        image = f"{stem}_imageDANO_original.png"
        doc["imagePath"] = image
        if state == "ko":
            w, h = doc["imageWidth"], doc["imageHeight"]
            doc["shapes"] = [{"label": "2", "points": [[2, 2], [w - 3, 2], [w - 3, h - 3], [2, h - 3]],
                              "shape_type": "polygon", "group_id": None, "flags": {}}]
        src.rename(folder / image)
        src.with_suffix(".json").unlink()
        (folder / f"{stem}_labelDANO_modificado.json").write_text(json.dumps(doc))
        expected[image] = "dent" if state == "ko" else "no_damage"
    result = scan(folder, "labelme", DataConfig())
    got = {c.path: c.label for c in result.candidates}
    assert got == expected  # every edited photo reads back with its label
    reasons = {q.path: q.reason for q in result.quarantine}
    assert reasons["queue.csv"] == reasons["flags.txt"] == "unsupported_file"
    assert sum(r == "bad_filename" for r in reasons.values()) == len(q1) - 6  # not labelled yet: kept aside


@pytest.mark.slow
def test_crops_model_scores_windows_and_writes_them_as_hints(world, tmp_path):
    """A model with the crops' `clean` class sees a photo through grid windows; the JSON carries them."""
    from pipeline.data.adapters import scan
    from pipeline.monitor.review_run import ReviewInputs, inbox_rows, run_review
    from pipeline.monitor.scoring import ModelRef, Scorer

    train = [{**r, "label": "clean" if r["label"] == "blue" else r["label"]} for r in world["train"]]
    model = tiny_model_dir(tmp_path / "crops-model", train, classes=("clean", "green", "red"), threshold=0.5)
    scorer = Scorer(model)
    assert scorer.is_crops_model()
    cfg = build_config({}, SMALL + ["review.n=3", "detect.backend=none", "crops.grid_size=32"])
    inbox = tmp_path / "inbox"  # 80 px photos: 3 x 3 windows of 32 px (stride 24)
    inbox.mkdir()
    for p in sorted((world["inbox"] / "day1").glob("*.png")):
        Image.open(p).resize((80, 80)).save(inbox / p.name)
    inp = ReviewInputs(inbox, inbox_rows(inbox, cfg.data.image_extensions), None, None, set(), "r", "e" * 64)
    figures = run_review(inp, cfg, ModelRef("dir", model), scorer, tmp_path / "out", None)
    assert figures["scoring"] == "windows" and figures["n_queued"] == 3
    folder = tmp_path / "out" / "labelme"
    doc = json.loads(next(folder.glob("001_*.json")).read_text())
    boxes = [s for s in doc["shapes"] if s["shape_type"] == "rectangle"]
    assert len(boxes) == 9 and all(s["label"].startswith("model:") for s in boxes)  # 3 x 3 windows
    assert sum("deciding" in s["description"] for s in boxes) == 1
    # left in by the person, the hints are shape-level rows; the photo itself reads back
    src = next(folder.glob("001_*.png"))
    src.rename(folder / "zona1_ok_2_3_20250101T000000_zona_3_imageDANO_original.png")
    next(folder.glob("001_*.json")).rename(folder / "zona1_ok_2_3_20250101T000000_zona_3_labelDANO_modificado.json")
    result = scan(folder, "labelme", DataConfig())
    assert [c.label for c in result.candidates] == ["no_damage"]
    assert result.candidates[0].issues and {i.reason for i in result.candidates[0].issues} == {"unknown_label"}


def test_nightly_deployment_passes_the_inbox_and_says_when_review_is_skipped(tmp_path):
    """`pipeline deploy --inbox DIR` fills the nightly's config.data.inbox; without it, review says why it skipped."""
    import yaml

    from pipeline.app.packaged import packaged_file
    from pipeline.core.config import PipelineConfig
    from pipeline.monitor.phases import _review_source

    nightly = next(d for d in yaml.safe_load(packaged_file("prefect.yaml").read_text())["deployments"]
                   if d["name"] == "nightly")
    assert nightly["parameters"]["config"] == {"data": {"inbox": "{{ $PIPELINE_INBOX }}"}}
    assert {"dataset", "format", "workdir"} <= set(nightly["parameters"])
    for value, why in (("", "no inbox: data.inbox is not set"),
                       (str(tmp_path / "nowhere"), f"the inbox folder {tmp_path / 'nowhere'} does not exist")):
        cfg = PipelineConfig.model_validate({"data": {"inbox": value}})
        assert _review_source(cfg, {"workdir": str(tmp_path)}) == {"review_source": {"skip": why}}
    (tmp_path / "empty").mkdir()
    cfg = PipelineConfig.model_validate({"data": {"inbox": str(tmp_path / "empty")}})
    assert "holds no images" in _review_source(cfg, {"workdir": str(tmp_path)})["review_source"]["skip"]
