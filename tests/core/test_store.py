"""Artifact ids, atomic commits, completeness and the lineage walk."""
import json
import os

import pytest

from pipeline.core.hashing import artifact_id, canonical_json
from pipeline.core.lineage import render, walk
from pipeline.core.runner import PhaseContext, snapshot_dataset
from pipeline.core.store import LINEAGE, ArtifactNotFound, ArtifactStore
from pipeline.core.tracking import RecordingTracker


def test_artifact_id_is_canonical():
    a = artifact_id("audit", "1", {"b": 1, "a": [1, 2]}, ["y", "x"])
    b = artifact_id("audit", "1", {"a": [1, 2], "b": 1}, ["x", "y"])
    assert a == b and len(a) == 64
    assert artifact_id("audit", "2", {"b": 1, "a": [1, 2]}, ["x", "y"]) != a
    assert artifact_id("audit", "1", {"b": 2, "a": [1, 2]}, ["x", "y"]) != a
    assert artifact_id("audit", "1", {"b": 1, "a": [1, 2]}, ["x", "z"]) != a
    assert canonical_json({"b": 1, "a": 2}) == '{"a":2,"b":1}'


def _commit(store, phase="p", aid="a" * 64, content="x"):
    with store.staging(phase) as tmp:
        (tmp / "out.txt").write_text(content)
        return store.commit(tmp, {"phase": phase, "artifact_id": aid, "inputs": [], "params": {}})


