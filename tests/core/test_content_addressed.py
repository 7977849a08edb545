"""Content addressing for real: one artifact id has the same bytes in every work dir, artifacts refer
to each other by id (never by path), and a moved work dir still answers searches."""
import json
import shutil
from pathlib import Path

import pytest

from pipeline.core.config import build_config

SMALL = ["detect.backend=none", "crops.grid_size=128", "crops.target_size=160", "embed.backend=hybrid"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    from pipeline.core.config import DemoConfig
    from pipeline.demo.generator import generate_demo_data

    out = tmp_path_factory.mktemp("tiny") / "data"
    generate_demo_data(out, DemoConfig(n_images=20, seed=3, width=256, height=192), progress=False)
    return out


def run(dataset: Path, workdir: Path) -> dict:
    from pipeline_flows.retrieval import retrieval

    return retrieval(dataset=str(dataset), format="labelme", workdir=str(workdir), config=build_config(overrides=SMALL))


def artifact_dirs(workdir: Path) -> dict[str, Path]:
    root = workdir / "artifacts"
    return {f"{p.parent.parent.name}/{p.parent.name}": p.parent for p in root.glob("*/*/lineage.json")}


LINEAGE_KEYS = ("phase", "artifact_id", "phase_version", "params", "inputs", "outputs", "content_hash")


@pytest.fixture(scope="module")
def two_workdirs(prefect_server, tiny_dataset, tmp_path_factory) -> tuple[Path, dict, Path]:
    """The retrieval flow on the same data in two fresh work dirs: (a, a's summary, b). Read-only for its users."""
    root = tmp_path_factory.mktemp("content-addressed")
    summary = run(tiny_dataset, root / "a")
    run(tiny_dataset, root / "b")
    return root / "a", summary, root / "b"


@pytest.mark.slow
def test_two_work_dirs_give_byte_identical_artifacts(two_workdirs):
    wa, _, wb = two_workdirs
    a, b = artifact_dirs(wa), artifact_dirs(wb)
    assert set(a) == set(b) and {k.split("/")[0] for k in a} >= {"crops", "embeddings", "index", "validation"}
    for key, da in a.items():
        db = b[key]
        files = sorted(p.relative_to(da).as_posix() for p in da.rglob("*") if p.is_file() and p.name != "lineage.json")
        assert files == sorted(p.relative_to(db).as_posix() for p in db.rglob("*")
                               if p.is_file() and p.name != "lineage.json"), key
        for f in files:
            assert (da / f).read_bytes() == (db / f).read_bytes(), f"{key}/{f} differs between work dirs"
            if f.endswith((".json", ".md", ".parquet")):
                assert str(wa.parent).encode() not in (da / f).read_bytes(), f"{key}/{f} holds a work dir path"
        la, lb = (json.loads((d / "lineage.json").read_text()) for d in (da, db))
        assert {k: la.get(k) for k in LINEAGE_KEYS} == {k: lb.get(k) for k in LINEAGE_KEYS}, key


@pytest.mark.slow
def test_moved_work_dir_still_searches(two_workdirs, tiny_dataset, tmp_path):
    """A copy of work dir `a`, moved elsewhere, answers searches with its own files: nothing in it points back
    to where it was computed (which still exists here, so a path into it would not go unnoticed)."""
    from typer.testing import CliRunner

    from pipeline.app.cli import app
    from pipeline.core.store import ArtifactStore
    from pipeline.retrieval.retrieve import Retriever

    wa, out, _ = two_workdirs
    index_id = out["phases"]["index"]["artifact_id"]
    shutil.copytree(wa, tmp_path / "w", symlinks=True)
    shutil.move(str(tmp_path / "w"), str(tmp_path / "moved"))
    moved = (tmp_path / "moved").resolve()

    store = ArtifactStore(moved / "artifacts")
    retriever = Retriever.open(store.dir_for("index", index_id), store=store)
    hits = retriever.search(retriever.metadata[0]["crop_path"], k=3)
    assert len(hits) == 3 and hits[0]["crop_id"] == retriever.metadata[0]["crop_id"]
    assert all(Path(h["crop_path"]).is_file() and Path(h["crop_path"]).is_relative_to(moved) for h in hits)

    img = next(tiny_dataset.glob("*_imageDANO_original.jpg"))
    res = CliRunner().invoke(app, ["search", "--workdir", str(moved), "--index", index_id[:12], "--image", str(img),
                                   "--k", "3", "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout[res.stdout.index("{"):])
    assert payload["index"] == index_id and len(payload["hits"]) == 3
    assert all(Path(h["crop_path"]).is_file() and Path(h["crop_path"]).is_relative_to(moved) for h in payload["hits"])
