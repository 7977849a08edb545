"""prefect.yaml, derived from the flow table (`pipeline.core.flow_table.FLOWS`).

`python -m pipeline.app.prefect_yaml` rewrites the packaged pipeline/resources/prefect.yaml (the
checkout's top-level prefect.yaml links to it) from the table; `--check` only says whether it is
up to date (exit 1 if not). tests/flows/test_flow_table.py checks the file against `render()`.
"""
from __future__ import annotations

import json
import sys
import textwrap

import yaml

from pipeline.core.flow_table import RUN_PARAMETERS, Deployment, FlowSpec, deployments

WIDTH = 114

HEADER = """\
# Deployments of the model factory. Register them with `pipeline deploy` (non-interactive);
# it fills the {{ $PIPELINE_* }} variables from its options. Pools: the flows run on `cpu`; each phase
# declared for `gpu` (crops, embeddings, training, export) is dispatched by its flow as a child flow
# run of `phase/gpu` on the `gpu` pool (one job at a time per host: the gpu worker runs --limit 1).
# `pipeline up` creates both as process pools.
#
# This file ships inside the package (pipeline/resources/prefect.yaml; the checkout's top-level
# prefect.yaml is a link to it). Entrypoints are module paths (`pipeline_flows.<module>:<flow>`):
# a worker imports the flows from the installed package, wheel or editable, so no checkout and
# no copy of flows/ is needed where flows run.
#
# Written from the flow table (pipeline/core/flow_table.py) by `python -m pipeline.app.prefect_yaml`:
# change the table and rewrite this file, do not edit it by hand.
name: vehicle-damage-factory
prefect-version: 3.8.8

build: null
push: null

# The flow run's working directory: the project dir of `pipeline deploy` (--project-dir, default
# the directory it runs in), so relative paths resolve as they did there. Code comes from the
# installed package, not from this directory; a container's project dir must exist in its image.
pull:
  - prefect.deployments.steps.set_working_directory:
      directory: "{{ $PIPELINE_PROJECT_DIR }}"

definitions:
  params: &params
"""


def variable(name: str) -> str:
    """The prefect.yaml variable `pipeline deploy` fills for a parameter or config key (data.inbox: INBOX)."""
    return f'"{{{{ $PIPELINE_{name.rsplit(".", 1)[-1].upper()} }}}}"'


def _scalar(key: str, text: str, indent: int) -> list[str]:
    """`key: text`, as a plain scalar wrapped at WIDTH when YAML reads it back unchanged, else quoted."""
    pad = " " * indent
    lines = textwrap.wrap(text, WIDTH, initial_indent=f"{pad}{key}: ", subsequent_indent=pad + "  ",
                          break_long_words=False, break_on_hyphens=False)
    try:
        if yaml.safe_load("\n".join(line[indent:] for line in lines)) == {key: text}:
            return lines
    except yaml.YAMLError:
        pass
    return [f"{pad}{key}: {json.dumps(text)}"]


def _nested(keys: tuple[str, ...], indent: int) -> list[str]:
    """Dotted config keys as nested mappings of their variables."""
    out: list[str] = []
    seen: list[str] = []
    for key in sorted(keys):
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            prefix = ".".join(parts[: depth + 1])
            if prefix not in seen:
                seen.append(prefix)
                out.append(f"{' ' * (indent + 2 * depth)}{part}:")
        out.append(f"{' ' * (indent + 2 * (len(parts) - 1))}{parts[-1]}: {variable(key)}")
    return out


def _parameters(d: Deployment) -> list[str]:
    if not d.parameters and not d.config_keys:
        return []
    if d.parameters == RUN_PARAMETERS and not d.config_keys:
        return ["    parameters: *params"]
    out = ["    parameters:"]
    if d.parameters == RUN_PARAMETERS:
        out.append("      <<: *params")
    else:
        out += [f"      {p}: {variable(p)}" for p in d.parameters]
    if d.config_keys:
        out += ["      config:", *_nested(d.config_keys, 8)]
    return out


def _deployment(d: Deployment, flow: FlowSpec) -> list[str]:
    lines = [f"  - name: {d.name}", *_scalar("description", d.description, 4),
             f"    entrypoint: {flow.entrypoint}", f"    tags: [{', '.join(d.tags)}]", *_parameters(d),
             "    work_pool:", f"      name: {d.pool}"]
    if d.cron:
        lines += ["    schedules:", f'      - cron: "{d.cron}"', f"        timezone: {variable('timezone')}",
                  "        active: true"]
    return lines


def render() -> str:
    """The text of prefect.yaml for the flow table."""
    lines = [f"    {p}: {variable(p)}" for p in RUN_PARAMETERS]
    lines += ["", "deployments:"]
    for i, (d, flow) in enumerate(deployments()):
        lines += ([""] if i else []) + _deployment(d, flow)
    return HEADER + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from pipeline.app.packaged import PREFECT_YAML, packaged_file

    args = sys.argv[1:] if argv is None else argv
    path = packaged_file(PREFECT_YAML)
    text = render()
    if "--check" in args:
        ok = path.read_text() == text
        print(f"{path}: {'up to date' if ok else 'differs from the flow table; rewrite it with python -m pipeline.app.prefect_yaml'}")
        return 0 if ok else 1
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
