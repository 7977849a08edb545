"""The embedding-study flow end to end on tiny settings: cells + comparison cached as phases, a child run
per cell in MLflow, the best head registered; then the retrieval flow builds and validates its index from
the trained head (by artifact id; `registry:best` resolves to the same id), and `pipeline search` answers
text and image queries on it."""
import json
from pathlib import Path

import pytest

from pipeline.core.config import build_config

pytestmark = pytest.mark.slow

SMALL = ["detect.backend=none", "crops.grid_size=128", "crops.target_size=160"]
STUDY = ["train.image_size=32", "study.losses=[triplet]", "study.embedding_dim=32", "study.batch_size=16",
         "study.stages=[{name: frozen, lr: 0.003, epochs: 1}]", "study.warmup_epochs=0", "study.patience=null"]


def _search(workdir: Path, *args: str) -> list[dict]:
    from typer.testing import CliRunner

    from pipeline.app.cli import app

    res = CliRunner().invoke(app, ["search", "--workdir", str(workdir), "--k", "3", "--json", *args])
    assert res.exit_code == 0, res.output[-2000:]
    return json.loads(res.stdout)["hits"]


def test_study_flow_then_retrieval_from_the_trained_head(prefect_server, demo_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipeline.core.workspace import Workspace
    from pipeline_flows.embedding_study import embedding_study
    from pipeline_flows.retrieval import retrieval

    work = tmp_path / "w"
    cfg = build_config(overrides=SMALL + STUDY)
    study = embedding_study(dataset=str(demo_dataset), format="labelme", workdir=str(work), config=cfg)["phases"]
    cells = sorted(p for p in study if p.startswith("embedding_cell_"))
    assert cells == [f"embedding_cell_tf_efficientnet_lite0_{loss}" for loss in ("baseline", "triplet")]
    comp = Path(study["embedding_study"]["path"])
    table = (comp / "comparison.md").read_text()
    assert all(f"| tf_efficientnet_lite0 | {loss} | frozen" in table for loss in ("baseline", "triplet"))
    best = json.loads((comp / "best.json").read_text())
    assert best["cell"] in study and best["artifact_id"] == study[best["cell"]]["artifact_id"]

    # MLflow: a child run per cell (and the comparison, with its table), the best head registered as 'best'
    client = MlflowClient(Workspace(work).tracking_uri(cfg))
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    parent = runs["embedding-study"].info.run_id
    for name in (*cells, "embedding_study"):
        assert runs[name].data.tags["mlflow.parentRunId"] == parent
    assert "comparison.md" in {a.path for a in client.list_artifacts(runs["embedding_study"].info.run_id)}
    mv = client.get_model_version_by_alias(f"{cfg.tracking.experiment}-embedding-head", "best")
    assert mv.tags["artifact_id"] == best["artifact_id"]

    trained = SMALL + ["embed.backend=trained", f"embed.head={best['artifact_id']}"]
    out = retrieval(dataset=str(demo_dataset), format="labelme", workdir=str(work), config=build_config(overrides=trained))
    ph = out["phases"]
    assert ph["crops"]["cache_hit"]  # the study's crops
    emb = Path(ph["embeddings"]["path"])
    embedder = json.loads((emb / "embedder.json").read_text())
    assert embedder["backend"] == "trained"
    lineage = json.loads((emb / "lineage.json").read_text())
    assert best["artifact_id"] in json.dumps(lineage)  # the index's embeddings name the head that made them
    assert ph["index"]["metrics"]["self_hit_rate"] == 1.0
    val = ph["validation"]["metrics"]
    assert val["filter_checks_passed"] == val["filter_checks_total"]
    assert 0.0 <= val["coverage_damaged"] <= 1.0 and 0.0 <= val["map_at_r_damage_type"] <= 1.0

    # `registry:best` resolves to the same head id (what the embeddings phase's id and lineage then name)
    from pipeline.retrieval.phases import _embedding_head

    alias = build_config(overrides=SMALL + ["embed.backend=trained", "embed.head=registry:best"])
    assert _embedding_head(alias, {"workdir": str(work)}) == {"head": best["artifact_id"]}

    img = next(demo_dataset.glob("*_ko_*_imageDANO_original.jpg"))
    for args in (["--text", "a dent on the door"], ["--image", str(img), "--damaged", "yes"]):
        hits = _search(work, "--index", ph["index"]["artifact_id"], *args)
        assert [h["rank"] for h in hits] == [1, 2, 3]
        assert all(h["has_damage"] for h in hits) or "--damaged" not in args
