"""The drift report: statistics on small arrays; sections on real audits of the demo data and its shifted
copies (one class removed, photos darkened, new kinds of bad files); the phase against the work dir's
previous run (skipped with its reason on the first run), and the flow run tagged with a drifted section."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitor_fixtures import darkened_copy, photo_embedding_dirs, record_run, register_champion, runtime
from pipeline.core.config import build_config
from training_fixtures import colour_images, tiny_model_dir

DATA = ("dataset", "audit", "split")


# -- statistics ------------------------------------------------------------------------------------
def test_tests_for_small_samples_and_distances_for_large_ones():
    from pipeline.monitor import stats

    same = stats.categorical("data", "class", ["a"] * 30 + ["b"] * 30, ["a"] * 30 + ["b"] * 30, 0.05, 1000, 0.1)
    assert not same.drift and same.p_value == pytest.approx(1.0) and same.test == "chi-squared"
    gone = stats.categorical("data", "class", ["a"] * 30 + ["b"] * 30, ["a"] * 40, 0.05, 1000, 0.1)
    assert gone.drift and "b 50.0% -> 0.0% (absent now)" in gone.detail
    big = stats.categorical("data", "class", ["a"] * 1500 + ["b"] * 1500, ["a"] * 1560 + ["b"] * 1440, 0.05, 1000, 0.1)
    assert big.test == "Jensen-Shannon distance" and not big.drift and big.statistic < 0.05  # tiny, if significant
    rng = np.random.default_rng(0)
    dark = stats.numeric("data", "brightness", rng.normal(120, 20, 80), rng.normal(60, 20, 80), 0.05, 1000, 0.1)
    assert dark.drift and dark.test == "Kolmogorov-Smirnov" and "-> 6" in dark.detail
    share = stats.proportion("data", "quarantined", 2, 100, 14, 100, 0.05, 1000, 0.05)
    assert share.drift and share.detail == "2.0% (2/100) -> 14.0% (14/100)"
    few = stats.proportion("data", "quarantined", 1, 20, 2, 20, 0.05, 1000, 0.05)
    assert few.test == "Fisher's exact" and not few.drift
    new = stats.new_categories("data", "reasons", ["decode_error"], ["decode_error", "bad_filename", "bad_filename"])
    assert new.drift and new.detail == "new: bad_filename (2)"
    sets = stats.category_set("data", "classes", ["dent", "crack"], ["dent", "scratch"])
    assert sets.drift and sets.detail == "gone: crack (1 before); new: scratch (1)"


def test_bonferroni_within_a_section():
    from pipeline.monitor.drift import bonferroni
    from pipeline.monitor.stats import Check

    checks = [Check("data", f"c{i}", "t", 1.0, "p < 0.05", 0.05, p, 10, 10, p < 0.05) for i, p in enumerate((0.03, 0.001))]
    out = bonferroni(checks, 0.05)
    assert [c.drift for c in out] == [False, True] and out[0].rule == "p < 0.025 (0.05/2)"


def test_domain_classifier_and_mmd_on_halves_and_on_shifted_sets():
    from pipeline.monitor.stats import auc_p_value, domain_classifier_auc, mmd_permutation_test

    rng = np.random.default_rng(1)
    x = rng.normal(size=(240, 32))
    a, b = x[:120], x[120:]
    ids_a, ids_b = [f"a{i}" for i in range(120)], [f"b{i}" for i in range(120)]
    halves = domain_classifier_auc(a, b, ids_a, ids_b, folds=4)
    assert abs(halves - 0.5) < 0.1 and auc_p_value(halves, 120, 120) > 0.01
    shifted = domain_classifier_auc(a, b + 0.5, ids_a, ids_b, folds=4)
    assert shifted > 0.9 and auc_p_value(shifted, 120, 120) < 1e-6
    assert domain_classifier_auc(a, a, ids_a, ids_a, folds=4) == pytest.approx(0.5)  # one photo on both sides
    assert mmd_permutation_test(a, b, 100)[1] > 0.05
    assert mmd_permutation_test(a, b + 0.5, 100)[1] < 0.02


def test_twins_stay_in_one_fold():
    """The same photos darkened: each photo's twin in the training folds would vote for the wrong side
    (AUC under 0.5); grouped by content hash or pHash, the classifier learns the shift itself."""
    from pipeline.monitor.drift import photo_groups
    from pipeline.monitor.stats import domain_classifier_auc

    rng = np.random.default_rng(2)
    content = rng.normal(size=(80, 32)) * 3
    a, b = content + rng.normal(size=content.shape) * 0.1, content + 0.3 + rng.normal(size=content.shape) * 0.1
    ids_a, ids_b = [f"p{i}" for i in range(80)], [f"q{i}" for i in range(80)]
    split = domain_classifier_auc(a, b, ids_a, ids_b, folds=4)
    hashes = [int(h) for h in rng.integers(0, 2**62, size=80)]  # far apart: random 64-bit hashes
    phash = {**{f"p{i}": f"{h:016x}" for i, h in enumerate(hashes)},
             **{f"q{i}": f"{h ^ (1 << 40):016x}" for i, h in enumerate(hashes)}}
    groups_a, groups_b = photo_groups(ids_a, ids_b, phash, threshold=4)  # one bit apart: twins
    assert groups_a == groups_b == ids_a
    kept = domain_classifier_auc(a, b, groups_a, groups_b, folds=4)
    assert split < 0.45 and kept > 0.6  # the same data, the same classifier: only the folds differ


# -- sections on real audits -------------------------------------------------------------------------
def _without_class(src: Path, dst: Path, workdir: Path, rec) -> tuple[Path, str]:
    """A copy of the dataset without the photos (and label files) of its largest damage class."""
    split = pd.read_parquet(workdir / "artifacts" / "split" / rec.phases["split"]["artifact_id"] / "split.parquet")
    label = split.loc[split["has_damage"], "label"].value_counts().index[0]
    shutil.copytree(src, dst)
    for row in split[split["label"] == label].itertuples():
        for rel in [row.path, row.annotation_path, *(list(row.extra_paths) if row.extra_paths is not None else [])]:
            if rel:
                (dst / rel).unlink(missing_ok=True)
    return dst, label


def _with_bad_files(src: Path, dst: Path) -> Path:
    """A copy with bad inputs of kinds the demo's own bad examples do not have."""
    from PIL import Image

    shutil.copytree(src, dst)
    Image.new("RGB", (200, 150), (90, 90, 90)).save(dst / "IMG_0001.jpg")  # a photo outside the naming scheme
    Image.new("RGB", (200, 150), (20, 90, 90)).save(dst / "IMG_0002.jpg")
    (dst / "notes.txt").write_text("not a photo")
    return dst


