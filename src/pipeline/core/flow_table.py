"""The flows of the model factory: the one place a flow is listed.

An entry names the flow, the phases it must produce (everything upstream of them is run too; none for
a flow with a body of its own), its description, the help of its `pipeline run` command and its
deployments. Derived from this table (and checked against it by tests/flows/test_flow_table.py):

- the flow modules: flow `data-prep` is `data_prep` in flows/data_prep.py, entrypoint
  `pipeline_flows.data_prep:data_prep` (`FlowSpec.entrypoint`);
- `pipeline.core.phases.flow_targets`, `pipeline plan` and the `pipeline run <flow>` commands;
- prefect.yaml (pipeline/resources/prefect.yaml): written by `python -m pipeline.app.prefect_yaml`.

Plain data: no Prefect here, and nothing heavy to import (the CLI reads it to build its commands).
"""
from __future__ import annotations

from dataclasses import dataclass

# The parameters a deployment can take from `pipeline deploy`'s options ($PIPELINE_<NAME> in prefect.yaml).
RUN_PARAMETERS = ("dataset", "format", "workdir")


@dataclass(frozen=True)
class Deployment:
    """A deployment of a flow in prefect.yaml."""

    name: str
    description: str
    tags: tuple[str, ...]
    pool: str = "cpu"  # the work pool
    parameters: tuple[str, ...] = RUN_PARAMETERS  # flow parameters filled from `pipeline deploy`'s options
    config_keys: tuple[str, ...] = ()  # config keys filled likewise (data.inbox <- $PIPELINE_INBOX)
    cron: str | None = None  # a schedule, in the time zone of `pipeline deploy --timezone`


@dataclass(frozen=True)
class FlowSpec:
    name: str
    description: str  # the Prefect flow's description (the UI's, and prefect.yaml's flow)
    targets: tuple[str, ...] = ()  # the phases it must produce; (): a flow with its own body
    cli_help: str = ""  # the help of `pipeline run <name>` (a flow with targets has the command)
    deployments: tuple[Deployment, ...] = ()

    @property
    def module(self) -> str:
        """The flow's module in flows/ (`pipeline_flows.<module>`), and the flow object's name in it."""
        return self.name.replace("-", "_")

    @property
    def entrypoint(self) -> str:
        return f"pipeline_flows.{self.module}:{self.module}"


_FLOWS = (
    FlowSpec(
        "data-prep", "Audit and split a raw dataset into a clean, split manifest (cached by content).",
        targets=("split",),
        cli_help="Audit and split a dataset (cached: unchanged inputs recompute nothing).",
        deployments=(Deployment("data-prep", "Audit and split only (light, CPU).", tags=("data-prep",)),),
    ),
    FlowSpec(
        "retrieval", "From a raw dataset to a validated, searchable index of vehicle crops.",
        targets=("validation",),
        cli_help="data-prep, crops, contexts, embeddings, FAISS index and validation.",
    ),
    FlowSpec(
        "train", "Train, distil, fine-tune, calibrate and (gated) promote a student on DATASET.",
        targets=("student_no_teacher", "promotion"),
        cli_help="data-prep (and crops) then teachers, distillation, fine-tune, calibration and promotion.",
    ),
    FlowSpec(
        "factory", "Run every phase of the model factory on DATASET (unchanged inputs recompute nothing).",
        targets=("validation", "student_no_teacher", "promotion", "drift", "review"),
        cli_help="Run the whole DAG: retrieval and training (what the nightly deployment runs).",
        deployments=(
            Deployment("nightly", "The whole DAG every night at 02:00; unchanged inputs are cache hits. Its last "
                       "phases compare the run with the previous one (drift) and queue the inbox photos to label "
                       "next (review); each says when it is skipped and why (first run, no inbox).",
                       tags=("nightly",), config_keys=("data.inbox",), cron="0 2 * * *"),
            Deployment("adhoc", "The whole DAG on demand; the UI form shows every config section, validated.",
                       tags=("adhoc",)),
        ),
    ),
    FlowSpec(
        "embedding-study", "Compare backbones and metric-learning losses on the crops; register the best head.",
        targets=("embedding_study",),
        cli_help="Compare backbones x metric-learning losses on the crops; register the best head.",
    ),
    FlowSpec(
        "run-phase", "Re-run PHASE with the inputs and config recorded by flow run FROM_RUN (force: even if cached).",
        deployments=(Deployment("run-phase", "Re-run one phase of an earlier flow run with the inputs it recorded "
                                "(force to ignore the cache).", tags=("run-phase",), parameters=("workdir",)),),
    ),
    FlowSpec(
        "phase", "Run PHASE on the INPUTS artifacts (a `gpu` phase dispatched by its parent flow run).",
        deployments=(Deployment("gpu", "One gpu phase, dispatched by a flow run on `cpu` (phase name, config, "
                                "input artifact ids).", tags=("phase",), pool="gpu", parameters=()),),
    ),
)

# Every flow by name, in the order the CLI lists them.
FLOWS: dict[str, FlowSpec] = {f.name: f for f in _FLOWS}


def dag_flows() -> dict[str, FlowSpec]:
    """The flows that run phases of the DAG (`pipeline run <flow>`, `pipeline plan <flow>`)."""
    return {name: f for name, f in FLOWS.items() if f.targets}


def deployments() -> list[tuple[Deployment, FlowSpec]]:
    """Every deployment with its flow, in prefect.yaml's order."""
    return [(d, f) for f in FLOWS.values() for d in f.deployments]
