"""The per-item caches (crops, embeddings) on S3 (moto's server on 127.0.0.1, through s3fs), shared by
shard workers on several machines.

Crops and embeddings run sharded (a thread pool, as in test_scale_out) with `item_cache=s3://factory/items`
and the artifacts on `s3://factory/artifacts`: the artifacts are the bytes of the same chain with a local
item cache, and the cache objects are on S3. A second "machine" (its own s3fs client, mirror and work
dir) computes nothing and writes the same bytes. A crops entry is never visible to another client before
its `done` marker, which is uploaded after every other file; what the remote holds is listed once and
downloaded in batches, never asked item by item.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.core.config import DemoConfig, build_config

pytest.importorskip("moto.server", reason="moto[server] is not installed (test extra)")  # the `s3` fixture: conftest
pytest.importorskip("s3fs", reason="s3fs is not installed (test extra)")

SMALL = ["detect.backend=none", "crops.grid_size=128", "crops.target_size=160", "embed.backend=hybrid",
         "embed.batch_size=8"]  # as test_scale_out
CHAIN = (("audit", ["dataset"]), ("split", ["audit"]), ("crops", ["split"]), ("contexts", ["crops"]),
         ("embeddings", ["crops", "contexts"]))
SHARDED = ("crops", "embeddings")
ITEMS = "s3://factory/items"


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    from pipeline.demo.generator import generate_demo_data

    out = tmp_path_factory.mktemp("s3items") / "data"
    # 10 photos: below DemoConfig's minimum of 20, so built without validation (the generator copes)
    cfg = DemoConfig.model_construct(n_images=10, seed=3, width=224, height=160, bad_examples=False)
    generate_demo_data(out, cfg, progress=False)
    return out


def _fresh_fs():
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # a separate client, as on another machine
    return s3fs.S3FileSystem()


def _chain(data: Path, work: Path, artifacts: str, item_cache: str, sharded: bool) -> dict:
    """audit -> ... -> embeddings through the library; crops and embeddings in two shards each on a thread pool
    first when `sharded`. Returns {phase: result} and the shards' manifests under "manifests"."""
    from pipeline.core.runner import PhaseContext, execute_phase, snapshot_dataset
    from pipeline.core.sharding import execute_sharded, plan_shards
    from pipeline.core.store import ArtifactStore

    cfg = build_config(overrides=SMALL)
    ctx = PhaseContext(store=ArtifactStore(artifacts, cache_dir=work / "artifact-cache"), progress=False)
    rt = {"dataset_root": str(data), "workdir": str(work), "item_cache": item_cache, "device": "cpu",
          "item_mirror": str(work / ".cache" / "items-mirror")}
    opts = {"format": "labelme"}
    r: dict = {"dataset": snapshot_dataset(data, ctx), "manifests": {}}
    with ThreadPoolExecutor(2) as pool:
        for name, ins in CHAIN:
            inputs = {k: r[k] for k in ins}
            if sharded and name in SHARDED:
                plan = plan_shards(name, cfg, inputs, ctx.store, opts, rt)
                size = max(1, -(-len(plan.items) // 2)) if plan else None
                r[name], r["manifests"][name] = execute_sharded(name, cfg, inputs, ctx, map_fn=pool.map,
                                                                shard_items=size, options=opts, runtime=rt)
            else:
                r[name] = execute_phase(name, cfg, inputs, ctx, options=opts, runtime=rt)
    return r


def _ids(r: dict) -> dict[str, tuple[str, str]]:
    return {k: (r[k].artifact_id, r[k].content_hash) for k in ("dataset", *(name for name, _ in CHAIN))}


@pytest.mark.slow
def test_sharded_phases_on_an_s3_item_cache_match_a_local_cache_and_a_second_machine_computes_nothing(
        s3, tiny_dataset, tmp_path):
    local = _chain(tiny_dataset, tmp_path / "local", str(tmp_path / "local" / "artifacts"),
                   str(tmp_path / "local" / "items"), sharded=False)
    assert local["crops"].metrics["n_items_processed"] > 0 and local["embeddings"].metrics["n_embedded"] > 0

    _fresh_fs()
    one = _chain(tiny_dataset, tmp_path / "one", "s3://factory/artifacts", ITEMS, sharded=True)
    assert _ids(one) == _ids(local)  # same artifact ids, same content hashes
    assert one["crops"].uri.startswith("s3://factory/artifacts/crops/")
    assert [len(one["manifests"][k]) for k in SHARDED] == [2, 2]
    # the merge found every item in the cache the shards filled
    assert one["crops"].metrics["n_items_processed"] == 0 and one["embeddings"].metrics["n_embedded"] == 0

    fs = _fresh_fs()
    crops = fs.find(f"{ITEMS}/crops")
    entries = {p.rsplit("/", 2)[-2] for p in crops}
    assert len(entries) == local["crops"].metrics["n_items_processed"]
    assert {p.rsplit("/", 2)[-2] for p in crops if p.endswith("/done")} == entries  # every entry complete
    assert sum(p.endswith(".jpg") for p in crops) == local["crops"].metrics["n_crops"]
    vectors = fs.find(f"{ITEMS}/embeddings")
    assert len(vectors) == local["embeddings"].metrics["n_total"] and all(p.endswith(".npy") for p in vectors)
    assert not (tmp_path / "one" / ".cache" / "items").exists()  # nothing in a local item cache

    # a second machine: its own client, mirror, work dir and artifact store; the same S3 item cache
    _fresh_fs()
    two = _chain(tiny_dataset, tmp_path / "two", str(tmp_path / "two" / "artifacts"), ITEMS, sharded=True)
    assert two["manifests"] == {"crops": [], "embeddings": []}  # the plans found every item on S3
    assert not two["crops"].cache_hit and not two["embeddings"].cache_hit  # the phases ran, from the cache
    assert two["crops"].metrics["n_items_processed"] == 0 and two["embeddings"].metrics["n_embedded"] == 0
    assert _ids(two) == _ids(local)
    for name in ("crops", "embeddings"):
        for p in sorted(Path(local[name].path).rglob("*")):
            if p.is_file() and p.name != "lineage.json":
                assert (Path(two[name].path) / p.relative_to(local[name].path)).read_bytes() == p.read_bytes(), p


def _fill(files: dict[str, bytes]):
    def fill(tmp: Path) -> None:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    return fill


def test_a_crops_entry_is_visible_to_other_clients_only_with_its_done_marker(s3, tmp_path):
    from pipeline.core.item_cache import ItemCache

    _fresh_fs()
    writer = ItemCache(f"{ITEMS}/crops", mirror=tmp_path / "writer")
    files = {f"crop{i}.jpg": bytes([i]) * (500 + i) for i in range(3)} | {"crops.json": b'{"rows": []}'}
    key = "ab" + "c" * 62
    writer.write_entry(key, _fill(files))
    assert (writer.entry_path(key) / "done").is_file() and writer.fs is not None

    _fresh_fs()  # the readers' client
    readers = iter(range(100))

    def reader() -> ItemCache:  # a fresh cache object lists the remote again
        return ItemCache(f"{ITEMS}/crops", mirror=tmp_path / f"reader{next(readers)}")

    seen: list[tuple[str, bool]] = []
    calls: list[list[str]] = []
    upload = writer.fs.put

    def watched_put(lpaths, rpaths, *args, **kwargs):
        calls.append(sorted(r.rsplit("/", 1)[-1] for r in rpaths))
        for lp, rp in zip(lpaths, rpaths):  # one file at a time, so a reader looks between any two
            r = reader()
            seen.append((rp.rsplit("/", 1)[-1], r.has_entry(key)))
            assert r.entry(key) is None
            upload([lp], [rp], *args, **kwargs)

    writer.fs.put = watched_put
    writer.flush()
    assert calls == [sorted(files), ["done"]]  # the files in one concurrent batch, then the marker alone
    assert [name for name, _ in seen][-1] == "done" and not any(visible for _, visible in seen)
    r = reader()
    entry = r.entry(key)
    assert entry is not None and entry.is_relative_to(r.local)
    assert {p.name: p.read_bytes() for p in entry.iterdir() if p.name != "done"} == files


def test_what_the_remote_holds_is_listed_once_and_downloaded_in_batches(s3, tmp_path):
    import numpy as np

    from pipeline.core.item_cache import ItemCache
    from pipeline.retrieval.embeddings import cache_vector, cached_vectors

    _fresh_fs()
    keys = [f"{i:02x}" + "e" * 62 for i in range(6)]
    with ItemCache(f"{ITEMS}/embeddings", mirror=tmp_path / "writer", scan=False) as writer:
        for i, k in enumerate(keys[:4]):
            cache_vector(writer, k, np.full(8, i, dtype=np.float32))
        assert not writer.fs.find(f"{ITEMS}/embeddings")  # not uploaded before the flush
    with ItemCache(f"{ITEMS}/crops", mirror=tmp_path / "writer-crops") as writer:
        for k in keys[:3]:
            writer.write_entry(k, _fill({"crops.json": k.encode()}))

    _fresh_fs()
    counted: dict[str, int] = {}
    emb = ItemCache(f"{ITEMS}/embeddings", mirror=tmp_path / "r")
    crops = ItemCache(f"{ITEMS}/crops", mirror=tmp_path / "rc")
    for fs in {id(c.fs): c.fs for c in (emb, crops)}.values():  # their client (one, as fsspec caches it)
        for name in ("find", "get"):
            def count(*a, _f=getattr(fs, name), _n=name, **kw):
                counted[_n] = counted.get(_n, 0) + 1
                return _f(*a, **kw)
            setattr(fs, name, count)
        for name in ("exists", "info", "isfile", "isdir", "cat_file"):  # no per-item request
            setattr(fs, name, lambda *a, _n=name, **kw: pytest.fail(f"per-item request {_n}{a}"))
    paths = cached_vectors(emb, keys)
    assert [p is not None for p in paths] == [True] * 4 + [False] * 2
    assert [float(np.load(p)[0]) for p in paths[:4]] == [0.0, 1.0, 2.0, 3.0]
    assert counted == {"find": 1, "get": 1}  # one listing, one concurrent batch of downloads
    assert [crops.has_entry(k) for k in keys] == [True] * 3 + [False] * 3
    assert crops.prefetch_entries(keys) == 3 and crops.prefetch_entries(keys) == 0  # mirrored once
    assert [(crops.entry(k) / "crops.json").read_bytes() for k in keys[:3]] == [k.encode() for k in keys[:3]]
    assert counted == {"find": 2, "get": 2}
    assert not cached_vectors(emb, keys[4:])[0] and counted["find"] == 2  # the listing is not repeated


def test_a_local_item_cache_keeps_its_layout_and_needs_no_mirror(tmp_path):
    import numpy as np

    from pipeline.core.item_cache import ItemCache, scratch_root
    from pipeline.retrieval.embeddings import cache_vector

    cache = ItemCache.from_runtime({"item_cache": str(tmp_path / "items")}, "crops")
    key = "ab" + "1" * 62
    cache.write_entry(key, _fill({"crops.json": b"{}"}))
    assert sorted(p.name for p in (tmp_path / "items" / "crops" / "ab").iterdir()) == [key]  # no .tmp- left
    assert cache.entry(key) == tmp_path / "items" / "crops" / "ab" / key and cache.has_entry(key)
    emb = ItemCache.from_runtime({"item_cache": str(tmp_path / "items")}, "embeddings")
    cache_vector(emb, key, np.zeros(4, dtype=np.float32))
    assert emb.file(key, ".npy") == tmp_path / "items" / "embeddings" / "ab" / f"{key}.npy"
    assert scratch_root({"item_cache": str(tmp_path / "items")}) == tmp_path / "items"
    assert scratch_root({"item_cache": ITEMS, "workdir": str(tmp_path)}).parent == tmp_path / ".cache" / "items-mirror"
    assert ItemCache.from_runtime({}, "crops") is None


def test_store_items_is_runtime_only_and_names_the_cache_and_its_mirror(tmp_path):
    from pipeline.core.phases import PHASES
    from pipeline.core.runner import phase_id
    from pipeline.core.workspace import Workspace

    plain, shared = build_config(), build_config(overrides=[f"store.items={ITEMS}"])
    ws = Workspace(tmp_path)
    assert (ws.item_cache_uri(plain), ws.item_mirror(plain)) == (str(tmp_path / ".cache" / "items"), None)
    assert ws.item_cache_uri(shared) == ITEMS
    assert ws.item_mirror(shared).parent == tmp_path / ".cache" / "items-mirror"
    for name, spec in PHASES.items():  # no artifact id depends on where the per-item cache lives
        if spec.source is None and spec.instances is None:
            ids = {k: "0" * 64 for k in spec.inputs}
            assert phase_id(name, shared, ids)[0] == phase_id(name, plain, ids)[0], name
