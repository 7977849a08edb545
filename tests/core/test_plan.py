"""`pipeline plan`: hits and recomputes with their reasons, before anything runs."""
import pytest

from pipeline.core.config import PipelineConfig, build_config
from pipeline.core.phases import FLOWS, PHASES, nodes, plan_order
from pipeline.core.plan import plan, render_plan
from pipeline.core.runner import PhaseContext, execute_phase
from pipeline.core.runs import RunRecord
from pipeline.core.store import ArtifactStore


def _data_prep(data, work, cfg):
    store = ArtifactStore(work / "artifacts")
    ctx = PhaseContext(store=store, progress=False)
    runtime = {"dataset_root": str(data), "workdir": str(work), "hash_cache": str(work / "h.json")}
    results = {}
    for node in plan_order(cfg, FLOWS["data-prep"].targets):
        inputs = {k: results[d] for k, d in node.inputs.items()}
        results[node.name] = execute_phase(node.name, cfg, inputs, ctx, options={"format": "labelme"}, runtime=runtime)
    RunRecord(flow_run_id="r1", flow="data-prep", config=cfg.model_dump(mode="json"), started_at="1",
              phases={k: r.model_dump() for k, r in results.items()}).save(work)
    return results


def test_every_declared_input_is_a_phase_and_flows_are_derived():
    graph = nodes(PipelineConfig())
    for node in graph.values():
        assert set(node.inputs.values()) <= set(graph), node.name
    assert [n.name for n in plan_order(PipelineConfig(), ("split",))] == ["dataset", "audit", "split"]
    for spec in PHASES.values():
        assert spec.outputs, f"{spec.name} declares no outputs"
        for key in spec.runtime_keys:
            section, field = key.split(".", 1)
            assert field not in spec.params(PipelineConfig()).get(section, {}), key


def test_runtime_keys_do_not_change_artifact_ids():
    spec = PHASES["embeddings"]
    a = spec.artifact_id(PipelineConfig(), ["x"])
    b = spec.artifact_id(build_config({}, ["embed.batch_size=7", "embed.num_workers=3"]), ["x"])
    c = spec.artifact_id(build_config({}, ["embed.alpha=0.5"]), ["x"])
    assert a == b != c


def test_plan_says_hit_and_why_a_phase_recomputes(tiny_labelme, tmp_path):
    work = tmp_path / "w"
    cfg = PipelineConfig()
    _data_prep(tiny_labelme, work, cfg)
    rows = {r["phase"]: r for r in plan("data-prep", cfg, work, tiny_labelme, "labelme")}
    assert {k: r["status"] for k, r in rows.items()} == {"dataset": "hit", "audit": "hit", "split": "hit"}

    changed = build_config({}, ["split.seed=7"])
    rows = {r["phase"]: r for r in plan("data-prep", changed, work, tiny_labelme, "labelme")}
    assert rows["audit"]["status"] == "hit"
    assert rows["split"]["status"] == "recompute" and "param split.seed: 42 -> 7" in rows["split"]["reason"]

    victim = sorted(p for p in tiny_labelme.rglob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes() + b"\0")
    rows = {r["phase"]: r for r in plan("data-prep", cfg, work, tiny_labelme, "labelme")}
    assert rows["dataset"]["status"] == "recompute" and victim.name in rows["dataset"]["reason"]
    assert "files changed: 1" in rows["dataset"]["reason"]
    assert rows["audit"]["reason"] == "input dataset (dataset) was recomputed"
    assert "nothing was run" in render_plan(list(rows.values()))


@pytest.fixture
def tiny_labelme(tmp_path):
    from pipeline.core.config import DemoConfig
    from pipeline.demo.generator import generate_demo_data

    root = tmp_path / "data"
    generate_demo_data(root, DemoConfig(n_images=20, width=160, height=120, bad_examples=False), progress=False)
    return root
