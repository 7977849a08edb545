"""The artifact store on an S3-compatible server (moto's server mode on 127.0.0.1, through s3fs).

An artifact committed to `s3://...` is uploaded file by file with lineage.json last: a reader (its
own store object) polling while the upload runs never sees a complete artifact before every file is
there, and afterwards downloads exactly the committed bytes.
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip("moto.server", reason="moto[server] is not installed (test extra)")  # the `s3` fixture: conftest
pytest.importorskip("s3fs", reason="s3fs is not installed (test extra)")


def _fresh_store(tmp_path, name):
    import s3fs

    from pipeline.core.store import ArtifactStore

    s3fs.S3FileSystem.clear_instance_cache()  # a separate client, as on another machine
    store = ArtifactStore("s3://factory/artifacts", cache_dir=tmp_path / name)
    assert not store.is_local
    return store


def test_s3_commit_is_atomic_for_readers(s3, tmp_path):
    from pipeline.core.store import ArtifactNotFound

    writer = _fresh_store(tmp_path, "writer")
    reader = _fresh_store(tmp_path, "reader")
    assert reader.fs is not writer.fs
    staged = tmp_path / "staged"
    (staged / "shards").mkdir(parents=True)
    payload = {f"shards/part_{i}.bin": bytes([i]) * (1000 + i) for i in range(4)}
    for rel, data in payload.items():
        (staged / rel).write_bytes(data)
    (staged / "table.json").write_text(json.dumps({"rows": 3}))

    seen: list[tuple[str, bool]] = []
    upload = writer.fs.put_file

    def watched_put(lpath, rpath, *args, **kwargs):
        # before each upload (lineage.json included), another client must not see a complete artifact
        reader.fs.invalidate_cache()
        seen.append((rpath.rsplit("/", 1)[-1], reader.is_complete("embeddings", "abc123")))
        with pytest.raises(ArtifactNotFound):
            reader.read_lineage("embeddings", "abc123")
        return upload(lpath, rpath, *args, **kwargs)

    writer.fs.put_file = watched_put
    ref = writer.commit(staged, {"phase": "embeddings", "artifact_id": "abc123"})
    assert [name for name, _ in seen][-1] == "lineage.json"  # written last
    assert len(seen) == len(payload) + 2 and not any(complete for _, complete in seen)

    reader.fs.invalidate_cache()
    assert reader.is_complete("embeddings", "abc123")
    assert reader.find("abc123") == ("embeddings", "abc123")
    local = reader.local_path(reader.ref("embeddings", "abc123"))
    for rel, data in payload.items():
        assert (local / rel).read_bytes() == data
    assert reader.read_lineage("embeddings", "abc123")["content_hash"] == ref.content_hash
    assert ref.uri == "s3://factory/artifacts/embeddings/abc123"


@pytest.mark.slow
def test_s3_store_runs_a_phase_and_reuses_it(s3, tmp_path, demo_dataset):
    from pipeline.core.config import PipelineConfig
    from pipeline.core.runner import PhaseContext, execute_phase, snapshot_dataset

    store = _fresh_store(tmp_path, "phase")
    ctx = PhaseContext(store=store, progress=False)
    ds = snapshot_dataset(demo_dataset, ctx)
    runtime = {"dataset_root": str(demo_dataset)}
    first = execute_phase("audit", PipelineConfig(), {"dataset": ds}, ctx, options={"format": "labelme"}, runtime=runtime)
    again = execute_phase("audit", PipelineConfig(), {"dataset": ds}, ctx, options={"format": "labelme"}, runtime=runtime)
    assert first.uri.startswith("s3://factory/artifacts/audit/") and not first.cache_hit
    assert again.cache_hit and again.content_hash == first.content_hash
    other = _fresh_store(tmp_path, "other")  # another machine downloads the same bytes
    assert (other.dir_for("audit", first.artifact_id) / "manifest.parquet").read_bytes() == \
        (store.dir_for("audit", first.artifact_id) / "manifest.parquet").read_bytes()
