"""The library's import layers: every import between packages under src/pipeline (module-level and lazy,
inside functions) goes down `pipeline.LAYERS`, never up, so no two packages import each other; and no
loop of imports between modules of one package."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pipeline

SRC = Path(pipeline.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every `pipeline.*` module path this file imports anywhere (a `from pkg import name` counts
    `pkg.name` when that is a module)."""
    mod = _module_name(path)
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            found.append((base, node.lineno))
            for a in node.names:
                sub = f"{base}.{a.name}"
                if (SRC.parent / sub.replace(".", "/")).with_suffix(".py").is_file():
                    found.append((sub, node.lineno))
    return [(name, line) for name, line in found if name.split(".")[0] == "pipeline"]


def _graph() -> dict[str, list[tuple[str, int]]]:
    return {_module_name(p): _imports(p) for p in sorted(SRC.rglob("*.py"))}


def test_every_package_is_in_a_layer():
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    assert packages - {"resources"} == set(pipeline.LAYERS)


def test_no_import_goes_up_a_layer():
    rank = {name: i for i, name in enumerate(pipeline.LAYERS)}
    upward = []
    for mod, imports in _graph().items():
        parts = mod.split(".")
        if len(parts) < 2 or parts[1] not in rank:
            continue  # the top-level package: a facade over the layers
        for target, line in imports:
            tpkg = target.split(".")[1] if "." in target else None
            if tpkg in rank and rank[tpkg] > rank[parts[1]]:
                upward.append(f"{mod}:{line} imports {target} ({parts[1]} is below {tpkg})")
    assert upward == []


def test_no_import_loop_between_modules():
    graph = _graph()
    edges = defaultdict(set)
    for mod, imports in graph.items():
        for target, _ in imports:
            # a package's __init__ (and the facade `pipeline`) is not a dependency on its modules
            if target in graph and target not in (mod, "pipeline") and not mod.startswith(target + "."):
                edges[mod].add(target)
    loops, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                loops.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert loops == []


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The reader is not blind: a lazy import inside a function and a `from pkg import module` count."""
    f = SRC / "core" / "config.py"
    names = {n for n, _ in _imports(f)}
    assert all(n.startswith("pipeline.core") for n in names)
    lazy = [n for n, _ in _imports(SRC / "registry" / "phases.py")]
    assert "pipeline.registry.promotion" in lazy  # imported inside _run_promotion
    assert "pipeline.training.phases" in lazy  # `from pipeline.training import phases as P`


def test_no_import_loop_in_the_task_layer():
    """tasks/ (`pipeline_tasks`): no module imports, at module level or lazily, one that imports it back
    (context is the bottom; phase alone imports placement and shards; flowrun sits on top)."""
    import pipeline_tasks

    root = Path(pipeline_tasks.__file__).parent
    edges: dict[str, set[str]] = {}
    for path in sorted(root.glob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        edges[f"pipeline_tasks.{path.stem}"] = {n for n in found if (root / f"{n.split('.')[-1]}.py").is_file()
                                                and n.startswith("pipeline_tasks.") and n.count(".") == 1}
    loops = []

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in stack:
                loops.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            else:
                visit(nxt, stack + [nxt])

    for node in sorted(edges):
        visit(node, [node])
    assert loops == []
    assert "pipeline_tasks.phase" in edges["pipeline_tasks.flowrun"] and not edges["pipeline_tasks.context"]