@pytest.fixture(scope="module")
def shifted(demo_dataset, tmp_path_factory):
    """Data-prep runs of the demo data, of the same data again, and of three shifted copies; a tiny champion
    (whole images) and per-photo embeddings from its features."""
    root = tmp_path_factory.mktemp("drift")
    work = root / "work"
    cfg = build_config({}, ["drift.mmd_permutations=100", "drift.cv_folds=4", "train.source=images"])
    runs = {"base": record_run(demo_dataset, work, cfg, DATA)}
    runs["same"] = record_run(demo_dataset, work, cfg, DATA)
    no_class, gone = _without_class(demo_dataset, root / "no_class", work, runs["base"])
    runs["no_class"] = record_run(no_class, work, cfg, DATA)
    runs["dark"] = record_run(darkened_copy(demo_dataset, root / "dark"), work, cfg, DATA)
    runs["bad"] = record_run(_with_bad_files(demo_dataset, root / "bad"), work, cfg, DATA)
    model = tiny_model_dir(root / "model", colour_images(root / "colours", 8), threshold=0.5, scale=20.0)
    return {"root": root, "work": work, "cfg": cfg, "runs": runs, "gone": gone, "model": model}


def _side(shifted, name: str, label: str, scorer):
    from pipeline.monitor.drift_data import RunSide

    rec = shifted["runs"][name]
    art = shifted["work"] / "artifacts"
    dirs = {p: art / p / rec.phases[p]["artifact_id"] for p in ("audit", "split")}
    photos = pd.read_parquet(dirs["split"] / "split.parquet")
    root = Path(rec.run["dataset_root"])
    dirs.update(photo_embedding_dirs(shifted["root"] / "emb" / name, photos, root, scorer))
    return RunSide(label, name, dirs, root)


