"""docs/architecture.md stays true: its layer order is `pipeline.LAYERS`, it names every package, and its
phase table lists every declared phase with the package that declares it and its inputs."""
from __future__ import annotations

import re
from pathlib import Path

import pipeline
from pipeline.core import phases as P

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def test_the_layer_order_and_the_packages_are_the_code_s():
    text = DOC.read_text()
    order = re.search(r"^`core` <.*$", text, re.M).group(0)
    assert [s.strip(" `") for s in order.split("<")] == list(pipeline.LAYERS)
    for pkg in pipeline.LAYERS:
        assert f"| `{pkg}` |" in text, pkg


def test_the_phase_table_lists_every_phase_where_it_is_declared():
    P._load_stages()
    table = {m.group(1): (m.group(2), m.group(3).strip()) for m in
             re.finditer(r"^\| `(\w+)` \| (\w+) \| ([^|]+) \| (?:cpu|gpu) \|", DOC.read_text(), re.M)}
    assert set(table) == set(P.PHASES)
    for name, spec in P.PHASES.items():
        stage, inputs = table[name]
        assert spec.run.__module__.split(".")[1] == stage, name
        assert inputs == (", ".join(spec.inputs) or "-"), name
