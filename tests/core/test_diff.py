"""`pipeline diff`: two data-prep runs with one image and one param changed; the diff names exactly
that image, that param, and the artifacts downstream of them (and nothing else)."""
import json
import shutil

import pytest
from typer.testing import CliRunner

from pipeline.core.config import build_config
from pipeline.core.diff import RunNotFound, diff_runs, file_changes, find_run, key_changes
from pipeline.core.runs import RunRecord
from pipeline.core.store import ArtifactStore


def test_key_and_file_changes():
    assert key_changes({"a": {"x": 1, "y": 2}}, {"a": {"x": 1, "y": 3, "z": 0}}) == [
        {"key": "a.y", "a": 2, "b": 3}, {"key": "a.z", "a": None, "b": 0}]
    old = [{"path": "p", "sha256": "1"}, {"path": "q", "sha256": "2"}, {"path": "r", "sha256": "3"}]
    new = [{"path": "p", "sha256": "1"}, {"path": "q", "sha256": "9"}, {"path": "s", "sha256": "4"}]
    assert file_changes(old, new) == {"added": ["s"], "removed": ["r"], "changed": ["q"]}


def _run(data, workdir, overrides=()):
    from pipeline_flows.data_prep import data_prep

    return data_prep(dataset=str(data), format="labelme", workdir=str(workdir),
                     config=build_config(overrides=list(overrides)))


@pytest.mark.slow
def test_diff_names_the_changed_image_param_and_downstream(prefect_server, demo_dataset, tmp_path):
    from PIL import Image

    from pipeline.app.cli import app

    data, work = tmp_path / "data", tmp_path / "w"
    shutil.copytree(demo_dataset, data)
    _run(data, work)
    first = RunRecord.all(work)[0]

    photo = sorted(data.glob("zona1_ok_*_imageDANO_original.jpg"))[0]
    with Image.open(photo) as im:
        im.convert("RGB").rotate(180).save(photo, quality=90)  # new bytes, same name, still a valid photo
    _run(data, work, ["split.seed=7"])
    records = RunRecord.all(work)
    assert len(records) == 2
    second = records[0]
    store = ArtifactStore(work / "artifacts")

    d = diff_runs(work, first.flow_run_id, second.flow_run_id, store)
    assert d["a"]["flow_run_id"] == first.flow_run_id and d["b"]["flow_run_id"] == second.flow_run_id
    assert d["dataset"]["files"] == {"added": [], "removed": [], "changed": [photo.name]}
    assert [c["key"] for c in d["config"]] == ["split.seed"]
    assert (d["config"][0]["a"], d["config"][0]["b"]) == (42, 7)
    rows = {r["phase"]: r for r in d["phases"]}
    assert set(rows) == {"dataset", "audit", "split"}
    assert all(r["status"] == "recomputed" for r in rows.values())
    assert rows["dataset"]["reasons"] == [f"files changed: 1 ({photo.name})"]
    assert rows["audit"]["reasons"] == ["input dataset (dataset) was recomputed"]  # no audit param changed
    assert rows["split"]["reasons"] == ["param split.seed: 42 -> 7", "input audit (audit) was recomputed"]
    assert all(not m["metric"].endswith("seconds") for r in rows.values() for m in r["metrics"])

    # a third run back on the first run's data and config: all cache hits, nothing differs from the first
    shutil.copy2(demo_dataset / photo.name, photo)
    _run(data, work)
    third = RunRecord.all(work)[0]
    same = diff_runs(work, first.flow_run_id, "latest", store)
    assert same["b"]["flow_run_id"] == third.flow_run_id
    assert same["config"] == [] and same["dataset"]["files"] == {"added": [], "removed": [], "changed": []}
    assert {r["status"] for r in same["phases"]} == {"same"}
    assert all(r["metrics"] == [] for r in same["phases"])

    # the command: --json, the text form, and a clear error for an unknown run
    runner = CliRunner()
    res = runner.invoke(app, ["diff", first.flow_run_id[:8], second.flow_run_id, "--workdir", str(work), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dataset"]["files"]["changed"] == [photo.name]
    res = runner.invoke(app, ["diff", "previous", "latest", "--workdir", str(work)])
    assert res.exit_code == 0, res.output
    assert "because param split.seed: 7 -> 42" in res.stdout and f"~ {photo.name}" in res.stdout
    assert "3 of 3 phase(s) recomputed." in res.stdout
    res = runner.invoke(app, ["diff", "nosuchrun", "latest", "--workdir", str(work)])
    assert res.exit_code == 1 and "no run matches 'nosuchrun'" in res.output
    with pytest.raises(RunNotFound):
        find_run(tmp_path / "empty", "latest")
