"""The data_prep flow under a real Prefect server: caching by artifact id, lineage, tracking."""
import dataclasses
import shutil

import pyarrow.parquet as pq
import pytest

from pipeline.core.config import PipelineConfig, build_config
from pipeline.core.lineage import walk
from pipeline.core.phases import PHASES
from pipeline.core.store import ArtifactStore

pytestmark = pytest.mark.slow


@pytest.fixture
def counting(monkeypatch):
    """Counts how often each phase's run function really runs."""
    calls = {"audit": 0, "split": 0}
    for name in calls:
        spec = PHASES[name]

        def wrapped(*a, _run=spec.run, _name=name, **k):
            calls[_name] += 1
            return _run(*a, **k)

        monkeypatch.setitem(PHASES, name, dataclasses.replace(spec, run=wrapped))
    return calls


def run_flow(dataset, workdir, cfg=None):
    from pipeline_flows.data_prep import data_prep

    return data_prep(dataset=str(dataset), format="labelme", workdir=str(workdir), config=cfg or PipelineConfig())


def test_second_run_is_all_cache_hits_and_does_no_work(prefect_server, demo_dataset, tmp_path, counting):
    first = run_flow(demo_dataset, tmp_path / "w")
    assert {k: v["cache_hit"] for k, v in first["phases"].items()} == {"dataset": False, "audit": False, "split": False}
    assert counting == {"audit": 1, "split": 1}
    second = run_flow(demo_dataset, tmp_path / "w")
    assert all(p["cache_hit"] for p in second["phases"].values())
    assert counting == {"audit": 1, "split": 1}  # no phase body ran again
    for name in ("dataset", "audit", "split"):
        assert second["phases"][name]["artifact_id"] == first["phases"][name]["artifact_id"]
    assert second["phases"]["audit"]["metrics"]["n_images_ok"] > 0  # metrics come back with a cache hit

    # MLflow: one parent per flow run, one child per phase carrying the artifact id and the cache flag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(first["tracking_uri"])
    exp = client.get_experiment_by_name("vehicle-damage")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{second['mlflow_run_id']}'")
    assert {r.data.tags["pipeline.phase"] for r in children} == {"dataset", "audit", "split"}
    assert all(r.data.tags["pipeline.cache_hit"] == "true" for r in children)
    audit_run = client.get_run(first["phases"]["audit"]["mlflow_run_id"])
    assert audit_run.data.tags["pipeline.artifact_id"] == first["phases"]["audit"]["artifact_id"]
    assert audit_run.data.params["audit.min_side"] == "100"
    assert audit_run.inputs.dataset_inputs, "the manifest is logged with log_input"
    parent = client.get_run(first["mlflow_run_id"])
    assert parent.data.tags["prefect.flow_run_id"] == first["flow_run_id"]


@pytest.fixture(scope="module")
def two_fresh(prefect_server, demo_dataset, tmp_path_factory) -> dict:
    """The flow on the demo data in two fresh work dirs `a` and `b` (read-only for its users)."""
    root = tmp_path_factory.mktemp("data-prep")
    return {"a": run_flow(demo_dataset, root / "a"), "b": run_flow(demo_dataset, root / "b"), "root": root}


def test_two_fresh_workdirs_give_identical_ids_and_bytes(two_fresh):
    a, b = two_fresh["a"], two_fresh["b"]
    for name in ("dataset", "audit", "split"):
        assert a["phases"][name]["artifact_id"] == b["phases"][name]["artifact_id"]
    for phase, files in (("audit", ("manifest.parquet", "quarantine.parquet")), ("split", ("split.parquet",))):
        for f in files:
            pa_, pb = a["phases"][phase]["path"], b["phases"][phase]["path"]
            assert pa_ != pb
            assert open(f"{pa_}/{f}", "rb").read() == open(f"{pb}/{f}", "rb").read(), f


