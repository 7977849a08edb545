"""`pipeline gc`: unreferenced artifacts and crash leftovers go, referenced ones and their inputs stay."""
import json
import os

import pytest
from typer.testing import CliRunner

from pipeline.app.cli import app
from pipeline.core import gc
from pipeline.core.hashing import artifact_id
from pipeline.core.store import ArtifactStore, owner_tag, tree_size

HOST = owner_tag().split("-")[0]


def _artifact(store, phase, content, inputs=()):
    aid = artifact_id(phase, "1", {"c": content}, [a for _, a in inputs])
    with store.staging(phase) as tmp:
        (tmp / "out.bin").write_bytes(content.encode() * 100)
        store.commit(tmp, {"phase": phase, "artifact_id": aid, "params": {},
                           "inputs": [{"name": p, "phase": p, "artifact_id": a} for p, a in inputs]})
    return phase, aid


def _record(workdir, run_id, phases):
    runs = workdir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    body = {"flow_run_id": run_id, "flow": "data-prep", "config": {},
            "phases": {p: {"phase": p, "artifact_id": a, "uri": "x", "content_hash": "h"} for p, a in phases}}
    (runs / f"{run_id}.json").write_text(json.dumps(body))


@pytest.fixture
def work(tmp_path):
    """Two runs and one orphan; run 1 records only its split: the audit and dataset it was built from
    are kept through lineage."""
    workdir = tmp_path / "work"
    store = ArtifactStore(workdir / "artifacts")
    ds = _artifact(store, "dataset", "d")
    audit = _artifact(store, "audit", "a", [ds])
    split = _artifact(store, "split", "s", [audit])
    other = _artifact(store, "audit", "a2", [ds])
    orphan = _artifact(store, "split", "orphan", [other])
    _record(workdir, "run1", [split])
    _record(workdir, "run2", [other])
    results = workdir / "prefect-results"
    results.mkdir()
    (results / f"split-{orphan[1]}").write_text("{}")  # the orphan's Prefect result record
    (results / f"split-{split[1]}").write_text("{}")
    return workdir, store, {"ds": ds, "audit": audit, "split": split, "other": other, "orphan": orphan}


def _gc(workdir, *args):
    return CliRunner().invoke(app, ["gc", "--workdir", str(workdir), *args])


def test_dry_run_lists_exactly_the_orphan_and_yes_removes_only_it(work):
    workdir, store, a = work
    res = _gc(workdir, "--min-age-minutes", "0", "--json")
    assert res.exit_code == 0, res.output
    found = json.loads(res.output)
    assert [(g["kind"], g["phase"], g["artifact_id"]) for g in found["garbage"]] == [("artifact", *a["orphan"])]
    lineage = workdir / "artifacts" / "split" / a["orphan"][1] / "lineage.json"
    assert found["garbage"][0]["bytes"] == 600 + lineage.stat().st_size  # out.bin + lineage.json
    assert sorted(map(tuple, found["kept"])) == sorted(a[k] for k in ("ds", "audit", "split", "other"))
    assert found["n_runs"] == 2 and not found["deleted"]
    assert store.is_complete(*a["orphan"])  # a dry run deletes nothing

    res = _gc(workdir, "--min-age-minutes", "0", "--yes")
    assert res.exit_code == 0, res.output
    assert f"freed {found['bytes']} bytes" in res.output
    assert not (workdir / "artifacts/split" / a["orphan"][1]).exists()
    assert not (workdir / "prefect-results" / f"split-{a['orphan'][1]}").exists()
    assert (workdir / "prefect-results" / f"split-{a['split'][1]}").exists()
    assert all(store.is_complete(*a[k]) for k in ("ds", "audit", "split", "other"))
    assert json.loads(_gc(workdir, "--min-age-minutes", "0", "--json").output)["garbage"] == []


def test_young_orphans_are_kept_by_default(work):
    workdir, store, a = work
    found = gc.plan(workdir, store)  # default min age: 15 minutes; the orphan was made just now
    assert found.garbage == [] and found.young == [a["orphan"]]


