"""The embedding study's comparison: one table over every cell's rows, the lift, the best head.

`run_study(cell_dirs, out_dir, k)` reads each cell artifact's rows.json and writes comparison.md
(a row per (backbone, loss, stage); each backbone's frozen baseline first, then its trained rows
with the lift in test mAP@R and precision@k over that baseline), comparison.csv, comparison.png
(test mAP@R per row), UMAP plots of the test embeddings of the best cell and its baseline (when
umap-learn is installed and there are at least 50 test items), and best.json naming the best cell:
the highest val mAP@R among rows of pretrained backbones (random-initialised rows are marked and never
chosen; test figures are reported, never used to choose). `registry.heads.register_head` registers that head in the MLflow registry.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.study.evaluate import UMAP_MIN_POINTS

BASELINE = "baseline"


def _lineage_id(cell_dir: Path) -> str:
    path = Path(cell_dir) / "lineage.json"
    return json.loads(path.read_text())["artifact_id"] if path.is_file() else Path(cell_dir).name


def collect_rows(cell_dirs: dict[str, Path]) -> list[dict[str, Any]]:
    rows = []
    for phase, d in sorted(cell_dirs.items()):
        content = json.loads((Path(d) / "rows.json").read_text())
        for r in content["rows"]:
            rows.append({**r, "cell": phase, "artifact_id": _lineage_id(Path(d)), "kept": r["stage"] == content["kept_stage"]})
    order = {"frozen": 0, "last": 1, "all": 2}
    rows.sort(key=lambda r: (r["backbone"], r["loss"] != BASELINE, r["loss"], order.get(r["stage"], 9)))
    for r in rows:  # lift over the same backbone's frozen baseline
        base = next((b for b in rows if b["backbone"] == r["backbone"] and b["loss"] == BASELINE), None)
        for key in ("test_map_at_r", "val_map_at_r"):
            r[f"lift_{key}"] = float(r[key] - base[key]) if base else float("nan")
    return rows


def pick_best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The kept row with the highest val mAP@R among pretrained backbones (ties: table order)."""
    ok = [r for r in rows if r["kept"] and not r["random_init"] and np.isfinite(r["val_map_at_r"])]
    return max(ok, key=lambda r: (r["val_map_at_r"], -rows.index(r))) if ok else None


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _ci(r: dict[str, Any], key: str) -> str:
    """'0.817 [0.750, 0.880]' when the row carries the figure's interval (older rows: the value alone)."""
    v, lo, hi = r.get(key, float("nan")), r.get(f"{key}_lo"), r.get(f"{key}_hi")
    return _fmt(v) if lo is None or hi is None else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _queries(r: dict[str, Any], split: str) -> str:
    n, photos = r.get(f"{split}_n_queries", r.get(f"{split}_n")), r.get(f"{split}_n_photos")
    return "-" if n is None else f"{int(n)}" + (f" ({int(photos)})" if photos is not None else "")


def _table(rows: list[dict[str, Any]], k: int, best: dict[str, Any] | None) -> list[str]:
    cols = ("backbone", "loss", "stage", "val_map_at_r", "test_queries", "test_map_at_r", "lift_test_map_at_r",
            f"test_precision_at_{k}", f"test_recall_at_{k}", "test_coverage_damaged", "test_silhouette",
            "test_anisotropy", "test_cos_euclid_agreement")
    head = ["backbone", "loss", "stage", "val mAP@R", "test queries (photos)", "test mAP@R", "lift (test mAP@R)",
            f"test P@{k}", f"test R@{k}", f"damaged->damaged@{k}", "silhouette", "anisotropy", "cos/euclid top-k"]
    with_ci = {"val_map_at_r", "test_map_at_r", f"test_precision_at_{k}", "test_coverage_damaged"}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [("-" if r["loss"] == BASELINE else f"{r[c]:+.3f}") if c == "lift_test_map_at_r" else
                 _queries(r, "test") if c == "test_queries" else _ci(r, c) if c in with_ci else
                 _fmt(r.get(c, float("nan"))) for c in cols]
        if r["random_init"]:
            cells[0] += " (random init)"
        if best is not None and r is best:
            cells[2] += " **best**"
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def chance_map_at_r(labels: np.ndarray) -> float:
    """Expected mAP@R of a uniformly random ranking (each query against the other N-1 items; same-photo
    exclusion ignored; queries without a relevant item skipped, as the evaluation does): per query with R relevant of M = N-1, p = R/M, q = (R-1)/(M-1),
    E[AP@R] = p * (q + (1 - q) * H_R / R); the mean over queries."""
    labels = np.asarray(labels)
    m = len(labels) - 1
    if m < 2:
        return float("nan")
    _, counts = np.unique(labels, return_counts=True)
    total, queries = 0.0, 0
    for n in counts:
        r = n - 1
        if r >= 1:
            p, q = r / m, (r - 1) / (m - 1)
            total += n * p * (q + (1 - q) * float(np.sum(1.0 / np.arange(1, r + 1))) / r)
            queries += n
    return total / queries if queries else float("nan")


