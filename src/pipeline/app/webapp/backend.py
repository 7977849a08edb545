"""What the search page does, without Streamlit: pick an index, open it, run a filtered query, show a
hit's source photo and lineage. A thin layer over `Retriever`, the store, run records and lineage
(no search logic of its own); the pages and bench/app_latency.py call these same functions."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline.core.config import PipelineConfig
from pipeline.core.runs import RunRecord
from pipeline.core.store import ArtifactNotFound, ArtifactStore
from pipeline.core.workspace import Workspace

WORKDIR_ENV = "PIPELINE_APP_WORKDIR"
UPLOAD_MAX_MB = 20  # Streamlit refuses bigger uploads (launch.py passes --server.maxUploadSize)
UPLOAD_MAX_PIXELS = 40_000_000  # checked from the header, before decoding
DAMAGED = {"any": None, "yes": True, "no": False}


@dataclass
class AppContext:
    """The work dir the app shows, its store and its run records (re-read on each page run)."""

    workdir: Path
    cfg: PipelineConfig = field(default_factory=PipelineConfig)

    @classmethod
    def open(cls, workdir: str | Path) -> "AppContext":
        """The config of the latest run decides where the store is (store.artifacts); default otherwise."""
        workdir = Path(workdir).resolve()
        records = RunRecord.all(workdir)
        cfg = PipelineConfig()
        if records:
            try:
                cfg = PipelineConfig.model_validate(records[0].config)
            except ValueError:
                pass  # a record from an older config schema: the default store location
        return cls(workdir, cfg)

    @cached_property
    def store(self) -> ArtifactStore:
        ws = Workspace(self.workdir)
        return ArtifactStore(ws.artifact_uri(self.cfg), cache_dir=ws.cache / "artifacts")

    @property
    def records(self) -> list[RunRecord]:
        return RunRecord.all(self.workdir)


def index_choices(ctx: AppContext) -> list[dict[str, str]]:
    """Index artifacts to search: those of the run records, newest run first (the default is the
    first), then any other complete index in the store. [{artifact_id, label}]."""
    out: dict[str, str] = {}
    for rec in ctx.records:
        aid = (rec.phases.get("index") or {}).get("artifact_id")
        if aid and aid not in out and ctx.store.is_complete("index", aid):
            out[aid] = f"{aid[:12]} (run {rec.flow_run_id[:8]}, {rec.flow}, {rec.started_at or '?'})"
    root = Path(ctx.store.dir_path("index", "x")).parent if ctx.store.is_local else None
    if root is not None and root.is_dir():
        for d in sorted(root.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
            if d.name not in out and ctx.store.is_complete("index", d.name):
                out[d.name] = f"{d.name[:12]} (in the store, no run record)"
    return [{"artifact_id": a, "label": label} for a, label in out.items()]


def open_retriever(ctx: AppContext, index_id: str, load_models: bool = True) -> Any:
    """The opened index, with its embedder loaded unless `load_models` is False (the page caches it
    with st.cache_resource and loads the models on the first query)."""
    from pipeline.core.workspace import setup_environment
    from pipeline.retrieval.retrieve import Retriever

    setup_environment(ctx.workdir, prefect_home=False)  # offline and quiet model loading, caches in the work dir
    index_dir = ctx.store.local_path(ctx.store.ref("index", index_id))
    retriever = Retriever.open(index_dir, device=ctx.cfg.runtime.device, store=ctx.store)
    if load_models:
        retriever.embedder  # noqa: B018  (load the models now)
    return retriever


def facets(retriever: Any) -> dict[str, Any]:
    """Filter values that exist in the index: zones {zone: name} and damage types."""
    zones = {m["zone"]: m.get("zone_name") or "" for m in retriever.metadata if m["zone"] is not None}
    types = sorted({t for m in retriever.metadata for t in (m["damage_types"] or [])})
    return {"zones": dict(sorted(zones.items())), "damage_types": types}


@dataclass
class SearchOutcome:
    hits: list[dict[str, Any]]
    message: str | None = None  # for the page: why there is nothing to show (never a traceback)


def read_upload(data: bytes) -> tuple[Any, str | None]:
    """(RGB PIL image, None) from uploaded bytes, or (None, a message) when they are not an image or are
    over the bounds (UPLOAD_MAX_MB, UPLOAD_MAX_PIXELS: checked before decoding)."""
    from pipeline.data.images import DecodeError, DecompressionBomb, load_rgb

    if len(data) > UPLOAD_MAX_MB * 1024 * 1024:
        return None, f"The uploaded file is {len(data) / 2**20:.1f} MB; the limit is {UPLOAD_MAX_MB} MB."
    try:
        return load_rgb(data, UPLOAD_MAX_PIXELS)[0], None
    except DecompressionBomb as exc:
        return None, f"The uploaded image is too large ({exc})."
    except (DecodeError, MemoryError) as exc:
        return None, f"The uploaded file is not a readable image ({exc})."


def search(retriever: Any, query: Any, k: int = 12, zones: list[int] | None = None, damaged: str = "any",
           damage_types: list[str] | None = None) -> SearchOutcome:
    """`Retriever.search` with the page's filters; an empty result says which values the index has."""
    if query is None or (isinstance(query, str) and not query.strip()):
        return SearchOutcome([], "Type a text or upload an image to search.")
    hits = retriever.search(query, k=k, zones=zones or None, has_damage=DAMAGED[damaged],
                            damage_type=damage_types or None)
    if hits:
        return SearchOutcome(hits)
    f = facets(retriever)
    zones_txt = ", ".join(f"{z} {n}".strip() for z, n in f["zones"].items()) or "none"
    return SearchOutcome([], "No indexed crop satisfies these filters. The index has zones: "
                             f"{zones_txt}; damage types: {', '.join(f['damage_types']) or 'none'}; "
                             f"damaged: {sorted({m['has_damage'] for m in retriever.metadata})}.")


