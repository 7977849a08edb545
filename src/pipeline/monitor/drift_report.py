"""The drift report's files: drift.json, report.md (the verdict table first), drift.html (the same
table and the plots, one self-contained page beside its PNGs) and the plots themselves.

Plots (matplotlib, Agg): `drift_data.png` (class balance, zones, brightness, quarantine reasons, each
reference against current), `drift_embeddings.png` (both runs' photos in one 2-D PCA projection),
`drift_predictions.png` (confidence histograms, per-class prediction rates).
"""
from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

PLOTS = ("drift_data.png", "drift_embeddings.png", "drift_predictions.png")
REF, CUR = "#4C72B0", "#DD8452"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


def table_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    """The verdict table: per section its verdict (first row of the section), then every check."""
    rows = []
    for section, v in result["sections"].items():
        checks = [c for c in result["checks"] if c["section"] == section]
        if not checks:
            rows.append({"section": section, "verdict": v["verdict"].upper(), "check": "-", "test": "-",
                         "statistic": "-", "rule": "-", "p": "-", "n (ref / cur)": "-",
                         "detail": "; ".join(v["skipped"]) or "-"})
        for i, c in enumerate(checks):
            verdict = v["verdict"].upper() if i == 0 else ""
            rows.append({
                "section": section if i == 0 else "", "verdict": verdict,
                "check": c["check"] + (" **DRIFT**" if c["drift"] else ""),
                "test": c["test"], "statistic": _fmt(c["statistic"]), "rule": c["rule"], "p": _fmt(c["p_value"]),
                "n (ref / cur)": f"{c['n_ref']} / {c['n_cur']}",
                "detail": f"skipped: {c['skipped']}" if c["skipped"] else c["detail"]})
    return rows


def _md_table(rows: list[dict[str, str]]) -> list[str]:
    if not rows:
        return []
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(r[c].replace("|", "\\|") for c in cols) + " |" for r in rows]
    return out


def summary_line(result: dict[str, Any]) -> str:
    if result.get("skipped"):
        return f"Drift not measured: {result['skipped']}"
    drifted = [s for s, v in result["sections"].items() if v["verdict"] == "drift"]
    ref, cur = result["reference"]["run"], result["current"]["run"]
    head = f"Drift between reference run {str(ref)[:8]} and current run {str(cur)[:8]}: "
    if not drifted:
        return head + "no drift in any section."
    names = [f"{s} ({', '.join(result['sections'][s]['drifted'])})" for s in drifted]
    return head + "DRIFT in " + "; ".join(names) + "."