def _compare(shifted, current: str, out: Path | None = None):
    from pipeline.monitor.drift import compare
    from pipeline.monitor.scoring import Scorer

    scorer = Scorer(shifted["model"])
    cfg = shifted["cfg"]
    return compare(_side(shifted, "base", "reference", scorer), _side(shifted, current, "current", scorer),
                   cfg.drift, scorer, cfg.train, "tiny", out)


def _drifted(result) -> dict[str, list[str]]:
    return {s: v["drifted"] for s, v in result["sections"].items() if v["verdict"] == "drift"}


@pytest.mark.slow
def test_same_data_twice_is_no_drift_in_any_section(shifted, tmp_path):
    result = _compare(shifted, "same", tmp_path)
    assert {s: v["verdict"] for s, v in result["sections"].items()} == {
        "data": "no drift", "embeddings": "no drift", "predictions": "no drift"}
    assert not any(c["skipped"] for c in result["checks"])
    split = pd.read_parquet(shifted["work"] / "artifacts" / "split" / shifted["runs"]["base"].phases["split"]["artifact_id"]
                            / "split.parquet")
    held_out = int(split["split"].isin(["val", "test"]).sum())  # the model's answers: held-out photos only
    assert {c["n_ref"] for c in result["checks"] if c["section"] == "predictions"} == {held_out}
    files = {p.name for p in tmp_path.iterdir()}
    assert {"drift.json", "report.md", "drift.html", "drift_data.png", "drift_embeddings.png",
            "drift_predictions.png"} <= files
    report = (tmp_path / "report.md").read_text()
    assert "no drift in any section" in report and report.index("| section | verdict |") < report.index("![")
    assert json.loads((tmp_path / "drift.json").read_text())["sections"]["data"]["verdict"] == "no drift"


@pytest.mark.slow
def test_each_shift_is_named_in_its_section(shifted):
    gone = _compare(shifted, "no_class")
    assert "classes gone or new" in _drifted(gone)["data"]
    check = next(c for c in gone["checks"] if c["check"] == "classes gone or new")
    assert check["detail"].startswith(f"gone: {shifted['gone']} (")

    dark = _compare(shifted, "dark")
    d = _drifted(dark)
    assert "brightness" in d["data"] and "image width" not in d["data"] and "class balance" not in d["data"]
    assert "domain classifier" in d["embeddings"] and "predictions" in d
    auc = next(c for c in dark["checks"] if c["check"] == "domain classifier")
    assert auc["statistic"] > 0.8

    bad = _compare(shifted, "bad")
    assert set(_drifted(bad)) == {"data"}  # the accepted photos are the same: embeddings and answers too
    check = next(c for c in bad["checks"] if c["check"] == "new quarantine reasons")
    assert check["drift"] and "bad_filename (2)" in check["detail"] and "unsupported_file (1)" in check["detail"]


