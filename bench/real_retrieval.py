"""Real-photo retrieval benchmark: the default config on car-damage-coco, and every option of issue 19.

    python bench/real_retrieval.py [--data ../shared/data/car-damage-coco] [--format coco] [--work /tmp/real-retrieval]
        [--config configs/demo.yaml] [--folds 5] [--variants lite0,lite0-hflip,...] [--set key=value ...]

1. The flow, default config (`--set` overrides): the retrieval-side phases as library calls (cached in
   --work) on the dataset root, train/ and val/ together (the COCO adapter reads every annotations.json
   under the root; unlabeled/ images are quarantined as unreferenced). The split is the pipeline's own:
   stratified by class, whole photo groups, ordered by sha256(seed:group), 80/10/10. Prints the head
   decision and every validation row (served, the other of frozen/head, fused, alpha-QE, k-reciprocal,
   test split only) with their n and 95% intervals over photos.
2. Features and re-ranking, cross-validated over photo groups: `dev` = the train + val photos of that
   split (what a choice may look at), `all` = every photo (the tightest estimate, for reporting). Each
   crop is a query once against every crop outside its photo/group, image-only, top 5; a head row ranks
   a query with the head of the fold that never saw its photo (the nightly's own protocol). Variants:
   Lite0 / Lite2 towers, average vs GeM pooling, flip and multi-scale TTA, the crop's features
   concatenated with its context window's (twice its size around it in the photo), alpha-QE and
   k-reciprocal re-ranking. Each row: coverage damaged / clean / balanced with intervals, the paired gain
   over the default with its interval, and the variant's cost in crops/s on this machine.

Feature maps are cached per (crops artifact, tower, view) under <work>/features, so a second run computes
nothing it already has. Timings are of this (shared, 2-core) machine: compare rows within one run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT = "lite0"
VARIANTS = {  # name: (tower, views averaged, pooling, concat context window)
    "lite0": ("tf_efficientnet_lite0", ("orig",), "avg", False),
    "lite0-hflip": ("tf_efficientnet_lite0", ("orig", "hflip"), "avg", False),
    "lite0-multiscale": ("tf_efficientnet_lite0", ("orig", "up"), "avg", False),
    "lite0-gem": ("tf_efficientnet_lite0", ("orig",), "gem", False),
    "lite0-context": ("tf_efficientnet_lite0", ("orig",), "avg", True),
    "lite2": ("tf_efficientnet_lite2", ("orig",), "avg", False),
    "lite2-hflip": ("tf_efficientnet_lite2", ("orig", "hflip"), "avg", False),
    "lite2-gem": ("tf_efficientnet_lite2", ("orig",), "gem", False),
}
UPSCALE = 1.3
CONTEXT = 2.0


def run_flow(data: Path, work: Path, overrides: list[str], fmt: str = "coco", config: str | None = None) -> dict[str, Any]:
    """The retrieval-side phases on `data` with the default config (or `config`, + overrides); {phase: PhaseResult}."""
    from pipeline.core.config import load_config
    from pipeline.core.phases import flow_targets, plan_order
    from pipeline.core.runner import PhaseContext, execute_phase
    from pipeline.core.store import ArtifactStore

    cfg = load_config(config, ["tracking.enabled=false", *overrides])
    ctx = PhaseContext(store=ArtifactStore(work / "artifacts"), progress=False)
    runtime = {"dataset_root": str(data), "workdir": str(work), "device": "cpu"}
    options = {"format": fmt}
    results: dict[str, Any] = {}
    for node in plan_order(cfg, flow_targets("retrieval"), options):
        t0 = time.perf_counter()
        inputs = {k: results[v] for k, v in node.inputs.items()}
        results[node.name] = execute_phase(node.name, cfg, inputs, ctx, options=options, runtime=runtime)
        print(f"  {node.name}: {time.perf_counter() - t0:.1f} s{' (cached)' if results[node.name].cache_hit else ''}",
              flush=True)
    return results


def print_flow(results: dict[str, Any]) -> None:
    val = Path(results["validation"].path)
    content = json.loads((val / "metrics.json").read_text())
    m = content["metrics"]
    print(f"\n## The flow, default config: {int(m['n_crops'])} crops; validation queries {int(m['n_queries'])} "
          f"(val + test crops) from {int(m['n_query_photos'])} photos\n")
    if "embedding_head" in results:
        d = json.loads((Path(results["embedding_head"].path) / "decision.json").read_text())
        from pipeline.retrieval.adopt import explain

        print(f"Head: {'ADOPTED' if d['adopted'] else 'not adopted'} - {explain(d)}\n")
    print("| row | queries (photo groups) | coverage damaged | coverage clean | balanced | mAP@R damage type |")
    print("|---|---|---|---|---|---|")
    for r in content["rows"]:
        f = lambda key: f"{r[key]['value']:.3f} [{r[key]['lo']:.3f}, {r[key]['hi']:.3f}]"  # noqa: E731
        b = r["balanced_coverage"]
        print(f"| {r['label']} | {b['n_queries']} ({b['n_photos']}) | {f('coverage_damaged')} | {f('coverage_clean')} | "
              f"{f('balanced_coverage')} | {f('map_at_r_damage_type')} |")


# -- features ----------------------------------------------------------------------------------
def _maps(emb: Any, crops: list[dict], crops_dir: Path, data: Path, view: str) -> tuple[np.ndarray, float]:
    """(n, C, H, W) float16 feature maps of one view of every crop, and crops/s of the forward + decode."""
    import torch
    from PIL import Image
    from torchvision import transforms as T

    from pipeline.data.images import load_rgb

    size = emb.preprocess.size
    tf = emb.preprocess.transform
    if view == "up":
        mean, std = emb.preprocess.transform.transforms[-1].mean, emb.preprocess.transform.transforms[-1].std
        up = int(round(size * UPSCALE / 32) * 32)
        tf = T.Compose([T.Resize((up, up), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(), T.Normalize(mean, std)])
    photos: dict[str, Any] = {}

    def image(r: dict) -> Any:
        if view == "context":
            if r["source_path"] not in photos:
                photos.clear()
                photos[r["source_path"]] = load_rgb(data / r["source_path"], 10**9)[0]
            img = photos[r["source_path"]]
            cx, cy, s = (r["x0"] + r["x1"]) / 2, (r["y0"] + r["y1"]) / 2, CONTEXT * max(r["x1"] - r["x0"], r["y1"] - r["y0"])
            return img.crop((max(0, int(cx - s / 2)), max(0, int(cy - s / 2)), min(img.width, int(cx + s / 2)),
                             min(img.height, int(cy + s / 2))))
        im = Image.open(crops_dir / r["crop_path"]).convert("RGB")
        return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if view == "hflip" else im

    order = sorted(range(len(crops)), key=lambda i: crops[i]["source_path"])  # one photo decode per context batch
    out: list[Any] = [None] * len(crops)
    t0 = time.perf_counter()
    for s in range(0, len(order), 32):
        idx = order[s:s + 32]
        x = torch.stack([tf(image(crops[i])) for i in idx])
        with torch.inference_mode():
            fm = emb.image.model.forward_features(x).numpy().astype(np.float16)
        for j, i in enumerate(idx):
            out[i] = fm[j]
    return np.stack(out), len(crops) / (time.perf_counter() - t0)


def features(crops_dir: Path, data: Path, cache: Path, names: list[str]) -> dict[str, tuple[np.ndarray, float]]:
    """{variant: (L2-normalised image vectors in crop_id order, crops/s of all its views)}."""
    import pyarrow.parquet as pq

    from pipeline.core.config import EmbedConfig
    from pipeline.retrieval.embeddings import make_embedder
    from pipeline.retrieval.head import l2n

    crops = sorted(pq.read_table(crops_dir / "crops.parquet").to_pylist(), key=lambda r: r["crop_id"])
    cache.mkdir(parents=True, exist_ok=True)
    speed = json.loads((cache / "speed.json").read_text()) if (cache / "speed.json").is_file() else {}
    pooled: dict[tuple[str, str, str], np.ndarray] = {}
    for tower in sorted({VARIANTS[n][0] for n in names}):
        emb = None
        views = sorted({v for n in names if VARIANTS[n][0] == tower for v in VARIANTS[n][1]}
                       | ({"context"} if any(VARIANTS[n][3] for n in names if VARIANTS[n][0] == tower) else set()))
        for view in views:
            f = cache / f"{tower}_{view}.npy"
            if not f.is_file():
                emb = emb or make_embedder(EmbedConfig(image_model=tower), "cpu")
                fm, speed[f"{tower}_{view}"] = _maps(emb, crops, crops_dir, data, view)
                np.save(f, fm)
                (cache / "speed.json").write_text(json.dumps(speed, indent=1))
                print(f"  features {tower} {view}: {speed[f'{tower}_{view}']:.1f} crops/s", flush=True)
            fm = np.load(f).astype(np.float32)
            pooled[(tower, view, "avg")] = fm.mean(axis=(2, 3))
            pooled[(tower, view, "gem")] = (np.clip(fm, 1e-6, None) ** 3).mean(axis=(2, 3)) ** (1 / 3)
    out = {}
    for n in names:
        tower, views, pool, ctx = VARIANTS[n]
        x = l2n(sum(l2n(pooled[(tower, v, pool)]) for v in views))
        if ctx:
            x = l2n(np.concatenate([x, l2n(pooled[(tower, "context", pool)])], axis=1))
        cost = 1.0 / sum(1.0 / speed[f"{tower}_{v}"] for v in (*views, *(("context",) if ctx else ())))
        out[n] = (x, cost)
    return out


def costs(crops_dir: Path, data: Path, names: list[str], n: int = 32, repeats: int = 3) -> dict[str, float]:
    """Crops/s of each variant's views (decode, preprocess, forward; the photo decode for a context window)
    on the same `n` crops, interleaved and the median of `repeats`, so that rows compare on a busy host."""
    import pyarrow.parquet as pq

    from pipeline.core.config import EmbedConfig
    from pipeline.retrieval.embeddings import make_embedder

    crops = sorted(pq.read_table(crops_dir / "crops.parquet").to_pylist(), key=lambda r: r["crop_id"])[:n]
    towers = {t: make_embedder(EmbedConfig(image_model=t), "cpu") for t in sorted({VARIANTS[m][0] for m in names})}
    seconds: dict[str, list[float]] = {m: [] for m in names}
    for _ in range(repeats):
        for m in names:
            tower, views, _, ctx = VARIANTS[m]
            t0 = time.perf_counter()
            for view in (*views, *(("context",) if ctx else ())):
                _maps(towers[tower], crops, crops_dir, data, view)
            seconds[m].append(time.perf_counter() - t0)
    return {m: len(crops) / float(np.median(v)) for m, v in seconds.items()}


# -- cross-validated comparison ----------------------------------------------------------------
def crop_frame(results: dict[str, Any]) -> dict[str, np.ndarray]:
    from pipeline.retrieval.adopt import crop_table
    from pipeline.retrieval.embeddings import load_embeddings
    from pipeline.retrieval.validate import photo_groups

    ids, _ = load_embeddings(Path(results["embeddings"].path))
    groups = photo_groups(Path(results["crops"].path), None, Path(results["split"].path))
    return crop_table(ids, Path(results["crops"].path), groups)


def state_precision(z: np.ndarray, q: np.ndarray, t: dict[str, np.ndarray], reranker: Any = None) -> np.ndarray:
    from pipeline.retrieval.neighbours import neighbour_metrics

    labels = {"state": t["state"]}
    return neighbour_metrics(z, z[q], q, 5, labels, t["item"], t["group"], reranker=reranker)["per_query"]["state"]["p"]


def cv_values(x: np.ndarray, t: dict[str, np.ndarray], rows: np.ndarray, loss: str, folds: int,
              rerank: bool) -> dict[str, np.ndarray]:
    """Per-query top-5 state precision of `rows` (positions in x): frozen and head (fold heads), with the
    re-rankers when `rerank`."""
    from pipeline.core.config import PipelineConfig
    from pipeline.retrieval.adopt import fold_of, train_head
    from pipeline.retrieval.neighbours import kreciprocal_reranker, qe_reranker

    cfg = PipelineConfig()
    sub = {k: v[rows] for k, v in t.items()}
    xs = x[rows]
    rr = {"": None, " + alpha-QE": qe_reranker(), " + k-reciprocal": kreciprocal_reranker()} if rerank else {"": None}
    everyone = np.arange(len(rows))
    out = {f"frozen{k}": state_precision(xs, everyone, sub, r) for k, r in rr.items()}
    for k in rr:
        out[f"head{k}"] = np.full(len(rows), np.nan)
    keys = np.where(sub["group"] != "", sub["group"], sub["item"])
    fold = fold_of(keys, folds, cfg.embed_head.seed)
    for f in np.unique(fold):
        train = fold != f
        z = train_head(xs[train], sub["label"][train], loss, cfg.embed_head, cfg.study).project(xs)
        q = np.flatnonzero(fold == f)
        for k, r in rr.items():
            out[f"head{k}"][q] = state_precision(z, q, sub, r)
    return out


def compare(values: dict[str, dict[str, np.ndarray]], t: dict[str, np.ndarray], rows: np.ndarray,
            costs: dict[str, float], title: str) -> None:
    from pipeline.retrieval.stats import PhotoBootstrap

    sub_state = t["state"][rows]
    keys = np.where(t["group"][rows] != "", t["group"][rows], t["item"][rows])
    boot = PhotoBootstrap(keys, seed=0)
    print(f"\n## {title}: {len(rows)} queries from {boot.n_photos} photo groups\n")
    print("| variant | row | coverage damaged | coverage clean | balanced | gain over the default (paired) | crops/s |")
    print("|---|---|---|---|---|---|---|")
    base: dict[str, tuple[float, np.ndarray]] = {}
    for name, rowvals in values.items():
        for row, v in rowvals.items():
            bal, draws = boot.balanced(v, sub_state)
            d, c = boot.mean(v, sub_state), boot.mean(v, ~sub_state)
            kind = row.split(" ")[0]
            if name == DEFAULT and row == kind:
                base[kind] = (bal.value, draws)
            gain = "-"
            if kind in base and not (name == DEFAULT and row == kind):
                g = boot.difference(draws, base[kind][1], bal.value - base[kind][0], len(rows))
                gain = f"{g.value:+.3f} [{g.lo:+.3f}, {g.hi:+.3f}]"
            ci = lambda e: f"{e.value:.3f} [{e.lo:.3f}, {e.hi:.3f}]"  # noqa: E731
            print(f"| {name} | {row} | {ci(d)} | {ci(c)} | {ci(bal)} | {gain} | {costs.get(name, float('nan')):.1f} |",
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/car-damage-coco")
    ap.add_argument("--format", default="coco", choices=["coco", "labelme", "jsonl", "folders"])
    ap.add_argument("--config", help="a config file (default: the defaults)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/real-retrieval"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--set", action="append", default=[], help="config override for the flow part (key=value)")
    ap.add_argument("--skip-features", action="store_true", help="the flow part only")
    a = ap.parse_args()
    if not a.data.is_dir():
        raise SystemExit(f"no dataset at {a.data} (pass --data)")
    t0 = time.perf_counter()
    print(f"# Retrieval benchmark: {a.data} ({a.format})\n\nThe flow's phases ({a.config or 'default config'}"
          f"{' + ' + str(a.set) if a.set else ''}):")
    results = run_flow(a.data, a.work, a.set, a.format, a.config)
    print_flow(results)
    if a.skip_features:
        return
    names = [n for n in a.variants.split(",") if n]
    if DEFAULT not in names:
        names.insert(0, DEFAULT)
    t = crop_frame(results)
    decision = json.loads((Path(results["embedding_head"].path) / "decision.json").read_text()) \
        if "embedding_head" in results else {}
    loss = decision.get("loss") or "contrastive"
    feats = features(Path(results["crops"].path), a.data, a.work / "features" / results["crops"].artifact_id[:16], names)
    print("\ncost of each variant (interleaved, median of 3 on the same 32 crops):", flush=True)
    speed = costs(Path(results["crops"].path), a.data, names)
    print("  " + ", ".join(f"{n} {v:.1f} crops/s ({v / speed[DEFAULT]:.2f}x)" for n, v in speed.items()), flush=True)
    for scope, rows in (("dev", np.flatnonzero(np.isin(t["split"], ["train", "val"]))), ("all", np.arange(len(t["split"])))):
        values = {n: cv_values(feats[n][0], t, rows, loss, a.folds, rerank=n == DEFAULT) for n in names}
        title = (f"{a.folds}-fold cross-validation over {'the train + val' if scope == 'dev' else 'all the'} photos "
                 f"({loss} head; selection {'may look here' if scope == 'dev' else 'never looked: report only'})")
        compare(values, t, rows, speed, title)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
