"""Phase declarations: the one place a phase is described.

A phase is declared once, as a `PhaseSpec` in its stage's `phases.py` (data, retrieval, training):
its name, code version, input artifacts, output files, the config sections its output depends on
(they make the artifact id), the config keys it only reads at run time (batch size, workers,
device, download permission: never in the id), its pool and its report files. The Prefect task
table, the flows' wiring, `pipeline plan` and `pipeline run-phase` are all derived from these
declarations, so adding a phase is one entry plus its module.

Families: a spec with `instances` expands into one phase per configured instance (one regional
teacher per `regional_teachers` entry); an input written `family*` takes every instance of it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.core.config import PipelineConfig
from pipeline.core.flow_table import FLOWS
from pipeline.core.hashing import artifact_id

# The stage modules that declare phases (discovered in this order, like Kedro's pipeline registry).
STAGE_MODULES = ("pipeline.data.phases", "pipeline.retrieval.phases", "pipeline.training.phases",
                 "pipeline.export.phases", "pipeline.registry.phases",
                 "pipeline.study.phases", "pipeline.monitor.phases")

# Flows (`FLOWS`, re-exported here): each names the phases it must produce; everything upstream of them
# is run too. Declared in pipeline.core.flow_table with the rest of what a flow is.


@dataclass
class PhaseRun:
    """Everything a phase's run function gets."""

    inputs: dict[str, Path]  # local directories of the input artifacts, by input name
    cfg: PipelineConfig  # the run's config: a phase reads only its sections and runtime keys
    params: dict[str, Any]  # exactly what went into the artifact id
    out_dir: Path  # staging directory: write the outputs here
    runtime: dict[str, Any]  # dataset_root, workdir, item_cache, checkpoints, device, progress
    store: Any = None  # the ArtifactStore, to resolve artifacts by id
    instance: dict[str, Any] = field(default_factory=dict)  # a family member's own settings
    artifact_id: str = ""  # the id being built (a stable checkpoint folder for resumable phases)
    name: str = ""  # the node name (`teacher_frontal` for a family member)
    steps: list[tuple[str, float, int]] = field(default_factory=list)  # per-step metrics (key, value, step)

    @property
    def progress(self) -> bool:
        return bool(self.runtime.get("progress", True))


RunFn = Callable[[PhaseRun], dict[str, Any]]


@dataclass(frozen=True)
class PhaseSpec:
    name: str
    version: str  # bump when the phase's code changes its output (tests/golden catches a missed bump)
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]  # files the phase must write (checked after the run)
    sections: tuple[str, ...]  # config sections its output depends on
    run: RunFn  # returns metrics (numbers) and info (strings)
    runtime_keys: tuple[str, ...] = ()  # dotted config keys read at run time but not in the id
    extra_params: Callable[[PipelineConfig, dict[str, Any]], dict[str, Any]] | None = None
    reports: tuple[str, ...] = ()  # logged to MLflow; the first .md one is the phase report
    pool: str = "cpu"
    cacheable: bool = True  # False: always recomputed (it depends on state outside the store)
    instances: Callable[[PipelineConfig], list[dict[str, Any]]] | None = None  # a family's members
    member: str = "{spec}_{name}"  # a family member's node name
    # What the id needs from outside the store (the dataset's file hashes, the detector weights found):
    # (cfg, runtime) -> extra options. Such phases are decided by the store, never by Prefect's cache.
    source: Callable[[PipelineConfig, dict[str, Any]], dict[str, Any]] | None = None
    # Inputs that depend on the config or the dataset format (training on crops needs `crops`):
    # (cfg, options) -> input names; `inputs` is then the widest set, for documentation.
    inputs_for: Callable[[PipelineConfig, dict[str, Any]], tuple[str, ...]] | None = None
    description: str = ""
    sharding: Any = None  # a pipeline.core.sharding.Sharding: per-item work split over shards of runtime.shard_items

    def params(self, cfg: PipelineConfig, options: dict[str, Any] | None = None,
               instance: dict[str, Any] | None = None) -> dict[str, Any]:
        """The id-relevant parameters: the declared sections minus the runtime keys, plus extras."""
        out: dict[str, Any] = {}
        for section in self.sections:
            skip = {k.split(".", 1)[1] for k in self.runtime_keys if k.startswith(section + ".")}
            out[section] = getattr(cfg, section).model_dump(mode="json", exclude=skip)
        if self.extra_params is not None:
            out.update(self.extra_params(cfg, options or {}))
        if instance:
            out["instance"] = instance
        return out

    def artifact_id(self, cfg: PipelineConfig, input_ids: list[str], options: dict[str, Any] | None = None,
                    instance: dict[str, Any] | None = None) -> str:
        return artifact_id(self.name, self.version, self.params(cfg, options, instance), input_ids)


