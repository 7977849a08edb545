"""Similar-crop search over a built index, with metadata filters.

A query is a vector (index space), a PIL image, an image path, or a text (a str that is not an
existing file); images and texts go through the embedder's query convention (embed.py). Filters
(zones, has_damage, damage_type, exclude_ids) are applied as a FAISS pre-filter (IDSelectorBatch in
SearchParameters / SearchParametersHNSW / SearchParametersIVF); when the approximate filtered search
returns fewer than k hits, the search over-fetches unfiltered with a growing k, and finally scores
the allowed rows exactly, so k hits come back whenever k items satisfy the filter.

Re-ranking (`rerank`): 'qe' (alpha query expansion: the query moved towards its top allowed hits,
then searched again with the same filter) or 'kreciprocal' (k-reciprocal re-ranking of the top
RERANK_TOP allowed hits), both from `pipeline.retrieval.rerank`. They work in the query's own part
of the index space (an image query in the image part, a text query in the text part: an image query
is never re-ranked by the index's context texts) and only ever see rows that passed the filter, so
the k results still all meet it. Deterministic: no sampling anywhere.

The index artifact names its crops artifact by id (index.json `inputs`) and stores crop paths
relative to it; `Retriever.open` resolves that id through the artifact store, so an index keeps
working in a moved work dir or from a remote store, and hits carry readable local crop paths.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from pipeline.retrieval.coarse import search_ready
from pipeline.retrieval.index import np_search, search_params

RERANKS = ("qe", "kreciprocal")
RERANK_TOP = 100  # allowed hits k-reciprocal re-ranking looks at
QE_N, QE_ALPHA = 3, 3.0
KR_K1, KR_K2, KR_LAMBDA = 20, 6, 0.3


class Retriever:
    """An opened index directory: the FAISS index, its metadata rows and (lazily) the embedder."""

    def __init__(self, index: Any, metadata: list[dict[str, Any]], info: dict[str, Any], embedder: Any = None,
                 device: str = "auto", crops_dir: Path | None = None, store: Any = None) -> None:
        self.index = index
        self.store = store  # resolves the artifacts index.json names (crops, a trained embedding head)
        self.crops_dir = crops_dir
        self.metadata = metadata
        self.info = info
        self._embedder = embedder
        self.device = device
        self._zone = np.array([m["zone"] if m["zone"] is not None else -1 for m in metadata], dtype=np.int64)
        self._damaged = np.array([bool(m["has_damage"]) for m in metadata], dtype=bool)
        self._row = {m["crop_id"]: i for i, m in enumerate(metadata)}

    @classmethod
    def open(cls, index_dir: Path, embedder: Any = None, device: str = "auto", store: Any = None,
             crops_dir: Path | None = None) -> "Retriever":
        """Load index.faiss, metadata.parquet and index.json from `index_dir`.

        The crops artifact (for readable crop paths in the hits) is `crops_dir` if given, else the one
        index.json names, from `store` (an ArtifactStore) or, without one, from the store `index_dir`
        lies in (`<root>/index/<id>`). When none resolves, crop_path stays relative to the crops artifact."""
        import faiss
        import pyarrow.parquet as pq

        index_dir = Path(index_dir)
        info = json.loads((index_dir / "index.json").read_text(encoding="utf-8"))
        index = search_ready(faiss.read_index(str(index_dir / "index.faiss")))
        metadata = pq.read_table(index_dir / "metadata.parquet").to_pylist()
        if index.ntotal != len(metadata):
            raise ValueError(f"{index_dir}: index has {index.ntotal} vectors but metadata {len(metadata)} rows")
        crops_dir = Path(crops_dir) if crops_dir is not None else _crops_dir(index_dir, info, store)
        if crops_dir is not None:
            for m in metadata:
                m["crop_path"] = str(crops_dir / m["crop_path"])
        if store is None:  # the store the index lies in (<root>/index/<id>)
            from pipeline.core.store import ArtifactStore

            root = index_dir.resolve().parent.parent
            store = ArtifactStore(root) if (root / "crops").is_dir() else None
        return cls(index, metadata, info, embedder, device, crops_dir, store)

    @property
    def embedder(self) -> Any:
        """The embedder passed in, else the one index.json records (the embeddings' embedder.json)."""
        if self._embedder is None:
            from pipeline.retrieval.embeddings import embedder_from_json

            if "embedder" not in self.info:
                raise ValueError("this index records no embedder (built by an older version): pass one, or rebuild it")
            self._embedder = embedder_from_json(self.info["embedder"], self.device, store=self.store)
        return self._embedder

    # -- queries -------------------------------------------------------------------------------
    def query_vector(self, query: Any) -> np.ndarray:
        """(dim,) float32 index-space vector of a vector, PIL image, image path or text."""
        from PIL import Image

        if isinstance(query, np.ndarray):
            vec = query.astype(np.float32).reshape(-1)
        elif isinstance(query, Image.Image):
            vec = self.embedder.query_image(query)
        elif isinstance(query, (str, Path)) and Path(query).is_file():
            with Image.open(query) as im:
                vec = self.embedder.query_image(im.convert("RGB"))
        elif isinstance(query, str):
            vec = self.embedder.query_text(query)
        else:
            raise TypeError(f"query must be a vector, PIL image, image path or text, got {type(query).__name__}")
        if vec.shape[0] != self.index.d:
            raise ValueError(f"query has dim {vec.shape[0]}, the index {self.index.d}")
        return vec

    def allowed_rows(self, zones: int | Sequence[int] | None = None, has_damage: bool | None = None,
                     damage_type: str | Sequence[str] | None = None,
                     exclude_ids: Iterable[str] | None = None) -> np.ndarray | None:
        """Rows satisfying all filters (damage_type: any of the given types), or None when unfiltered."""
        if zones is None and has_damage is None and damage_type is None and not exclude_ids:
            return None
        mask = np.ones(len(self.metadata), dtype=bool)
        if zones is not None:
            mask &= np.isin(self._zone, np.atleast_1d(np.asarray(zones, dtype=np.int64)))
        if has_damage is not None:
            mask &= self._damaged == bool(has_damage)
        if damage_type is not None:
            wanted = {damage_type} if isinstance(damage_type, str) else set(damage_type)
            mask &= np.array([bool(wanted & set(m["damage_types"] or ())) for m in self.metadata], dtype=bool)
        for crop_id in exclude_ids or ():
            if crop_id in self._row:
                mask[self._row[crop_id]] = False
        return np.flatnonzero(mask).astype(np.int64)

    # -- search --------------------------------------------------------------------------------
    def search(self, query: Any, k: int = 5, zones: int | Sequence[int] | None = None, has_damage: bool | None = None,
               damage_type: str | Sequence[str] | None = None,
               exclude_ids: Iterable[str] | None = None, rerank: str | None = None) -> list[dict[str, Any]]:
        """Top-k hits: dicts of rank (1-based), crop_id, score and the metadata columns; scores descending
        (with `rerank` 'kreciprocal' the score is minus the re-ranked distance)."""
        return self.search_many(self.query_vector(query)[None, :], k, zones=zones, has_damage=has_damage,
                                damage_type=damage_type, exclude_ids=exclude_ids, rerank=rerank)[0]

    def search_many(self, matrix: np.ndarray, k: int = 5, rerank: str | None = None,
                    **filters: Any) -> list[list[dict[str, Any]]]:
        """`search` for each row of an (m, dim) matrix of index-space vectors (same filters for all)."""
        if rerank not in (None, "none", *RERANKS):
            raise ValueError(f"rerank must be one of {RERANKS} (or None), got {rerank!r}")
        q = np.ascontiguousarray(np.atleast_2d(matrix), dtype=np.float32)
        allowed = self.allowed_rows(**filters)
        if rerank == "qe":
            hits = [self._expanded(vec, h, k, allowed) for vec, h in zip(q, self._rows(q, max(k, QE_N), allowed))]
        elif rerank == "kreciprocal":
            hits = [self._kreciprocal(vec, h, k) for vec, h in zip(q, self._rows(q, max(k, RERANK_TOP), allowed))]
        else:
            hits = self._rows(q, k, allowed)
        return [[self._hit(rank, row, score) for rank, (row, score) in enumerate(h, 1)] for h in hits]

    def _rows(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> list[list[tuple[int, float]]]:
        """The top-k allowed (row, score) of each query: pre-filtered search, then over-fetch, then exact."""
        want = min(k, self.index.ntotal if allowed is None else len(allowed))
        if want <= 0:
            return [[] for _ in q]
        hits = self._prefiltered(q, want, allowed)
        short = [i for i, h in enumerate(hits) if len(h) < want]
        if short:
            for i, h in zip(short, self._overfetch(q[short], want, allowed)):
                hits[i] = h
        return hits

    # -- re-ranking ----------------------------------------------------------------------------
    def _part(self, vec: np.ndarray) -> slice:
        """The query's own part of a concatenated index space (the image part of an image query, the text
        part of a text query); the whole vector otherwise."""
        emb = self.info.get("embedder") or {}
        d = emb.get("image_dim")
        if emb.get("fusion", {}).get("mode") != "concat" or not d or not 0 < d < len(vec):
            return slice(None)
        if not np.any(vec[d:]):
            return slice(0, d)
        if not np.any(vec[:d]):
            return slice(d, None)
        return slice(None)

    def _vectors(self, rows: list[int]) -> np.ndarray:
        import faiss

        base = faiss.downcast_index(self.index.index) if isinstance(self.index, faiss.IndexIDMap2) else self.index
        if not isinstance(base, faiss.IndexRefine) and (ivf := faiss.try_extract_index_ivf(self.index)) is not None:
            ivf.make_direct_map()
        return self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def _expanded(self, vec: np.ndarray, hits: list[tuple[int, float]], k: int,
                  allowed: np.ndarray | None) -> list[tuple[int, float]]:
        """Alpha query expansion in the query's part, searched again under the same filter."""
        from pipeline.retrieval.rerank import alpha_qe

        if not hits:
            return hits
        part = self._part(vec)
        new = np.zeros_like(vec)
        new[part] = alpha_qe(vec[part], self._vectors([r for r, _ in hits[:QE_N]])[:, part], QE_N, QE_ALPHA)
        return self._rows(new[None, :], k, allowed)[0]

    def _kreciprocal(self, vec: np.ndarray, hits: list[tuple[int, float]], k: int) -> list[tuple[int, float]]:
        """k-reciprocal re-ranking of the allowed hits in the query's part; score = minus the final distance."""
        from pipeline.retrieval.rerank import k_reciprocal

        if not hits:
            return hits
        part = self._part(vec)
        rows = [r for r, _ in hits]
        order, dist = k_reciprocal(vec[part], self._vectors(rows)[:, part], KR_K1, KR_K2, KR_LAMBDA)
        return [(rows[o], -float(d)) for o, d in zip(order[:k], dist[:k])]

    def _prefiltered(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> list[list[tuple[int, float]]]:
        import faiss

        if allowed is None:
            scores, rows = np_search(self.index, q, k)
        else:
            selector = faiss.IDSelectorBatch(allowed)
            scores, rows = np_search(self.index, q, k, search_params(self.index, selector))
        return [[(int(r), float(s)) for r, s in zip(rr, ss) if r >= 0] for rr, ss in zip(rows, scores)]

    def _overfetch(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> list[list[tuple[int, float]]]:
        """Unfiltered searches with k growing x4 up to ntotal, filtered afterwards; then exact scoring."""
        ok = np.zeros(self.index.ntotal, dtype=bool)
        ok[allowed if allowed is not None else slice(None)] = True
        out: list[list[tuple[int, float]]] = [[] for _ in q]
        todo = list(range(len(q)))
        fetch = min(self.index.ntotal, 4 * k)
        while todo:
            scores, rows = np_search(self.index, q[todo], fetch)
            still = []
            for i, rr, ss in zip(todo, rows, scores):
                out[i] = [(int(r), float(s)) for r, s in zip(rr, ss) if r >= 0 and ok[r]][:k]
                if len(out[i]) < k:
                    still.append(i)
            if fetch >= self.index.ntotal:
                todo = still
                break
            todo, fetch = still, min(self.index.ntotal, fetch * 4)
        for i in todo:
            out[i] = self._exact(q[i], k, np.flatnonzero(ok))
        return out

    def _exact(self, vec: np.ndarray, k: int, rows: np.ndarray) -> list[tuple[int, float]]:
        """Inner products against the stored vectors of `rows`: exact for Flat/HNSW, the refine codes'
        reconstruction for a refined IVF-PQ, the PQ reconstruction (approximate) without refine."""
        vecs = self._vectors(rows)
        scores = vecs @ vec
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(rows[t]), float(scores[t])) for t in top]

    def _hit(self, rank: int, row: int, score: float) -> dict[str, Any]:
        meta = self.metadata[row]
        return {"rank": rank, "crop_id": meta["crop_id"], "score": score,
                **{key: v for key, v in meta.items() if key != "crop_id"}}


def _crops_dir(index_dir: Path, info: dict[str, Any], store: Any) -> Path | None:
    """Local directory of the crops artifact index.json names: through `store`, else next to index_dir."""
    crops_id = (info.get("inputs") or {}).get("crops")
    if not crops_id:
        return None
    if store is not None:
        return Path(store.dir_for("crops", crops_id))
    sibling = index_dir.resolve().parent.parent / "crops" / crops_id
    return sibling if (sibling / "lineage.json").is_file() else None
