"""Operations end to end: a real Prefect server, MLflow server and process workers (`pipeline up`),
prefect.yaml deployed (`pipeline deploy`), runs executed by workers, a flow-run retry after an
injected fault, and the scheduler creating runs for the nightly cron deployment."""
import json
import os
import socket
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, demo_dataset):
    from pipeline.app.deploy import deploy
    from pipeline.app.services import down, up

    workdir = tmp_path_factory.mktemp("ops")
    saved = dict(os.environ)
    # the server's scheduler and the workers poll faster than their defaults, so the test is short
    os.environ["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = "5"
    os.environ["PREFECT_WORKER_QUERY_SECONDS"] = "2"
    try:
        state = up(workdir, prefect_port=free_port(), mlflow_port=free_port(), timeout=240, log=lambda *a: None)
        # flow runs start in a project dir that is neither the checkout nor the workers' directory
        project = tmp_path_factory.mktemp("project")
        out = deploy(workdir, demo_dataset, "labelme", timezone="Europe/Madrid", project_dir=project)
        yield {"workdir": workdir, "state": state, "deploy_output": out, "dataset": demo_dataset, "project": project}
    finally:
        stopped = down(workdir)
        os.environ.clear()
        os.environ.update(saved)
        assert stopped is not None


def client_for(stack):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api=stack["state"]["prefect"]["api_url"])


def wait_final(client, flow_run_id, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        fr = client.read_flow_run(flow_run_id)
        if fr.state and fr.state.is_final():
            return fr
        time.sleep(2)
    raise TimeoutError(f"flow run {flow_run_id} not finished after {timeout}s: {fr.state}")


def trigger(client, name, parameters):
    dep = client.read_deployment_by_name(name)
    return client.create_flow_run_from_deployment(dep.id, parameters=parameters)


def test_deploy_registers_all_and_reads_back_schedule_and_form(stack):
    with client_for(stack) as client:
        names = {d.name for d in client.read_deployments()}
        assert {"nightly", "adhoc", "data-prep", "run-phase", "gpu"} <= names
        nightly = client.read_deployment_by_name("factory/nightly")
        assert nightly.work_pool_name == "cpu"  # the flow on cpu; its gpu phases are dispatched to phase/gpu
        assert client.read_deployment_by_name("phase/gpu").work_pool_name == "gpu"
        sched = nightly.schedules[0].schedule
        assert sched.cron == "0 2 * * *" and sched.timezone == "Europe/Madrid"
        adhoc = client.read_deployment_by_name("factory/adhoc")
        assert not adhoc.schedules
        schema = adhoc.parameter_openapi_schema
        assert {"dataset", "format", "workdir", "config"} <= set(schema["properties"])
        # the config form: every section is a validated model in the schema's definitions
        defs = schema.get("definitions") or schema.get("$defs")
        assert {"AuditConfig", "SplitConfig", "PipelineConfig"} <= set(defs)
        assert defs["AuditConfig"]["properties"]["min_side"]["type"] == "integer"
        assert client.read_deployment_by_name("data-prep/data-prep").work_pool_name == "cpu"
        # module entrypoints (imported from the installed package) and the project dir as the pull step
        for name in ("factory/nightly", "factory/adhoc", "data-prep/data-prep", "run-phase/run-phase"):
            dep = client.read_deployment_by_name(name)
            assert dep.entrypoint.startswith("pipeline_flows.") and ".py" not in dep.entrypoint, dep.entrypoint
            assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {
                "directory": str(Path(stack["project"]).resolve())}}]


def test_scheduler_creates_runs_for_the_cron_deployment(stack):
    with client_for(stack) as client:
        dep = client.read_deployment_by_name("factory/nightly")
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        deadline = time.time() + 90
        runs = []
        while time.time() < deadline and not runs:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
            runs = [r for r in runs if r.state and r.state.is_scheduled() and r.auto_scheduled]
            time.sleep(3)
        assert runs, "the scheduler created no run for the nightly cron deployment"
        times = sorted(r.expected_start_time for r in runs)
        assert all(t.astimezone().utcoffset() is not None for t in times)
        for r in runs:  # 02:00 in Madrid
            from zoneinfo import ZoneInfo

            local = r.expected_start_time.astimezone(ZoneInfo("Europe/Madrid"))
            assert (local.hour, local.minute) == (2, 0)
        # a test run near 02:00 in Madrid must not see the nightly factory start on the module's workers
        client.pause_deployment(dep.id)
        for r in client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))):
            if r.state and r.state.is_scheduled():
                client.delete_flow_run(r.id)


def test_worker_runs_data_prep_and_tracks_it(stack):
    workdir = stack["workdir"]
    with client_for(stack) as client:
        fr = trigger(client, "data-prep/data-prep", {})
        fr = wait_final(client, fr.id)
        assert fr.state.is_completed(), fr.state
    record = json.loads((Path(workdir) / "runs" / f"{fr.id}.json").read_text())
    assert set(record["phases"]) == {"dataset", "audit", "split"}
    split_dir = Path(workdir) / "artifacts" / "split" / record["phases"]["split"]["artifact_id"]
    assert (split_dir / "split.parquet").is_file()
    assert json.loads((split_dir / "lineage.json").read_text())["prefect"]["flow_run_id"] == str(fr.id)

    from mlflow.tracking import MlflowClient

    ml = MlflowClient(stack["state"]["mlflow"]["url"])
    exp = ml.get_experiment_by_name("vehicle-damage")
    parents = ml.search_runs([exp.experiment_id], f"tags.`prefect.flow_run_id` = '{fr.id}'")
    assert len(parents) == 1
    children = ml.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert {c.data.tags["pipeline.phase"] for c in children} == {"dataset", "audit", "split"}