def test_commit_writes_lineage_last_and_is_complete(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    ref = _commit(store)
    d = tmp_path / "store" / "p" / ("a" * 64)
    rec = json.loads((d / LINEAGE).read_text())
    assert store.is_complete("p", "a" * 64)
    assert rec["outputs"] == [{"path": "out.txt", "sha256": rec["outputs"][0]["sha256"], "size": 1}]
    assert ref.content_hash == rec["content_hash"]
    assert not list((tmp_path / "store" / ".staging").iterdir())  # staging cleaned


def test_commit_that_loses_the_race_to_a_concurrent_run_keeps_the_winner(tmp_path, monkeypatch):
    """Two runs build the same artifact; the other one moves its copy in between this commit's check and
    its move (the rename then fails: the target is a non-empty directory): the winner's artifact stands,
    this commit returns its ref instead of failing the run, and its staging copy is cleaned up."""
    import pipeline.core.store as store_mod

    store = ArtifactStore(tmp_path / "store")
    real_replace, raced = os.replace, []

    def replace(src, dst):
        if not raced and str(dst).endswith("a" * 64):  # the concurrent run commits first
            raced.append(dst)
            winner = tmp_path / "winner"
            winner.mkdir()
            (winner / "out.txt").write_text("x")
            (winner / LINEAGE).write_text(json.dumps({"phase": "p", "artifact_id": "a" * 64, "by": "winner",
                                                         "content_hash": "h"}))
            real_replace(winner, dst)
        return real_replace(src, dst)

    monkeypatch.setattr(store_mod.os, "replace", replace)
    ref = _commit(store)
    assert raced and ref.artifact_id == "a" * 64
    assert store.read_lineage("p", "a" * 64)["by"] == "winner"
    assert not list((tmp_path / "store" / ".staging").iterdir())


def test_incomplete_directory_is_never_reused(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    d = tmp_path / "store" / "p" / ("b" * 64)
    d.mkdir(parents=True)
    (d / "out.txt").write_text("half written")
    assert not store.is_complete("p", "b" * 64)
    with pytest.raises(ArtifactNotFound):
        store.read_lineage("p", "b" * 64)
    ref = _commit(store, aid="b" * 64, content="full")  # replaces the incomplete directory
    assert (d / "out.txt").read_text() == "full" and store.is_complete("p", ref.artifact_id)


def test_failed_build_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(RuntimeError):
        with store.staging("p") as tmp:
            (tmp / "x").write_text("x")
            raise RuntimeError("boom")
    assert not (tmp_path / "store" / "p").exists()
    assert not list((tmp_path / "store" / ".staging").iterdir())


def test_remote_fsspec_store_roundtrip(tmp_path):
    store = ArtifactStore("memory://pipeline-test-store", cache_dir=tmp_path / "cache")
    assert not store.is_local
    ref = _commit(store, aid="c" * 64, content="remote")
    assert store.is_complete("p", "c" * 64)
    local = store.local_path(ref)
    assert (local / "out.txt").read_text() == "remote" and (local / LINEAGE).is_file()


def test_dataset_snapshot_id_follows_content(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jpg").write_bytes(b"aaa")
    (data / "b.jpg").write_bytes(b"bbb")
    store = ArtifactStore(tmp_path / "store")
    rec = RecordingTracker()
    ctx = PhaseContext(store=store, tracker=rec, progress=False)
    first = snapshot_dataset(data, ctx, hash_cache=tmp_path / "hashes.json")
    again = snapshot_dataset(data, ctx, hash_cache=tmp_path / "hashes.json")
    assert again.artifact_id == first.artifact_id and again.cache_hit and not first.cache_hit
    (data / "b.jpg").write_bytes(b"bbX")
    os.utime(data / "b.jpg", ns=(1, 1))  # a new mtime: the stat cache must not hide the change
    changed = snapshot_dataset(data, ctx, hash_cache=tmp_path / "hashes.json")
    assert changed.artifact_id != first.artifact_id
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (copy / name).write_bytes((data / name).read_bytes())
    assert snapshot_dataset(copy, ctx).artifact_id == changed.artifact_id  # content, not location
    assert [p["cache_hit"] for p in rec.phases] == [False, True, False, True]


def test_lineage_walk_reaches_raw_files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jpg").write_bytes(b"aaa")
    store = ArtifactStore(tmp_path / "store")
    ds = snapshot_dataset(data, PhaseContext(store=store, progress=False))
    child_id = artifact_id("child", "1", {}, [ds.artifact_id])
    with store.staging("child") as tmp:
        (tmp / "x").write_text("x")
        store.commit(tmp, {"phase": "child", "artifact_id": child_id, "params": {"k": 1},
                           "inputs": [{"name": "dataset", "phase": "dataset", "artifact_id": ds.artifact_id}]})
    tree = walk(store, child_id[:10])
    assert tree["phase"] == "child" and tree["inputs"][0]["phase"] == "dataset"
    files = tree["inputs"][0]["files"]
    assert files == [{"path": "a.jpg", "size": 3, "sha256": "9834876dcfb05cb167a5c24953eba58c4ac89b1adf57f28f2f9d09af107ee8f0"}]
    text = render(tree)
    assert "a.jpg" in text and "9834876dcfb05cb1" in text
    assert walk(store, str(store.dir_path("child", child_id)))["artifact_id"] == child_id
    with pytest.raises(ArtifactNotFound):
        walk(store, "ffffffffff")


def _tag(pid: int, start: float) -> str:
    from pipeline.core.store import _host_tag

    return f"{_host_tag()}-{pid}-{int(start)}"


def test_staging_dir_is_named_after_its_owner(tmp_path):
    from pipeline.core.store import owner_dead, process_start, staging_owner

    store = ArtifactStore(tmp_path / "store")
    with store.staging("data-prep") as tmp:
        host, pid, start = staging_owner(tmp.name)
        assert tmp.name.startswith("data-prep-") and pid == os.getpid()
        assert start == process_start(os.getpid())
        assert not owner_dead(tmp)


def test_dead_runs_staging_is_removed_live_ones_kept(tmp_path):
    import sys
    import time

    import psutil

    from pipeline.core.store import process_start

    store = ArtifactStore(tmp_path / "store")
    base = store.staging_root
    live = psutil.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    dead = psutil.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    dead_tag = _tag(dead.pid, process_start(dead.pid))
    dead.kill()
    dead.wait(timeout=30)
    try:
        dirs = {
            "dead": base / f"crops-{dead_tag}-abc123",  # a killed run
            "recycled": base / f"crops-{_tag(os.getpid(), 1000)}-abc123",  # our pid, another start
            "live": base / f"crops-{_tag(live.pid, process_start(live.pid))}-abc123",  # another live run
            "other_host": base / f"crops-0badc0de-{os.getpid()}-1000-abc123",
            "legacy": base / "crops-k2j4h5g6",  # no owner in the name
        }
        for d in dirs.values():
            d.mkdir(parents=True)
            (d / "part.bin").write_bytes(b"x" * 10)
        old = time.time() - 7200
        os.utime(dirs["legacy"], (old, old))
        with store.staging("embed") as mine:  # opening a staging dir cleans the dead runs' ones
            left = {p.name for p in base.iterdir()}
            assert left == {dirs[k].name for k in ("live", "other_host", "legacy")} | {mine.name}
        removed = store.clean_staging(min_age_s=3600)  # gc: unowned and older than an hour too
        assert [(p.name, size) for p, size in removed] == [(dirs["legacy"].name, 10)]
        assert {p.name for p in base.iterdir()} == {dirs["live"].name, dirs["other_host"].name}
    finally:
        live.kill()
        live.wait(timeout=30)
    assert store.clean_staging() == [(dirs["live"], 10)]  # its owner is gone now


def test_two_runs_saving_the_hash_cache_at_once_both_succeed(tmp_path, monkeypatch):
    """Runs sharing a work dir save the stat cache at once: another run saves between this save's write and
    its rename (with a shared temporary name the other run moved this one's file away: FileNotFoundError in
    CI); each save has a temporary file of its own, both succeed, the cache holds a whole JSON, no temp left."""
    import pipeline.data.dataset as dataset_mod
    from pipeline.data.dataset import HashCache

    (tmp_path / "a.jpg").write_bytes(b"aaa")
    path = tmp_path / "cache" / "hashes.json"
    mine, other = HashCache(path), HashCache(path)
    mine.sha256(tmp_path / "a.jpg")
    other.entries = {"x": [1, 2, "f" * 64]}
    real, inside = os.replace, []

    def replace(src, dst):
        if not inside:
            inside.append(src)
            other.save()  # the other run saves in between
        return real(src, dst)

    monkeypatch.setattr(dataset_mod.os, "replace", replace)
    mine.save()
    assert inside and json.loads(path.read_text()) == mine.entries  # the later rename wins, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["hashes.json"]