def _chance_line(rows: list[dict[str, Any]], cell_dirs: dict[str, Path]) -> list[str]:
    out = []
    for r in rows:
        path = Path(cell_dirs[r["cell"]]) / "test_labels.npy"
        if r["loss"] == BASELINE and path.is_file():
            y = np.load(path, allow_pickle=False)
            out.append(f"Chance (random ranking) test mAP@R for {r['backbone']}'s items: "
                       f"{chance_map_at_r(y):.3f} ({len(y)} test items, {len(np.unique(y))} classes).")
    return [" ".join(out), ""] if out else []


def _bar_plot(rows: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6, 0.7 * len(rows)), 4))
    ax = fig.add_subplot()
    names = [f"{r['backbone'][:14]}\n{r['loss']}/{r['stage']}" for r in rows]
    ax.bar(range(len(rows)), [r["test_map_at_r"] for r in rows],
           color=["grey" if r["loss"] == BASELINE else "tab:blue" for r in rows])
    ax.set_xticks(range(len(rows)), names, fontsize=6)
    ax.set_ylabel("test mAP@R")
    ax.set_title("Embedding study: test mAP@R per (backbone, loss, stage)")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})


def _umaps(rows: list[dict[str, Any]], cell_dirs: dict[str, Path], best: dict[str, Any] | None, out_dir: Path) -> list[str]:
    from pipeline.study.evaluate import umap_plot

    if best is None:
        return []
    base = next((r for r in rows if r["backbone"] == best["backbone"] and r["loss"] == BASELINE), None)
    files = []
    for tag, r in (("baseline", base), ("best", best)):
        d = Path(cell_dirs[r["cell"]]) if r else None
        if d is None or not (d / "test_embeddings.npy").is_file():
            continue
        x = np.load(d / "test_embeddings.npy", allow_pickle=False)
        names_ = json.loads((d / "head" / "head.json").read_text())["class_names"]
        y = np.array([names_[i] for i in np.load(d / "test_labels.npy", allow_pickle=False)])
        f = umap_plot(x, y, out_dir / f"umap_{tag}.png")
        files += [f] if f else []
    return files


def run_study(cell_dirs: dict[str, Path], out_dir: Path, k: int = 5) -> dict[str, Any]:
    """Write the comparison (see the module docstring); return per-row metrics and the best cell."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = collect_rows(cell_dirs)
    best = pick_best(rows)
    import pandas as pd

    pd.DataFrame(rows).to_csv(out_dir / "comparison.csv", index=False, float_format="%.6f")
    _bar_plot(rows, out_dir / "comparison.png")
    umaps = _umaps(rows, cell_dirs, best, out_dir)
    best_info = {key: best[key] for key in ("cell", "artifact_id", "backbone", "loss", "stage")} if best else None
    (out_dir / "best.json").write_text(json.dumps(best_info, indent=2, sort_keys=True) + "\n")
    lines = ["# Embedding study", "",
             "Every row is evaluated identically: within the val and the test split each item queries the others, "
             "neighbours from its own photo or group excluded; intervals: 95% bootstrap over photo groups "
             "(seeded). Best = highest **val** mAP@R among pretrained backbones; test figures are held back for "
             "reporting. Lift = test mAP@R minus the same backbone's frozen GAP baseline. damaged->damaged@k: the "
             "share of a damaged query's top k that are damaged (the retrieval validation's coverage; the classes "
             "are unbalanced, so mAP@R alone flatters the clean class).",
             "", *_table(rows, k, best), "", *_chance_line(rows, cell_dirs)]
    if best:
        lines += [f"Best: `{best['cell']}` stage `{best['stage']}` (artifact `{best['artifact_id']}`), val mAP@R "
                  f"{best['val_map_at_r']:.3f}, test mAP@R {best['test_map_at_r']:.3f} "
                  f"({best['lift_test_map_at_r']:+.3f} over its baseline). Serve it with "
                  f"`--set embed.backend=trained --set embed.head={best['artifact_id']}`.", ""]
    worse = [r for r in rows if r["loss"] != BASELINE and r["lift_test_map_at_r"] < 0]
    if worse:
        lines += ["Rows below their frozen baseline on test: " + ", ".join(
            f"{r['loss']}/{r['stage']} ({r['lift_test_map_at_r']:+.3f})" for r in worse) + ".", ""]
    lines += ["![comparison](comparison.png)", "", *[f"![{f}]({f})" for f in umaps]]
    if not umaps:
        lines += [f"(UMAP: not drawn; umap-learn is not installed, or fewer than {UMAP_MIN_POINTS} test items.)"]
    (out_dir / "comparison.md").write_text("\n".join(lines) + "\n")
    metrics: dict[str, Any] = {"n_rows": float(len(rows))}
    for r in rows:
        tag = f"{r['cell'].removeprefix('embedding_cell_')}_{r['stage']}"
        metrics[f"{tag}_test_map_at_r"] = r["test_map_at_r"]
        metrics[f"{tag}_val_map_at_r"] = r["val_map_at_r"]
    if best:
        metrics.update({"best_val_map_at_r": best["val_map_at_r"], "best_test_map_at_r": best["test_map_at_r"],
                        "best_lift_test_map_at_r": best["lift_test_map_at_r"], "best_cell": best["cell"],
                        "best_artifact_id": best["artifact_id"]})
    return metrics
