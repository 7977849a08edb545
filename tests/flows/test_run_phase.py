"""`run_phase`: re-run one phase of a finished flow run with the inputs that run recorded."""
import json

import pytest

from pipeline.core.config import PipelineConfig
from pipeline.core.store import ArtifactStore

pytestmark = pytest.mark.slow


def test_run_phase_reruns_with_recorded_inputs(prefect_server, demo_dataset, tmp_path):
    from pipeline_flows.data_prep import data_prep
    from pipeline_flows.run_phase import run_phase

    w = tmp_path / "w"
    first = data_prep(dataset=str(demo_dataset), format="labelme", workdir=str(w),
                      config=PipelineConfig.model_validate({"split": {"seed": 5}}))
    old = json.loads((w / "artifacts" / "split" / first["phases"]["split"]["artifact_id"] / "lineage.json").read_text())

    cached = run_phase(phase="split", from_run=first["flow_run_id"], workdir=str(w))
    assert cached["phases"]["split"]["cache_hit"]
    assert cached["phases"]["split"]["artifact_id"] == first["phases"]["split"]["artifact_id"]

    forced = run_phase(phase="split", from_run=first["flow_run_id"], workdir=str(w), force=True)
    res = forced["phases"]["split"]
    assert not res["cache_hit"]
    assert res["artifact_id"] == first["phases"]["split"]["artifact_id"]  # same inputs + params -> same id
    new = json.loads((w / "artifacts" / "split" / res["artifact_id"] / "lineage.json").read_text())
    assert new["inputs"] == old["inputs"]
    assert new["inputs"][0]["artifact_id"] == first["phases"]["audit"]["artifact_id"]
    assert new["params"]["split"]["seed"] == 5  # the recorded config, not the default
    assert new["prefect"]["flow_run_id"] == forced["flow_run_id"] != first["flow_run_id"]
    assert ArtifactStore(w / "artifacts").is_complete("split", res["artifact_id"])


def test_run_phase_errors_clearly(prefect_server, tmp_path):
    from pipeline_flows.run_phase import run_phase

    with pytest.raises(ValueError, match="no run record"):
        run_phase(phase="split", from_run="00000000-0000-0000-0000-000000000000", workdir=str(tmp_path))