@dataclass(frozen=True)
class PhaseNode:
    """A phase as it runs in one flow: a spec, or one member of a family."""

    name: str  # the artifact name: spec name, or `<spec>_<instance name>` for a family member
    spec: PhaseSpec
    inputs: dict[str, str]  # input name -> node name
    instance: dict[str, Any] = field(default_factory=dict)


PHASES: dict[str, PhaseSpec] = {}  # every declared phase by name (filled by the stage modules below)


# Reference resolvers: a stage below the registry (retrieval) may take a config value such as
# `embed.head: registry:best` that only a stage above it can resolve. The upper stage registers a
# resolver for the prefix when its phases are declared; the lower one asks `resolve_reference` and
# never imports it. Resolved once when the phase's id is computed, so the id names what it ran with.
REFERENCE_RESOLVERS: dict[str, Callable[[str, PipelineConfig, dict[str, Any]], str]] = {}


def register_resolver(kind: str, fn: Callable[[str, PipelineConfig, dict[str, Any]], str]) -> None:
    REFERENCE_RESOLVERS[kind] = fn


def resolve_reference(kind: str, ref: str, cfg: PipelineConfig, runtime: dict[str, Any]) -> str:
    if kind not in REFERENCE_RESOLVERS:
        raise KeyError(f"no resolver for {kind!r} references ({ref!r}); declared: {sorted(REFERENCE_RESOLVERS)}")
    return REFERENCE_RESOLVERS[kind](ref, cfg, runtime)


def register(*specs: PhaseSpec) -> None:
    for spec in specs:
        if spec.name in PHASES and PHASES[spec.name] is not spec:
            raise ValueError(f"phase {spec.name!r} is declared twice")
        PHASES[spec.name] = spec


def _members(spec: PhaseSpec, cfg: PipelineConfig) -> list[PhaseNode]:
    if spec.instances is None:
        return [PhaseNode(spec.name, spec, {})]
    return [PhaseNode(spec.member.format(spec=spec.name, name=inst["name"]), spec, {}, dict(inst))
            for inst in spec.instances(cfg)]


def nodes(cfg: PipelineConfig, options: dict[str, Any] | None = None) -> dict[str, PhaseNode]:
    """Every phase of the DAG for this config, families expanded, inputs bound to node names."""
    members = {spec.name: _members(spec, cfg) for spec in PHASES.values()}
    out: dict[str, PhaseNode] = {}
    for spec in PHASES.values():
        wanted = spec.inputs_for(cfg, options or {}) if spec.inputs_for else spec.inputs
        for node in members[spec.name]:
            bound: dict[str, str] = {}
            for inp in wanted:
                if inp.endswith("*"):
                    for m in members.get(inp[:-1], []):
                        bound[m.name] = m.name
                elif inp in members:
                    bound[inp] = members[inp][0].name
                elif not spec.inputs_for:
                    raise ValueError(f"phase {spec.name} reads {inp!r}, which no phase declares")
            out[node.name] = PhaseNode(node.name, spec, bound, node.instance)
    return out


def plan_order(cfg: PipelineConfig, targets: tuple[str, ...] | list[str],
               options: dict[str, Any] | None = None) -> list[PhaseNode]:
    """The nodes needed for `targets`, in topological order (inputs first); rejects cycles."""
    graph = nodes(cfg, options)
    order: list[PhaseNode] = []
    state: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            raise ValueError(f"phase cycle: {' -> '.join((*path, name))}")
        if name not in graph:
            raise ValueError(f"unknown phase {name!r}; phases: {', '.join(graph)}")
        state[name] = "active"
        for dep in graph[name].inputs.values():
            visit(dep, (*path, name))
        state[name] = "done"
        order.append(graph[name])

    for t in targets:
        visit(t, ())
    return order


def flow_targets(flow: str) -> tuple[str, ...]:
    """The phases flow `flow` must produce; phases of stages not installed are left out."""
    return tuple(t for t in FLOWS[flow].targets if t in PHASES)


def _load_stages() -> None:
    for mod in STAGE_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a stage that is not there (yet)
            if exc.name != mod:
                raise


_load_stages()
