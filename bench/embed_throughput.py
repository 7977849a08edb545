"""Crops per second of the batched embedding phase (`run_embeddings`: DataLoader, batches) against
a per-image loop (one preprocessing and one model call per crop, as the users' first version did),
same model and inputs, and their ratio; then the phase again with its per-crop cache warm.

    python bench/embed_throughput.py [--n 256] [--size 448] [--backend hybrid|clip] [--device auto]
        [--batch-size 32] [--workers 0] [--multi-patch]

'clip' uses a random-initialised ViT-S-32 (no CLIP weights offline): a speed figure only.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def make_crops(root: Path, n: int, size: int) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from pipeline.retrieval.contexts import CONTEXTS_SCHEMA
    from pipeline.retrieval.crops import CROPS_SCHEMA

    crops_dir, ctx_dir = root / "crops", root / "contexts"
    ctx_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, ctx = [], []
    for i in range(n):
        cid = f"{i:064x}"
        rel = f"crops/{cid[:2]}/{cid}.jpg"
        (crops_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(crops_dir / rel, quality=90)
        rows.append({"crop_id": cid, "item_id": str(i), "split": "train", "crop_path": rel, "crop_type": "damage",
                     "zone": 1, "has_damage": True, "damage_types": ["scratch"]})
        ctx.append({"crop_id": cid, "part": "door", "pattern": "single", "text": f"scratch number {i} on the door",
                    "n_words": 6})
    full = [{name: r.get(name) for name in CROPS_SCHEMA.names} for r in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=CROPS_SCHEMA), crops_dir / "crops.parquet")
    pq.write_table(pa.Table.from_pylist(ctx, schema=CONTEXTS_SCHEMA), ctx_dir / "contexts.parquet")
    return crops_dir, ctx_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--backend", choices=["hybrid", "clip"], default="hybrid")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--multi-patch", action="store_true")
    args = ap.parse_args()

    from pipeline.core.config import EmbedConfig
    from pipeline.retrieval.embeddings import run_embeddings

    root = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    crops, ctx = make_crops(root, args.n, args.size)
    extra = ({"clip_model": "ViT-S-32", "clip_pretrained": None, "allow_random_init": True}
             if args.backend == "clip" else {})
    cfg = EmbedConfig(backend=args.backend, batch_size=args.batch_size, num_workers=args.workers,
                      multi_patch=args.multi_patch, **extra)
    import time

    import pyarrow.parquet as pq
    from PIL import Image

    from pipeline.retrieval.embeddings import make_embedder

    emb = make_embedder(cfg, args.device)  # loaded once, outside both timings
    table = pq.read_table(crops / "crops.parquet").to_pylist()
    texts = dict(zip(*pq.read_table(ctx / "contexts.parquet", columns=["crop_id", "text"]).to_pydict().values()))
    emb.fuse(emb.embed_images([Image.open(crops / table[0]["crop_path"]).convert("RGB")]), emb.embed_texts(["warm"]))
    t = time.perf_counter()
    for row in table:
        img = Image.open(crops / row["crop_path"]).convert("RGB")
        emb.fuse(emb.embed_images([img]), emb.embed_texts([texts[row["crop_id"]]]))
    loop_s = time.perf_counter() - t
    print(f"per-image loop  n={len(table)}  {loop_s:.2f}s  {len(table) / loop_s:.1f} crops/s")

    from pipeline.retrieval import embeddings as embed_mod

    embed_mod.make_embedder = lambda *a, **k: emb  # the phase gets the already-loaded model
    m = run_embeddings(crops, ctx, cfg, root / "emb-cold", root / "cache", device=args.device, progress=False)
    print(f"batched phase   n={m['n_total']}  {m['seconds']:.2f}s  {m['n_total'] / m['seconds']:.1f} crops/s "
          f"(batch {args.batch_size}, workers {args.workers})")
    print(f"ratio batched/loop: {loop_s / m['seconds']:.2f}x")
    m = run_embeddings(crops, ctx, cfg, root / "emb-cached", root / "cache", device=args.device, progress=False)
    print(f"cached re-run   n={m['n_total']}  embedded={m['n_embedded']}  {m['seconds']:.2f}s")


if __name__ == "__main__":
    main()