def test_one_changed_image_changes_only_what_concerns_it(prefect_server, demo_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_dataset, data)
    before = run_flow(data, tmp_path / "w")
    split_before = pq.read_table(f"{before['phases']['split']['path']}/split.parquet").to_pandas()
    victim = split_before.sort_values("path").iloc[len(split_before) // 2]
    from PIL import Image

    img = Image.open(data / victim["path"]).convert("RGB")
    img.putpixel((0, 0), (255, 0, 255))
    img.save(data / victim["path"], quality=95)

    after = run_flow(data, tmp_path / "w")
    for name in ("dataset", "audit", "split"):
        assert after["phases"][name]["artifact_id"] != before["phases"][name]["artifact_id"], name
        assert not after["phases"][name]["cache_hit"]
    split_after = pq.read_table(f"{after['phases']['split']['path']}/split.parquet").to_pandas()
    b = split_before.set_index("path")
    a = split_after.set_index("path")
    assert list(a.index) == list(b.index)
    changed = [p for p in a.index if a.loc[p, "item_id"] != b.loc[p, "item_id"]]
    assert changed == [victim["path"]]
    assert (a["split"] == b["split"]).all(), "no other image moved split"


def test_parameter_change_recomputes_only_downstream(prefect_server, demo_dataset, tmp_path, counting):
    base = run_flow(demo_dataset, tmp_path / "w")
    other = run_flow(demo_dataset, tmp_path / "w", build_config(overrides=["split.seed=7"]))
    assert other["phases"]["audit"]["cache_hit"] and other["phases"]["audit"]["artifact_id"] == base["phases"]["audit"]["artifact_id"]
    assert not other["phases"]["split"]["cache_hit"]
    assert other["phases"]["split"]["artifact_id"] != base["phases"]["split"]["artifact_id"]
    assert counting == {"audit": 1, "split": 2}


def test_deleted_artifact_is_recomputed_not_trusted(prefect_server, demo_dataset, tmp_path):
    first = run_flow(demo_dataset, tmp_path / "w")
    shutil.rmtree(first["phases"]["split"]["path"])
    again = run_flow(demo_dataset, tmp_path / "w")
    assert again["phases"]["audit"]["cache_hit"]
    assert not again["phases"]["split"]["cache_hit"]
    assert again["phases"]["split"]["artifact_id"] == first["phases"]["split"]["artifact_id"]
    assert (tmp_path / "w" / "artifacts" / "split" / first["phases"]["split"]["artifact_id"] / "split.parquet").is_file()


def test_run_after_failure_skips_finished_phases(prefect_server, demo_dataset, tmp_path, monkeypatch, counting):
    spec = PHASES["split"]

    def broken(*a, **k):
        raise ValueError("injected fault")

    monkeypatch.setitem(PHASES, "split", dataclasses.replace(spec, run=broken))
    with pytest.raises(Exception, match="injected fault"):
        run_flow(demo_dataset, tmp_path / "w")
    monkeypatch.setitem(PHASES, "split", spec)
    rerun = run_flow(demo_dataset, tmp_path / "w")
    assert rerun["phases"]["audit"]["cache_hit"] and not rerun["phases"]["split"]["cache_hit"]
    assert counting["audit"] == 1


def test_lineage_walks_from_split_to_raw_files(two_fresh, demo_dataset):
    out = two_fresh["a"]
    store = ArtifactStore(two_fresh["root"] / "a" / "artifacts")
    tree = walk(store, out["phases"]["split"]["artifact_id"])
    assert [tree["phase"], tree["inputs"][0]["phase"], tree["inputs"][0]["inputs"][0]["phase"]] == ["split", "audit", "dataset"]
    ds = tree["inputs"][0]["inputs"][0]
    listed = {f["path"] for f in ds["files"]}
    on_disk = {p.relative_to(demo_dataset).as_posix() for p in demo_dataset.rglob("*") if p.is_file()}
    assert listed == on_disk
    assert tree["prefect"]["flow_run_id"] == out["flow_run_id"]
    assert tree["mlflow_run_id"] == out["phases"]["split"]["mlflow_run_id"]