def _crop_rows(crops_dir: Path) -> dict[str, dict[str, Any]]:
    import pyarrow.parquet as pq

    cols = ["crop_id", "source_path", "x0", "y0", "x1", "y1", "width", "height", "defects"]
    return {r["crop_id"]: r for r in pq.read_table(Path(crops_dir) / "crops.parquet", columns=cols).to_pylist()}


def crop_rows(retriever: Any) -> dict[str, dict[str, Any]]:
    """crop_id -> source photo path and box, from the index's crops artifact (read once per retriever)."""
    cached = getattr(retriever, "_app_crop_rows", None)
    if cached is None:
        cached = _crop_rows(retriever.crops_dir) if retriever.crops_dir is not None else {}
        retriever._app_crop_rows = cached
    return cached


def dataset_root(ctx: AppContext, index_id: str) -> Path | None:
    """Where the photos of the run that made this index lie (its run record, else the newest run's)."""
    records = ctx.records
    for rec in records:
        if (rec.phases.get("index") or {}).get("artifact_id") == index_id and rec.run.get("dataset_root"):
            return Path(rec.run["dataset_root"])
    roots = [r.run.get("dataset_root") for r in records if r.run.get("dataset_root")]
    return Path(roots[0]) if roots else None


def source_view(ctx: AppContext, retriever: Any, index_id: str, crop_id: str) -> tuple[Any, str]:
    """(the source photo with the crop box and defect boxes drawn, or None; a caption or the reason)."""
    from PIL import Image, ImageDraw, ImageOps

    row = crop_rows(retriever).get(crop_id)
    if row is None:
        return None, "This crop is not in the index's crops artifact."
    root = dataset_root(ctx, index_id)
    path = root / row["source_path"] if root else None
    if path is None or not path.is_file():
        return None, f"The source photo {row['source_path']} is not on this machine (dataset root {root})."
    with Image.open(path) as im:
        photo = ImageOps.exif_transpose(im).convert("RGB")
    draw = ImageDraw.Draw(photo)
    box = (row["x0"], row["y0"], row["x1"], row["y1"])
    width = max(2, photo.width // 200)
    draw.rectangle(box, outline=(255, 40, 40), width=width)
    sx = (box[2] - box[0]) / max(1, row["width"] or 1)  # defect boxes are in saved-crop pixels
    sy = (box[3] - box[1]) / max(1, row["height"] or 1)
    for d in json.loads(row["defects"] or "[]"):
        x0, y0, x1, y1 = d["box"]
        draw.rectangle((box[0] + x0 * sx, box[1] + y0 * sy, box[0] + x1 * sx, box[1] + y1 * sy),
                       outline=(255, 200, 0), width=max(1, width // 2))
    return photo, f"{row['source_path']}  box {list(box)}"


def hit_lineage(ctx: AppContext, index_id: str) -> dict[str, Any]:
    """Which runs used this index and the artifacts upstream of it (phase, id, created_at)."""
    from pipeline.core.lineage import walk

    runs = [{"flow_run_id": r.flow_run_id, "flow": r.flow, "started_at": r.started_at, "status": r.status}
            for r in ctx.records if (r.phases.get("index") or {}).get("artifact_id") == index_id]
    rows: list[dict[str, Any]] = []
    try:
        tree = walk(ctx.store, index_id, max_files=0)
    except ArtifactNotFound as exc:
        return {"runs": runs, "artifacts": [], "error": str(exc)}
    seen: set[str] = set()
    todo = [tree]
    while todo:
        node = todo.pop(0)
        if node["artifact_id"] in seen:
            continue
        seen.add(node["artifact_id"])
        rows.append({"phase": node["phase"], "artifact_id": node["artifact_id"],
                     "created_at": node.get("created_at"), "missing": bool(node.get("missing"))})
        todo.extend(node.get("inputs", []))
    return {"runs": runs, "artifacts": rows}
