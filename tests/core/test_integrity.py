"""Corruption is detected, never served; a full disk fails cleanly.

- A flipped byte in a cached embedding, a truncated crop, a corrupt index and a corrupt model.safetensors
  are each found by `pipeline verify`, removed by `--fix`, and a re-run gives the same bytes as before;
  reading a corrupt cache entry (or reusing an artifact whose model/index file changed) is a miss,
  recomputed with a warning.
- A write that fails for lack of space (a small tmpfs where the test may mount one, else RLIMIT_FSIZE)
  ends the phase with one message naming the path and the free space; nothing partial is visible; after
  space is freed the re-run completes with the same bytes.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.config import DemoConfig, build_config
from pipeline.core.runner import PhaseContext, execute_phase
from pipeline.core.store import ArtifactStore

PIPELINE = str(Path(sys.executable).with_name("pipeline"))
CHAIN = ("dataset", "audit", "split", "crops", "contexts", "embeddings", "index")
CFG = ["detect.backend=none", "crops.grid_size=128", "crops.target_size=96", "embed.backend=hybrid",
       "embed.allow_random_init=true", "audit.min_side=32",
       "embed_head.adopt=never"]  # the index reads embeddings, crops and contexts only (no embedding_head phase)


def run_chain(work: Path, data: Path, upto: str = "index", force: tuple[str, ...] = (), sets: list[str] = ()) -> dict:
    """The phases of CHAIN up to `upto` through the library runner (store, lineage, item caches)."""
    cfg = build_config(overrides=[*CFG, *sets])
    store = ArtifactStore(work / "artifacts")
    runtime = {"dataset_root": str(data), "workdir": str(work), "item_cache": str(work / ".cache" / "items"),
               "hash_cache": str(work / ".cache" / "hashes.json"), "device": "cpu"}
    ctx = PhaseContext(store=store, progress=False)
    inputs = {"dataset": (), "audit": ("dataset",), "split": ("audit",), "crops": ("split",),
              "contexts": ("crops",), "embeddings": ("crops", "contexts"), "index": ("embeddings", "crops", "contexts")}
    out = {}
    for name in CHAIN[: CHAIN.index(upto) + 1]:
        out[name] = execute_phase(name, cfg, {k: out[k] for k in inputs[name]}, ctx, options={"format": "labelme"},
                                  runtime=runtime, force=name in force)
    return out


def listing(store: ArtifactStore, result) -> list:
    return store.read_lineage(result.phase, result.artifact_id)["outputs"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from pipeline.demo.generator import generate_demo_data

    base = tmp_path_factory.mktemp("integrity")
    generate_demo_data(base / "data", DemoConfig(n_images=20, seed=3, width=192, height=144, bad_examples=False),
                       progress=False)
    return base / "data"


def _flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0xFF
    os.unlink(path)  # a new inode: a hard-linked twin keeps its bytes
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_planted_corruptions_are_found_fixed_and_recomputed_to_the_same_bytes(small, tmp_path, caplog):
    from pipeline.registry.verify import verify
    from training_fixtures import colour_images, tiny_model_dir

    work = tmp_path / "work"
    first = run_chain(work, small)
    store = ArtifactStore(work / "artifacts")
    before = {name: listing(store, r) for name, r in first.items()}
    assert verify(work, store).findings == []

    items = work / ".cache" / "items"
    vector = sorted((items / "embeddings").rglob("*.npy"))[0]
    _flip(vector)  # a flipped byte in a cached embedding
    crop = sorted((items / "crops").rglob("*.jpg"))[0]
    with open(crop, "r+b") as fh:  # a truncated crop: the cache entry and the artifact share the file
        fh.truncate(100)
    index = Path(first["index"].path) / "index.faiss"
    _flip(index)
    # a model artifact (a committed classifier dir) with a corrupt model.safetensors
    model_dir = tiny_model_dir(tmp_path / "m", colour_images(tmp_path / "imgs", 4, seed=0, prefix="a"))
    with store.staging("teacher") as tmp:
        for f in model_dir.iterdir():
            shutil.copyfile(f, tmp / f.name)
        store.commit(tmp, {"phase": "teacher", "artifact_id": "f" * 64, "inputs": [], "params": {}})
    _flip(store.local_path(store.ref("teacher", "f" * 64)) / "model.safetensors", at=200)

    report = verify(work, store)
    found = {(f.kind, Path(f.path).name, f.problem) for f in report.findings}
    assert ("item-cache", vector.name, "corrupt") in found
    assert ("item-cache", crop.parent.name, "corrupt") in found  # the crops entry (a folder)
    assert ("artifact", crop.name, "size") in found  # the crops artifact's hard-linked file
    assert ("artifact", "index.faiss", "hash") in found
    assert ("artifact", "model.safetensors", "hash") in found
    assert not report.ok

    # reading: a corrupt cache entry is a miss (recomputed, with a warning); a changed index is not reused
    with caplog.at_level(logging.WARNING):
        again = run_chain(work, small, force=("embeddings",))
    assert "is corrupt" in caplog.text and "index.faiss hash" in caplog.text
    assert again["embeddings"].metrics["n_embedded"] == 1  # only the corrupt vector was computed again
    assert listing(store, again["embeddings"]) == before["embeddings"]
    assert listing(store, again["index"]) == before["index"]  # rebuilt: the same bytes

    # --fix removes what is still damaged (the truncated crop, its entry, the model); the next run recomputes
    fixed = verify(work, store, do_fix=True)
    assert fixed.ok and {Path(f.path).name for f in fixed.findings} >= {crop.name, crop.parent.name, "model.safetensors"}
    assert not store.is_complete("teacher", "f" * 64) and not store.is_complete("crops", first["crops"].artifact_id)
    third = run_chain(work, small)
    assert {name: listing(store, r) for name, r in third.items()} == before
    assert verify(work, store).findings == []


@pytest.mark.slow
def test_pipeline_verify_command_reports_and_fixes(small, tmp_path):
    work = tmp_path / "work"
    first = run_chain(work, small, upto="split")
    target = Path(first["split"].path) / "split.parquet"
    _flip(target)
    out = subprocess.run([PIPELINE, "verify", "--workdir", str(work), "--no-registry"], capture_output=True, text=True)
    assert out.returncode == 1 and "split.parquet" in out.stdout and "hash" in out.stdout, out.stdout + out.stderr
    out = subprocess.run([PIPELINE, "verify", "--workdir", str(work), "--fix", "--json"], capture_output=True, text=True)
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["ok"] and report["findings"][0]["fixed"]
    assert not target.exists()
    assert listing(ArtifactStore(work / "artifacts"), run_chain(work, small, upto="split")["split"]) == \
        listing(ArtifactStore(work / "artifacts"), first["split"])


# -- a full disk ---------------------------------------------------------------------------------------
def _chain_or_error(work: Path, data: Path, limit: int = 0) -> str | None:
    """Run dataset -> audit -> split in `work` (under a file-size limit if given); the DiskFull message, or None."""
    import resource

    from pipeline.core.integrity import DiskFull

    saved = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit:  # only the soft limit: raised back below (Python ignores SIGXFSZ, so writes fail with EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, saved[1]))
    try:
        run_chain(work, data, upto="split")
    except DiskFull as exc:
        return str(exc)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, saved)
    return None


def _mount_tmpfs(path: Path, size_kb: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def disk_ref(small, tmp_path_factory):
    ref = tmp_path_factory.mktemp("disk-ref")
    assert _chain_or_error(ref, small) is None
    return ref


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
@pytest.mark.slow
def test_a_full_disk_fails_cleanly_and_the_rerun_completes_with_the_same_bytes(small, disk_ref, tmp_path, how):
    store = ArtifactStore(disk_ref / "artifacts")
    audit_dir = Path(store.fs.ls(f"{store.root}/audit", detail=False)[0])
    biggest = max(f.stat().st_size for f in audit_dir.iterdir())
    work = tmp_path / "work"
    if how == "tmpfs":  # a file system with room for the dataset phase and half the audit's largest file
        used = sum(f.stat().st_size for f in disk_ref.rglob("*") if f.is_file() and "audit" not in f.parts
                   and "split" not in f.parts)
        if not _mount_tmpfs(work, (used + biggest // 2) // 1024 + 8):
            pytest.skip("cannot mount a tmpfs here (needs root and mount): the rlimit case covers a full disk")
        try:
            _check_full_disk(_chain_or_error(work, small), work, "no space left on device")
            subprocess.run(["mount", "-o", "remount,size=64m", str(work)], check=True)  # space freed
            assert _chain_or_error(work, small) is None
            _same_artifacts(disk_ref, work)
        finally:
            subprocess.run(["umount", "-l", str(work)])
    else:  # a file-size limit (RLIMIT_FSIZE) below the audit's largest file
        _check_full_disk(_chain_or_error(work, small, biggest // 2), work, "file too large")
        assert _chain_or_error(work, small) is None
        _same_artifacts(disk_ref, work)


def _check_full_disk(msg: str | None, work: Path, what: str) -> None:
    assert msg is not None, "the phase did not fail"
    assert what in msg and str(work) in msg and "bytes free" in msg, msg
    assert "phase audit" in msg and "Nothing of the phase was kept" in msg, msg
    store = ArtifactStore(work / "artifacts")
    assert not store.fs.exists(f"{store.root}/audit")  # nothing partial is visible
    assert not list((work / "artifacts" / ".staging").iterdir())


def _same_artifacts(ref: Path, work: Path) -> None:
    a, b = ArtifactStore(ref / "artifacts"), ArtifactStore(work / "artifacts")
    for name in ("dataset", "audit", "split"):
        aid = Path(a.fs.ls(f"{a.root}/{name}", detail=False)[0]).name
        assert a.read_lineage(name, aid)["outputs"] == b.read_lineage(name, aid)["outputs"], name


@pytest.mark.slow
def test_a_corrupt_registry_copy_is_downloaded_again_never_served(tmp_path, caplog):
    from pipeline.registry import versions as R
    from training_fixtures import colour_images, tiny_model_dir

    client = R.registry_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = tiny_model_dir(tmp_path / "m", colour_images(tmp_path / "imgs", 4, seed=0, prefix="a"))
    mv = R.register_classifier(client, "exp-student", model, "exp")
    local = R.version_model_dir(client, mv, tmp_path / "cache")
    assert R.model_sha256(local) == mv.tags[R.SHA_TAG]
    _flip(local / "model.safetensors", at=300)
    with caplog.at_level(logging.WARNING):
        again = R.version_model_dir(client, mv, tmp_path / "cache")
    assert again == local and R.model_sha256(again) == mv.tags[R.SHA_TAG] and "downloading it again" in caplog.text
    assert [p.name for p in (tmp_path / "cache" / "exp-student").iterdir()] == [str(mv.version)]  # no temp left