# -- the phase and the flow ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phase_work(shifted, tmp_path_factory):
    """The drift phase as the factory runs it, without Prefect: on the first run (nothing to compare with),
    then, with a champion registered, on a run of the same photos plus bad files against the previous run."""
    from pipeline.core.runner import PhaseContext, execute_phase
    from pipeline.core.store import ArtifactRef
    from pipeline.core.workspace import Workspace

    work = tmp_path_factory.mktemp("drift-phase") / "work"
    cfg = build_config({}, ["drift.mmd_permutations=100", "crops.grid_size=128", "detect.backend=none",
                            "embed.image_model=test_efficientnet", "embed.allow_random_init=true"])
    chain = ("dataset", "audit", "split", "crops", "contexts", "embeddings")
    ctx = PhaseContext(store=Workspace(work).store(cfg), progress=False)
    base = record_run(Path(shifted["runs"]["base"].run["dataset_root"]), work, cfg, chain)
    base.status = "RUNNING"  # as during the first flow run: nothing earlier to compare with
    base.save(work)
    inputs = {p: ArtifactRef.model_validate(base.phases[p]) for p in ("audit", "split", "crops", "embeddings")}
    first = execute_phase("drift", cfg, inputs, ctx, runtime=runtime(work, base.run["dataset_root"]))
    base.status = "COMPLETED"
    base.save(work)
    register_champion(work, shifted["model"], cfg)
    bad_root = Path(shifted["runs"]["bad"].run["dataset_root"])  # same photos: crops and vectors are cached
    bad = record_run(bad_root, work, cfg, chain)
    bad.status = "RUNNING"
    bad.save(work)
    inputs = {p: ArtifactRef.model_validate(bad.phases[p]) for p in ("audit", "split", "crops", "embeddings")}
    result = execute_phase("drift", cfg, inputs, ctx, runtime=runtime(work, str(bad_root)))
    bad.phases["drift"] = {**ArtifactRef.model_validate(result.model_dump()).model_dump(), "metrics": result.metrics,
                           "info": result.info}
    bad.status = "COMPLETED"
    bad.save(work)
    return {"work": work, "base": base, "bad": bad, "first": first, "result": result}


@pytest.mark.slow
def test_drift_phase_first_run_then_against_the_previous_run(phase_work):
    from pipeline.core.runs import RunRecord

    first, result, base, bad = (phase_work[k] for k in ("first", "result", "base", "bad"))
    assert first.info["drift"].startswith("skipped: first run: no earlier completed run")
    assert "Drift not measured: first run" in (Path(first.path) / "report.md").read_text()
    assert result.info["reference_run"] == base.flow_run_id and result.info["drifted"] == "data"
    assert result.info["prefect_tags"] == "drift:data" and result.metrics["n_drifted_sections"] == 1
    doc = json.loads((Path(result.path) / "drift.json").read_text())
    assert doc["current"]["run"] == bad.flow_run_id and doc["model"].endswith("version 1 (champion)")
    assert {s: v["verdict"] for s, v in doc["sections"].items()} == {
        "data": "drift", "embeddings": "no drift", "predictions": "no drift"}
    assert RunRecord.load(phase_work["work"], base.flow_run_id).status == "COMPLETED"

    # the app's Runs page shows the latest drift table
    from streamlit.testing.v1 import AppTest

    main = sys.modules["__main__"]
    try:
        page = AppTest.from_function(_runs_page, args=(str(phase_work["work"]),))
        page.run(timeout=120)
    finally:  # AppTest leaves its script as __main__: spawned processes (the audit's decoders) would run it
        sys.modules["__main__"] = main
    assert not page.exception
    assert any("DRIFT in data (new quarantine reasons)" in e.value for e in page.error)
    table = page.dataframe[1].value  # run list first, then the drift table
    assert "new quarantine reasons (drift)" in set(table["check"])


def _runs_page(workdir: str) -> None:
    from pipeline.app.webapp.runs_page import render_runs

    render_runs(workdir)