def markdown(result: dict[str, Any], plots: list[str]) -> str:
    lines = ["# Drift report", "", summary_line(result), ""]
    if result.get("skipped"):
        return "\n".join(lines) + "\n"
    lines += _md_table(table_rows(result))
    lines += ["", f"- reference: run `{result['reference']['run']}`, data `{result['reference']['dataset_root']}`",
              f"- current: run `{result['current']['run']}`, data `{result['current']['dataset_root']}`",
              f"- model scoring both sides: {result['model']}"]
    if result.get("shared_photos") is not None:
        lines.append(f"- photos in both runs' embedding samples: {result['shared_photos']}")
    cfg = result.get("config", {})
    lines += ["", f"Samples of at most {cfg.get('max_items')} photos (or items) a side, seed {cfg.get('seed')}. "
              f"Up to {cfg.get('large_n')} items a side, significance tests at alpha {cfg.get('alpha')} "
              "(Bonferroni-corrected within a section); beyond, distances (Jensen-Shannon, KS distance, "
              "absolute change of a share).", ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def page(result: dict[str, Any], plots: list[str]) -> str:
    """drift.html: the verdict table and the plots (PNG files beside it)."""
    rows = table_rows(result) if not result.get("skipped") else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in (rows[0] if rows else {}))
    body = []
    for r in rows:
        cls = ' class="drift"' if "DRIFT" in r["check"] or r["verdict"] == "DRIFT" else ""
        cells = "".join(f"<td>{html.escape(v.replace(' **DRIFT**', ' (drift)'))}</td>" for v in r.values())
        body.append(f"<tr{cls}>{cells}</tr>")
    images = "".join(f'<figure><img src="{p}" alt="{p}"><figcaption>{p}</figcaption></figure>' for p in plots)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Drift report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;font-size:13px;text-align:left}}tr.drift td{{background:#fde2e1}}img{{max-width:100%}}</style>
</head><body><h1>Drift report</h1><p>{html.escape(summary_line(result))}</p>
<table><tr>{head}</tr>{''.join(body)}</table>{images}</body></html>
"""


def _bars(ax, a: list[str], b: list[str], title: str, top: int = 12) -> None:
    ca, cb = Counter(map(str, a)), Counter(map(str, b))
    keys = sorted(set(ca) | set(cb), key=lambda k: -(ca[k] / max(1, len(a)) + cb[k] / max(1, len(b))))[:top]
    x = np.arange(len(keys))
    ax.bar(x - 0.2, [ca[k] / max(1, len(a)) for k in keys], 0.4, color=REF, label="reference")
    ax.bar(x + 0.2, [cb[k] / max(1, len(b)) for k in keys], 0.4, color=CUR, label="current")
    ax.set_xticks(x, keys, rotation=45, ha="right", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def _hist(ax, a: np.ndarray, b: np.ndarray, title: str) -> None:
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) and len(b):
        bins = np.histogram_bin_edges(np.r_[a, b], bins=20)
        ax.hist(a, bins, alpha=0.6, density=True, color=REF, label="reference")
        ax.hist(b, bins, alpha=0.6, density=True, color=CUR, label="current")
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)


def plot_data(extra: dict[str, Any], out: Path) -> bool:
    import matplotlib.pyplot as plt

    if "photos" not in extra:
        return False
    (pa, pb), (za, zb), (ia, ib), (qa, qb) = extra["photos"], extra["zones"], extra["images"], extra["quarantine"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    _bars(axes[0], list(pa["label"]), list(pb["label"]), "class balance (share of photos)")
    if za and zb:
        _bars(axes[1], za, zb, "zone (share of photos)")
    _hist(axes[2], ia["brightness"].to_numpy(float), ib["brightness"].to_numpy(float), "brightness (mean luma)")
    if qa is not None and qb is not None:
        _bars(axes[3], list(qa["reason"]), list(qb["reason"]), "quarantine reasons (share of quarantined)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


def plot_embeddings(extra: dict[str, Any], out: Path) -> bool:
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    if "xa" not in extra:
        return False
    xa, xb = extra["xa"], extra["xb"]
    xy = PCA(n_components=2, random_state=0).fit_transform(np.vstack([xa, xb]))
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(*xy[: len(xa)].T, s=10, alpha=0.6, color=REF, label=f"reference ({len(xa)})")
    ax.scatter(*xy[len(xa):].T, s=10, alpha=0.6, color=CUR, label=f"current ({len(xb)})")
    ax.set_title("image embeddings, one point per photo (PCA of both runs)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


def plot_predictions(extra: dict[str, Any], out: Path) -> bool:
    import matplotlib.pyplot as plt

    if "answers" not in extra:
        return False
    a, b = extra["answers"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    _hist(axes[0], np.asarray(a["confidence"]), np.asarray(b["confidence"]), "calibrated confidence")
    if extra.get("threshold") is not None:
        axes[0].axvline(extra["threshold"], color="k", ls="--", lw=1)
    _bars(axes[1], a["label"], b["label"], "predicted class (share of items)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


def write_report(result: dict[str, Any], extra: dict[str, Any], out_dir: Path) -> list[str]:
    """drift.json, report.md, drift.html and the plots that have data; returns the plot names."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [name for name, fn in zip(PLOTS, (plot_data, plot_embeddings, plot_predictions))
             if not result.get("skipped") and fn(extra, out_dir / name)]
    (out_dir / "drift.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    (out_dir / "report.md").write_text(markdown(result, plots), encoding="utf-8")
    (out_dir / "drift.html").write_text(page(result, plots), encoding="utf-8")
    return plots


def latest_drift(store: Any, records: list[Any]) -> tuple[Any, Path, dict[str, Any]] | None:
    """(run record, artifact dir, drift.json) of the newest run with a drift report in the store, else None."""
    for rec in records:
        aid = (rec.phases.get("drift") or {}).get("artifact_id")
        if not aid or not store.is_local or not store.is_complete("drift", aid):
            continue
        root = Path(store.dir_path("drift", aid))
        try:
            return rec, root, json.loads((root / "drift.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return None
