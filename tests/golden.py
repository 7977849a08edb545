"""Golden output fingerprints of every retrieval-side phase on a tiny fixed input.

A fingerprint holds exact hashes of everything that is not a float (ids, paths, labels, text) and,
for floats, a few summary numbers compared with a tolerance, so it holds across CPU types. When
code changes a phase's output without bumping that phase's version, tests/test_golden.py fails and
says which version to bump. Regenerate the fixture with one command:

    .venv/bin/python tests/golden.py --update
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

FIXTURE = Path(__file__).parent / "golden" / "phase_outputs.json"
PHASES = ("dataset", "audit", "split", "crops", "contexts", "embeddings", "embedding_head", "index", "validation")
RTOL, ATOL = 1e-3, 1e-4


def golden_config():
    from pipeline.core.config import build_config

    return build_config({
        "detect": {"backend": "none"},
        "crops": {"grid_size": 96},
        "embed": {"backend": "hybrid"},
        "index": {"kind": "flat", "self_check_sample": 20},
        "tracking": {"enabled": False},
    })


def _approx(values: np.ndarray) -> list[float]:
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return [0.0]
    v = v[np.isfinite(v)]
    return [float(v.sum()), float(np.abs(v).sum()), float((v ** 2).sum()), *map(float, v[:4])]


def _exact(obj: Any) -> str:
    from pipeline.core.hashing import canonical_json, sha256_bytes

    return sha256_bytes(canonical_json(obj).encode())[:16]


def _split_floats(obj: Any, floats: list[float]) -> Any:
    """The object with every float replaced by a marker, the floats collected in order."""
    if isinstance(obj, float):
        floats.append(obj)
        return "<f>"
    if isinstance(obj, dict):
        return {k: _split_floats(v, floats) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_split_floats(v, floats) for v in obj]
    return obj


def fingerprint_file(path: Path) -> dict[str, Any]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        floats: list[float] = []
        shape = _split_floats(rows, floats)
        return {"rows": len(rows), "exact": _exact(shape), "approx": _approx(np.array(floats))}
    if path.suffix == ".json":
        floats = []
        shape = _split_floats(json.loads(path.read_text()), floats)
        return {"exact": _exact(shape), "approx": _approx(np.array(floats))}
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        return {"shape": list(arr.shape), "approx": _approx(arr)}
    if path.suffix == ".faiss":
        import faiss

        index = faiss.read_index(str(path))
        return {"exact": _exact({"ntotal": int(index.ntotal), "d": int(index.d), "type": type(index).__name__})}
    from pipeline.core.hashing import sha256_file

    return {"exact": sha256_file(path)[:16]}


def fingerprint_artifact(directory: Path, outputs: tuple[str, ...]) -> dict[str, Any]:
    files = [directory / o for o in outputs if not o.endswith(".md")]
    files += sorted(p for p in directory.glob("shards/*.npy"))  # embedding shards
    return {p.relative_to(directory).as_posix(): fingerprint_file(p) for p in files}


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The files whose fingerprints differ (exact parts equal, float summaries within tolerance)."""
    diffs = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a is None or b is None:
            diffs.append(f"{name}: {'added' if a is None else 'removed'}")
            continue
        for key in sorted(set(a) | set(b)):
            if key == "approx":
                if len(a.get(key, [])) != len(b.get(key, [])) or not np.allclose(a[key], b[key], rtol=RTOL, atol=ATOL):
                    diffs.append(f"{name}: float values differ")
            elif a.get(key) != b.get(key):
                diffs.append(f"{name}: {key} differs")
    return diffs


def make_dataset(root: Path) -> Path:
    from pipeline.core.config import DemoConfig
    from pipeline.demo.generator import generate_demo_data

    generate_demo_data(root, DemoConfig(n_images=20, seed=3, width=256, height=192, bad_examples=False))
    return root


def run_phases(data: Path, work: Path) -> dict[str, dict[str, Any]]:
    """Run every retrieval-side phase as plain library calls; {phase: {version, outputs}}."""
    from pipeline.core.phases import PHASES as SPECS
    from pipeline.core.runner import PhaseContext, execute_phase
    from pipeline.core.store import ArtifactStore

    cfg = golden_config()
    store = ArtifactStore(work / "artifacts")
    ctx = PhaseContext(store=store, progress=False)
    runtime = {"dataset_root": str(data), "workdir": str(work), "device": "cpu"}
    results: dict[str, Any] = {}
    out = {}
    for name in PHASES:
        spec = SPECS[name]
        wanted = spec.inputs_for(cfg, {"format": "labelme"}) if spec.inputs_for else spec.inputs
        inputs = {k: results[k] for k in wanted}
        results[name] = execute_phase(name, cfg, inputs, ctx, options={"format": "labelme"}, runtime=runtime)
        out[name] = {"version": spec.version,
                     "outputs": fingerprint_artifact(Path(results[name].path), spec.outputs)}
    return out


def main(argv: list[str]) -> int:
    import tempfile

    if "--update" not in argv:
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data")
        golden = run_phases(data, Path(tmp) / "work")
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    raise SystemExit(main(sys.argv[1:]))