@pytest.mark.slow
def test_a_drifted_section_tags_the_flow_run(prefect_server, phase_work):
    """In a flow (here `run-phase drift` from the recorded run), a drifted section becomes a Prefect run tag."""
    from prefect.client.orchestration import get_client

    from pipeline_flows.run_phase import run_phase

    work, bad = phase_work["work"], phase_work["bad"]
    bad.config["drift"]["reference"] = phase_work["base"].flow_run_id  # the recorded run is the newest now
    bad.save(work)
    summary = run_phase(phase="drift", from_run=bad.flow_run_id, workdir=str(work))
    assert summary["phases"]["drift"]["info"]["drifted"] == "data"
    with get_client(sync_client=True) as client:
        assert "drift:data" in client.read_flow_run(summary["flow_run_id"]).tags


def test_shift_data_darkens_resizes_with_geometry_drops_a_class_and_adds_bad_files(demo_dataset, tmp_path):
    from PIL import Image

    from pipeline.core.config import DataConfig
    from pipeline.data.adapters import scan
    from pipeline.monitor.shift import shift_dataset

    before = {c.path: c for c in scan(demo_dataset, "labelme", DataConfig()).candidates}
    gone = next(c.label for c in before.values() if c.has_damage)
    out = tmp_path / "shifted"
    summary = shift_dataset(demo_dataset, out, "labelme", DataConfig(), darken=0.5, resize=0.5, drop_labels=[gone],
                            bad_files=3)
    assert summary["bad_files_added"] == 3 and summary["photos_dropped"] == sum(c.label == gone for c in before.values())
    after = scan(out, "labelme", DataConfig())
    assert gone not in {c.label for c in after.candidates}
    # the truncated JPEG is named the users' way: the adapter lists it, the audit rejects it as decode_error
    assert len(after.candidates) == len(before) - summary["photos_dropped"] + 1
    c = next(c for c in after.candidates if c.has_damage)
    old, new = Image.open(demo_dataset / c.path), Image.open(out / c.path)
    assert new.size == (round(old.width / 2), round(old.height / 2))
    assert np.asarray(new.convert("L"), float).mean() < 0.6 * np.asarray(old.convert("L"), float).mean()
    doc_old = json.loads((demo_dataset / c.annotation_path).read_text())
    doc_new = json.loads((out / c.annotation_path).read_text())
    assert doc_new["shapes"][0]["points"][0] == pytest.approx([v / 2 for v in doc_old["shapes"][0]["points"][0]])
    assert {q.reason for q in after.quarantine} >= {"bad_filename", "unsupported_file"}
    with pytest.raises(FileExistsError):
        shift_dataset(demo_dataset, out, "labelme", DataConfig(), darken=0.5)

    coco = tmp_path / "coco"
    coco.mkdir()
    Image.new("RGB", (200, 100), (120, 120, 120)).save(coco / "a.jpg")
    (coco / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[10, 10, 50, 10, 50, 40]],
                         "bbox": [10, 10, 40, 30], "area": 600}],
        "categories": [{"id": 1, "name": "dent", "supercategory": "damage"}]}))
    shift_dataset(coco, tmp_path / "coco-half", "coco", DataConfig(), resize=0.5)
    doc = json.loads((tmp_path / "coco-half" / "annotations.json").read_text())
    assert doc["images"][0]["width"] == 100 and doc["annotations"][0]["segmentation"] == [[5, 5, 25, 5, 25, 20]]
    assert doc["annotations"][0]["area"] == 150 and Image.open(tmp_path / "coco-half" / "a.jpg").size == (100, 50)


def test_first_run_drift_id_does_not_name_the_work_dir_or_count_records(tmp_path):
    """The same first run in two work dirs, one holding a killed run's record: one drift artifact id
    (a resumed run must rebuild the same bytes as an uninterrupted one)."""
    from pipeline.core.config import build_config
    from pipeline.core.runs import RunRecord
    from pipeline.monitor.phases import _drift_source

    cfg = build_config()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    RunRecord(flow_run_id="killed-run", flow="factory", config={}).save(b)  # RUNNING: its process was killed
    assert _drift_source(cfg, {"workdir": str(a)}) == _drift_source(cfg, {"workdir": str(b)})