def test_an_unreadable_run_record_stops_gc(work):
    workdir, store, a = work
    (workdir / "runs" / "broken.json").write_text("{not json")
    res = _gc(workdir, "--min-age-minutes", "0", "--yes")
    assert res.exit_code == 1 and "broken.json" in res.output
    assert store.is_complete(*a["orphan"])


def test_crash_leftovers_are_garbage(work):
    workdir, store, a = work
    dead_staging = store.staging_root / f"split-{HOST}-{os.getpid()}-1000-abc123"  # pid reused since
    dead_staging.mkdir(parents=True)
    (dead_staging / "half.bin").write_bytes(b"x" * 7)
    trash = workdir / "artifacts" / "audit" / ".trash-deadbeef-1234"
    trash.mkdir()
    (trash / "old.bin").write_bytes(b"x" * 5)
    incomplete = workdir / "artifacts" / "audit" / ("f" * 64)
    incomplete.mkdir()
    crops_tmp = workdir / ".cache" / "items" / "crops" / "ab" / ".tmp-abcdef-999999999"  # no such pid
    crops_tmp.mkdir(parents=True)
    emb_tmp = workdir / ".cache" / "items" / "embeddings" / "ab" / "tmpx1.tmp"
    emb_tmp.parent.mkdir(parents=True)
    emb_tmp.write_bytes(b"x" * 3)
    entry = workdir / ".cache" / "items" / "embeddings" / "ab" / "abcd.npy"  # a finished cache entry
    entry.write_bytes(b"x" * 3)
    tmp_dir = workdir / ".cache" / "items" / "crops" / ".tmp"  # the current layout: writers named in the names
    dead_entry = tmp_dir / f"abcd-{HOST}-{os.getpid()}-1000-d"  # a killed writer's half entry
    dead_entry.mkdir(parents=True)
    (dead_entry / "crop.jpg").write_bytes(b"x" * 4)
    live_entry = tmp_dir / f"abce-{owner_tag()}-d"  # this (live) process's: kept
    live_entry.mkdir()
    record_tmp = workdir / "runs" / ".run9.json.tmp"  # a run record a crash left half written
    record_tmp.write_text("{")
    found = gc.plan(workdir, store, min_age_s=0)
    kinds = sorted((g.kind, os.path.basename(g.path), g.bytes) for g in found.garbage)
    orphan_bytes = tree_size(workdir / "artifacts" / "split" / a["orphan"][1])
    assert kinds == sorted([("artifact", a["orphan"][1], orphan_bytes), ("staging", dead_staging.name, 7),
                            ("trash", trash.name, 5), ("incomplete", incomplete.name, 0),
                            ("item-cache-tmp", crops_tmp.name, 0), ("item-cache-tmp", "tmpx1.tmp", 3),
                            ("item-cache-tmp", dead_entry.name, 4), ("run-record-tmp", record_tmp.name, 1)])
    gc.collect(workdir, store, min_age_s=0)
    assert not any(p.exists() for p in (dead_staging, trash, incomplete, crops_tmp, emb_tmp, dead_entry, record_tmp))
    assert entry.exists() and live_entry.exists() and store.is_complete(*a["split"])


def test_gc_refuses_while_a_run_is_live(work):
    workdir, store, a = work
    with gc.run_guard(workdir) as marker:
        assert gc.plan(workdir, store, min_age_s=0).active_runs == [str(marker)]
        with pytest.raises(gc.GcRefused, match="in progress"):
            gc.collect(workdir, store, min_age_s=0)
        assert store.is_complete(*a["orphan"])
    dead = marker.with_name(f"run-{HOST}-{os.getpid()}-1000-abcd1234")  # a killed run's marker
    dead.touch()
    assert gc.collect(workdir, store, min_age_s=0).active_runs == []
    assert not dead.exists() and not store.is_complete(*a["orphan"])
