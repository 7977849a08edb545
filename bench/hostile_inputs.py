"""Audit the hostile-input corpus (tests/hostile_corpus.py) and print what became of every kind.

    .venv/bin/python bench/hostile_inputs.py [--out DIR]

Four dataset roots (labelme, folders, coco, jsonl) with 50+ kinds of hostile input and decoys outside the
roots; every `open`, listing and copy of this process is recorded with an audit hook and the paths sent
to the bounded decode workers are recorded too. Prints one row per kind (files, outcome, as expected?),
the count per outcome, the files opened outside the roots (must be none), and the audit's time per format.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import pyarrow.parquet as pq

    import pipeline.data.audit as audit_mod
    from hostile_corpus import AUDIT, EXTENSIONS, build, outcomes
    from pipeline.core.config import AuditConfig, DataConfig
    from pipeline.data.dataset import snapshot

    base = args.out or Path(tempfile.mkdtemp(prefix="hostile-"))
    roots, outside, kinds = build(base / "corpus")
    opened: list[str] = []
    recording = [False]

    def hook(event: str, a: tuple) -> None:
        if recording[0] and event in ("open", "os.listdir", "os.scandir", "shutil.copyfile") and a:
            if isinstance(a[0], (str, bytes, os.PathLike)):
                opened.append(os.fsdecode(a[0]))

    sys.addaudithook(hook)
    real = audit_mod.run_bounded

    def recorded(fn, items, *rest, **kw):
        opened.extend(str(t[0]) for t in items)
        return real(fn, items, *rest, **kw)

    audit_mod.run_bounded = recorded
    got: dict[str, dict[str, str]] = {}
    seconds = {}
    for fmt, root in roots.items():
        out = base / "audit" / fmt
        out.mkdir(parents=True)
        t0 = time.monotonic()
        recording[0] = True
        snapshot(root)
        audit_mod.run_audit(root, fmt, DataConfig(image_extensions=EXTENSIONS), AuditConfig(**AUDIT), out, progress=False)
        recording[0] = False
        seconds[fmt] = time.monotonic() - t0
        got[fmt] = outcomes(pq.read_table(out / "manifest.parquet").to_pylist(),
                            pq.read_table(out / "quarantine.parquet").to_pylist())
    real_out = os.path.realpath(outside)
    escaped = sorted({p for p in opened if os.path.realpath(p) == real_out or os.path.realpath(p).startswith(real_out + os.sep)})

    print("| kind | format | files | outcome | as expected |")
    print("|---|---|---:|---|---|")
    tally: Counter[str] = Counter()
    wrong = 0
    for k in kinds:
        seen = [got[k.fmt].get(p, "(unaccounted)") for p in k.expect]
        ok = seen == list(k.expect.values())
        wrong += not ok
        tally.update(seen)
        print(f"| {k.name} | {k.fmt} | {len(k.expect)} | {', '.join(sorted(set(seen)))} | {'yes' if ok else '**no**'} |")
    print("\n| outcome | files |\n|---|---:|")
    for outcome, n in sorted(tally.items(), key=lambda t: (-t[1], t[0])):
        print(f"| {outcome} | {n} |")
    print(f"\n{len(kinds)} kinds, {sum(tally.values())} files: {len(kinds) - wrong} as expected, "
          f"{tally['(unaccounted)']} unaccounted; opened outside the roots: {len(escaped)} {escaped[:5]}")
    print("audit seconds per format: " + ", ".join(f"{f} {s:.1f}" for f, s in seconds.items()))
    return 0 if not wrong and not escaped else 1


if __name__ == "__main__":
    sys.exit(main())
