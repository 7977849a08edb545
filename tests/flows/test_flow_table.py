"""The flow table (`pipeline.core.flow_table.FLOWS`) is the one list of flows: prefect.yaml, the flow
modules in flows/ and the CLI's listings are derived from it, and these tests fail when one of them
disagrees with it. Fast: no flow runs."""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml
from typer.main import get_command

from pipeline.core.flow_table import FLOWS, RUN_PARAMETERS, dag_flows, deployments

ROOT = Path(__file__).resolve().parents[2]


def test_prefect_yaml_is_written_from_the_table():
    from pipeline.app import prefect_yaml
    from pipeline.app.packaged import PREFECT_YAML, packaged_file

    text = prefect_yaml.render()
    assert packaged_file(PREFECT_YAML).read_text() == text, "rewrite it: python -m pipeline.app.prefect_yaml"
    assert (ROOT / "prefect.yaml").read_text() == text
    assert prefect_yaml.main(["--check"]) == 0


def test_prefect_yaml_says_what_the_table_says():
    from pipeline.app.deploy import DEPLOYMENTS
    from pipeline.app.packaged import PREFECT_YAML, packaged_file

    doc = yaml.safe_load(packaged_file(PREFECT_YAML).read_text())
    table = deployments()
    assert [d["name"] for d in doc["deployments"]] == [d.name for d, _ in table] == list(DEPLOYMENTS)
    assert len(set(DEPLOYMENTS)) == len(DEPLOYMENTS), "two deployments share a name"
    for got, (d, flow) in zip(doc["deployments"], table):
        assert got["entrypoint"] == flow.entrypoint
        assert got["description"] == d.description
        assert got["tags"] == list(d.tags)
        assert got["work_pool"] == {"name": d.pool}
        params = got.get("parameters") or {}
        assert set(params) == set(d.parameters) | ({"config"} if d.config_keys else set())
        for p in d.parameters:
            assert params[p] == f"{{{{ $PIPELINE_{p.upper()} }}}}"
        for key in d.config_keys:
            value = params["config"]
            for part in key.split("."):
                value = value[part]
            assert value == f"{{{{ $PIPELINE_{key.rsplit('.', 1)[-1].upper()} }}}}"
        schedules = got.get("schedules") or []
        assert [s["cron"] for s in schedules] == ([d.cron] if d.cron else [])


def test_deployments_pass_what_their_flows_take():
    from pipeline.core.config import PipelineConfig

    for d, flow in deployments():
        fn = _flow_object(flow).fn
        taken = set(inspect.signature(fn).parameters)
        assert set(d.parameters) <= taken, (d.name, d.parameters)
        assert set(d.parameters) <= set(RUN_PARAMETERS)
        if d.config_keys:
            assert "config" in taken
            for key in d.config_keys:  # a key of the config, e.g. data.inbox
                model = PipelineConfig
                for part in key.split("."):
                    model = model.model_fields[part].annotation


def _flow_object(spec):
    return getattr(importlib.import_module(f"pipeline_flows.{spec.module}"), spec.module)


@pytest.mark.parametrize("name", list(FLOWS))
def test_flow_module_is_the_tables(name):
    from prefect import Flow

    spec = FLOWS[name]
    module, attr = spec.entrypoint.split(":")
    flow = getattr(importlib.import_module(module), attr)
    assert isinstance(flow, Flow)
    assert flow.name == name
    assert flow.description == spec.description
    assert flow.fn.__name__ == spec.module


def test_every_flow_in_flows_is_in_the_table():
    from prefect import Flow

    found = set()
    for path in sorted((ROOT / "flows").glob("*.py")):
        mod = importlib.import_module(f"pipeline_flows.{path.stem}")
        found |= {(path.stem, attr) for attr, obj in vars(mod).items() if isinstance(obj, Flow)}
    assert found == {(f.module, f.module) for f in FLOWS.values()}


def test_flow_targets_are_declared_phases():
    from pipeline.core.phases import PHASES, flow_targets

    for name, spec in dag_flows().items():
        assert spec.cli_help, f"flow {name} has no `pipeline run` help"
        assert set(spec.targets) <= set(PHASES), name
        assert flow_targets(name) == spec.targets
    for spec in FLOWS.values():
        if not spec.targets:
            assert not spec.cli_help, f"{spec.name} has its own body: no `pipeline run {spec.name}`"


def test_cli_lists_the_tables_flows():
    from pipeline.app.cli import app

    cli = get_command(app)
    run = cli.commands["run"]
    assert list(run.commands) == list(dag_flows())
    for name, cmd in run.commands.items():
        assert cmd.help == FLOWS[name].cli_help
    assert "run-phase" in cli.commands and "run-phase" in FLOWS
    (flow_arg,) = [p for p in cli.commands["plan"].params if p.name == "flow"]
    assert flow_arg.help == f"Flow to plan: {', '.join(dag_flows())}."
    assert f"({', '.join(d.name for d, _ in deployments())})" in cli.commands["deploy"].help


def test_plan_refuses_a_flow_outside_the_dag(tmp_path):
    from typer.testing import CliRunner

    from pipeline.app.cli import app

    out = CliRunner().invoke(app, ["plan", "phase", "--dataset", str(tmp_path), "--workdir", str(tmp_path / "w")])
    assert out.exit_code == 2
    assert f"flows: {', '.join(dag_flows())}" in out.output


def test_a_description_yaml_cannot_read_plainly_is_quoted():
    from pipeline.app.prefect_yaml import _scalar

    for text in ("plain words only", "a: colon and # hash", "`code` first", "x " * 80):
        lines = _scalar("description", text.strip(), 4)
        assert yaml.safe_load("\n".join(line[4:] for line in lines)) == {"description": text.strip()}
