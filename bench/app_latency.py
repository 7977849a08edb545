"""Search latency of the app's own code path (`pipeline.app.webapp.backend`, what the Search page
calls) over a work dir's latest index: first-load time, then p50/p95 of text and image queries.

    python bench/app_latency.py [--workdir demo-work] [--n 40] [--k 12] [--zone 7]

First load = opening the index (FAISS + metadata), loading the embedding models and answering one
text query: what the first query after `pipeline app` starts waits for. The queries after it reuse
the loaded retriever (the page keeps it in st.cache_resource). Image queries are source photos of
the run's dataset, decoded from their bytes as an upload is (`read_upload`); text queries are
varied descriptions. Streamlit's own rendering is not included.
"""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np

TEXTS = ["deep scratch on the driver door", "dent on the rear bumper", "paint peeling on the hood",
         "crack near the front left fender", "clean passenger side door", "missing part at the rear",
         "surface scratch on the rocker panel", "misaligned bumper"]


def _ms(xs: list[float]) -> str:
    a = np.asarray(xs) * 1000
    return f"p50 {np.percentile(a, 50):7.1f} ms   p95 {np.percentile(a, 95):7.1f} ms   (n={len(a)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("demo-work"))
    ap.add_argument("--n", type=int, default=40, help="queries of each kind")
    ap.add_argument("--k", type=int, default=12, help="results per query (the page's default)")
    ap.add_argument("--zone", type=int, action="append", default=None, help="also filter by zone (repeatable)")
    args = ap.parse_args()

    from pipeline.app.webapp import backend

    ctx = backend.AppContext.open(args.workdir)
    choices = backend.index_choices(ctx)
    if not choices:
        raise SystemExit(f"no index in {ctx.workdir}: run `make demo` (or `pipeline run retrieval`) first")
    index_id = choices[0]["artifact_id"]
    t0 = time.perf_counter()
    retriever = backend.open_retriever(ctx, index_id, load_models=False)
    t_open = time.perf_counter() - t0
    retriever.embedder  # noqa: B018  (the page's first query loads the models)
    backend.search(retriever, TEXTS[0], k=args.k, zones=args.zone)
    t_first = time.perf_counter() - t0

    root = backend.dataset_root(ctx, index_id)
    photos = sorted({r["source_path"] for r in backend.crop_rows(retriever).values()})
    photos = [root / p for p in photos if root and (root / p).is_file()][: args.n]
    text_s, image_s = [], []
    for text in itertools.islice(itertools.cycle(TEXTS), args.n):
        t = time.perf_counter()
        backend.search(retriever, text, k=args.k, zones=args.zone)
        text_s.append(time.perf_counter() - t)
    for photo in photos:
        data = photo.read_bytes()
        t = time.perf_counter()
        image, problem = backend.read_upload(data)
        assert problem is None, problem
        backend.search(retriever, image, k=args.k, zones=args.zone)
        image_s.append(time.perf_counter() - t)

    import torch

    print(f"index {index_id[:12]}: {retriever.index.ntotal} crops, {retriever.info.get('kind')}, "
          f"dim {retriever.index.d}; device {retriever.device}; torch threads {torch.get_num_threads()}; "
          f"k {args.k}; zones {args.zone or 'any'}")
    print(f"first load (open index {t_open:.2f} s + models + first query): {t_first:.2f} s")
    print(f"text queries:  {_ms(text_s)}")
    if image_s:
        print(f"image queries: {_ms(image_s)}  (decode of the upload included)")
    else:
        print(f"image queries: none (the dataset photos are not under {root})")


if __name__ == "__main__":
    main()