def test_retry_after_injected_fault_reuses_finished_phases(stack):
    workdir = Path(stack["workdir"])
    (workdir / ".faults").mkdir(exist_ok=True)
    (workdir / ".faults" / "split").write_text("fail once")
    # a config no earlier run used: the first attempt computes the audit, the retry must reuse it
    params = {"config": {"runtime": {"task_retries": 0}, "audit": {"min_side": 99}}}
    with client_for(stack) as client:
        fr = wait_final(client, trigger(client, "data-prep/data-prep", params).id)
        assert fr.state.is_failed(), fr.state
        from prefect.states import Scheduled

        client.set_flow_run_state(fr.id, Scheduled(message="retried by test"), force=True)
        fr = wait_final(client, fr.id)
        assert fr.state.is_completed(), fr.state
        assert fr.run_count >= 2
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])))
        by_name = {}
        for t in sorted(tasks, key=lambda t: t.start_time or t.expected_start_time):
            by_name.setdefault(t.name.split("-")[0], []).append(t.state.name)
    assert by_name["audit"] == ["Completed", "Cached"], by_name  # the retry did not redo the audit
    assert by_name["split"] == ["Failed", "Completed"], by_name
    record = json.loads((workdir / "runs" / f"{fr.id}.json").read_text())
    assert set(record["phases"]) == {"dataset", "audit", "split"}


def _retrieval_deployment(client, stack) -> str:
    """The retrieval flow (audit/split, crops, embeddings, index, validation: every kind of placement, no
    training) deployed on `cpu` like the factory: the same flow body (`pipeline_flow`), so the same
    placement, at a fraction of the factory's cost."""

    flow_id = client.create_flow_from_name("retrieval")
    client.create_deployment(
        flow_id, "placement", entrypoint="pipeline_flows.retrieval:retrieval", work_pool_name="cpu",
        parameters={"dataset": str(stack["dataset"]), "format": "labelme"},
        pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(stack["project"])}}])
    return "retrieval/placement"


def test_gpu_phases_are_placed_on_the_gpu_worker_and_a_rerun_dispatches_nothing(stack):
    """audit/split run in the flow run on `cpu`; crops and embeddings as child flow runs of phase/gpu on
    `gpu` (the flow-run records say which pool ran what); a second launch is all cache hits. The flow is
    retrieval's, deployed on `cpu` as the factory is (the factory adds the training phases, also `gpu`)."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    from pipeline.core.config import load_config

    from pipeline.core.config import DemoConfig
    from pipeline.demo.generator import generate_demo_data

    demo = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    cfg = load_config(demo, overrides=["detect.backend=none"]).model_dump(mode="json")
    data = Path(stack["workdir"]) / "placement-data"  # 20 small photos: placement, not throughput, is tested
    generate_demo_data(data, DemoConfig(n_images=20, seed=5, width=224, height=160, bad_examples=False), progress=False)
    params = {"config": cfg, "workdir": str(Path(stack["workdir"]) / "placement"), "dataset": str(data)}
    with client_for(stack) as client:
        name = _retrieval_deployment(client, stack)
        phase_dep = client.read_deployment_by_name("phase/gpu")

        def children(of) -> list:
            """The phase/gpu flow runs that are subflows of flow run `of` (any other flow run on the server,
            such as a scheduled nightly one, is not this test's)."""
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[of.id])))
            ids = {t.id for t in tasks}
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[phase_dep.id])))
            return [c for c in runs if c.parent_task_run_id in ids]

        parent = wait_final(client, trigger(client, name, params).id, timeout=600)
        assert parent.state.is_completed(), parent.state
        assert parent.work_pool_name == "cpu"
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[parent.id])))
        assert {"audit", "split"} <= {t.name.split("-")[0] for t in tasks}  # ran in the cpu flow run
        mine = children(parent)  # subflows of the cpu flow run
        by_phase = {c.parameters["phase"]: c for c in mine}
        assert {"crops", "embeddings"} <= set(by_phase), sorted(by_phase)
        assert len(mine) == len(by_phase), sorted(c.parameters["phase"] for c in mine)  # one child per phase
        for c in mine:
            assert c.work_pool_name == "gpu" and c.state.is_completed(), (c.name, c.work_pool_name, c.state)
        again = wait_final(client, trigger(client, name, params).id, timeout=600)
        assert again.state.is_completed(), again.state
        assert children(again) == []  # all cache hits: nothing dispatched to gpu
    record = json.loads((Path(stack["workdir"]) / "placement" / "runs" / f"{again.id}.json").read_text())
    assert record["phases"]["embeddings"]["cache_hit"] and record["phases"]["crops"]["cache_hit"]
