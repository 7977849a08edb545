"""The calibration phase's report: reliability diagram, galleries (contact sheets) and report.md.

Only file names (never absolute paths) and figures computed from the inputs are written, so the
files are byte-identical across work dirs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

THUMB = 112
COLUMNS = 6
CAPTION_H = 30


def _bins(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin (torchmetrics' equal-width bins on (0, 1]): mean confidence, accuracy, count."""
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=correct.astype(float), minlength=n_bins) / count
    return mean_conf, acc, count


def reliability_diagram(scored: dict[str, Any], temperature: float, n_bins: int, path: Path) -> None:
    """One panel per split: accuracy per confidence bin before (T=1) and after temperature scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.training.inference import softmax

    fig, axes = plt.subplots(1, len(scored), figsize=(5 * len(scored), 4.6), squeeze=False)
    centers = (np.arange(n_bins) + 0.5) / n_bins
    width = 1.0 / n_bins
    for ax, (name, s) in zip(axes[0], scored.items()):
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
        for t, colour, label in ((1.0, "#d62728", "before"), (temperature, "#1f77b4", f"after (T={temperature:.3f})")):
            probs = softmax(s.logits, t) if len(s.labels) else np.zeros((0, 1))
            conf = probs.max(axis=1) if len(s.labels) else np.zeros(0)
            correct = probs.argmax(axis=1) == s.labels if len(s.labels) else np.zeros(0, bool)
            _, acc, count = _bins(conf, correct, n_bins)
            shown = count > 0
            ax.bar(centers[shown], acc[shown], width=width, fill=t != 1.0, alpha=0.45 if t != 1.0 else 1.0,
                   edgecolor=colour, color=colour, label=label, linewidth=1.2, zorder=3 if t == 1.0 else 2)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"{name} (n={len(s.labels)})")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def contact_sheet(entries: Sequence[tuple[str, str]], path: Path, empty_text: str) -> None:
    """A PNG grid of thumbnails (image path, caption); a one-line image saying `empty_text` when empty."""
    from PIL import Image, ImageDraw, ImageFont

    from pipeline.data.images import ImageLoadError, load_rgb
    from pipeline.training.inference import MAX_PIXELS

    font = ImageFont.load_default()
    if not entries:
        sheet = Image.new("RGB", (THUMB * 3, 40), "white")
        ImageDraw.Draw(sheet).text((8, 12), empty_text, fill="black", font=font)
        sheet.save(path, optimize=False)
        return
    cols = min(COLUMNS, len(entries))
    rows = -(-len(entries) // cols)
    sheet = Image.new("RGB", (cols * THUMB, rows * (THUMB + CAPTION_H)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (src, caption) in enumerate(entries):
        x, y = (i % cols) * THUMB, (i // cols) * (THUMB + CAPTION_H)
        try:
            im = load_rgb(src, MAX_PIXELS)[0]
            im.thumbnail((THUMB - 4, THUMB - 4))
            sheet.paste(im, (x + (THUMB - im.width) // 2, y + (THUMB - im.height) // 2))
        except (ImageLoadError, OSError):
            draw.text((x + 4, y + THUMB // 2), "unreadable", fill="red", font=font)
        for j, line in enumerate(caption.split("\n")[:2]):
            draw.text((x + 3, y + THUMB + 2 + 13 * j), line[:20], fill="black", font=font)
    sheet.save(path, optimize=False)


def galleries(test: Any, class_names: Sequence[str], temperature: float, threshold: float, size: int,
              out_dir: Path) -> dict[str, int]:
    """gallery_errors.png (the most confident test errors) and gallery_not_conclusive.png (test images
    under the threshold, least confident first). Returns how many of each exist."""
    from pipeline.training.inference import softmax

    probs = softmax(test.logits, temperature) if len(test.labels) else np.zeros((0, len(class_names)))
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
    wrong = np.flatnonzero(pred != test.labels)
    wrong = wrong[np.argsort(-conf[wrong], kind="stable")]
    unsure = np.flatnonzero(conf < threshold)
    unsure = unsure[np.argsort(conf[unsure], kind="stable")]

    def entries(idx: np.ndarray) -> list[tuple[str, str]]:
        return [(test.records[i]["path"], f"{class_names[test.labels[i]]} -> {class_names[pred[i]]}\n"
                 f"p={conf[i]:.2f} {Path(test.records[i]['path']).name}") for i in idx[:size]]

    contact_sheet(entries(wrong), out_dir / "gallery_errors.png", "no errors on test")
    contact_sheet(entries(unsure), out_dir / "gallery_not_conclusive.png", "no not-conclusive test images")
    return {"errors": int(len(wrong)), "not_conclusive": int(len(unsure))}


def _pct(v: float | None) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}%"


def _f(v: float | None) -> str:
    return "-" if v is None or v != v else f"{v:.4f}"


def _ci(est: Any, pct: bool = False) -> str:
    """A figure with its interval: '0.812 [0.700, 0.900] (n=28, 7 photos)'."""
    if est is None or est.value != est.value:
        return "-"
    if pct:
        return f"{100 * est.value:.1f}% [{100 * est.lo:.1f}, {100 * est.hi:.1f}]"
    return f"{est.value:.4f} [{est.lo:.4f}, {est.hi:.4f}]"


def _table_md(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| threshold | answered | coverage | precision | errors |", "|---|---|---|---|---|"]
    out += [f"| {r['threshold']:.2f} | {r['answered']}/{r['total']} | {_pct(r['coverage'])} | {_pct(r['precision'])} "
            f"| {r['errors']} |" for r in rows]
    return out


def write_report(path: Path, meta: dict, figures: dict[str, dict], tables: dict[str, list], choice: dict,
                 test_row: dict, temperature: float, scored: dict[str, Any], c: Any,
                 reliability: tuple[bool, str] = (True, "")) -> None:
    lines = ["# Calibration", "",
             f"Model `{meta['arch']}`, {len(meta['class_names'])} classes: {', '.join(meta['class_names'])}."]
    if not reliability[0]:
        lines += ["", f"**Unreliable calibration**: {reliability[1]}. The run goes on with them.", ""]
    if meta.get("random_init"):
        lines.append("**The model was random-initialised (no pretrained weights): figures are not meaningful.**")
    for name, s in scored.items():
        lines.append(f"- {name}: {len(s.labels)} images used; dropped {s.dropped_unreadable} unreadable, "
                     f"{s.dropped_unknown_label} with a label outside the model's classes.")
    from pipeline.training.calibration_stats import TEMPERATURE_BOUNDS

    lo, hi = TEMPERATURE_BOUNDS
    bound = (f" It sits at the bound of the search [{lo}, {hi}]: the model is barely better than chance on "
             "val, so its confidences carry little information." if min(abs(temperature - lo), abs(temperature - hi))
             < 1e-6 else "")
    lines += ["", f"Temperature fitted on val NLL (bounded search in [{lo}, {hi}]): **T = {temperature:.4f}**.{bound}",
              "",
              "| split | n (photos) | top-1 [95% CI] | NLL before -> after | Brier before -> after "
              "| ECE before [CI] | ECE after [CI] | MCE before -> after | bins |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, f in figures.items():
        role = "fitted" if name == "val" else "judged"
        ci = f.get("_ci", {})
        lines.append(f"| {name} ({role}) | {f['n']} ({f.get('n_groups', '-')}) | {_ci(ci.get('top1'), True)} "
                     f"| {_f(f['nll_before'])} -> {_f(f['nll_after'])} | {_f(f.get('brier_before'))} -> "
                     f"{_f(f.get('brier_after'))} | {_ci(ci.get('ece_before'))} | {_ci(ci.get('ece_after'))} "
                     f"| {_f(f['mce_before'])} -> {_f(f['mce_after'])} | {f.get('bins', 'equal_width')} x "
                     f"{f.get('n_bins', c.n_bins)} |")
    lines += ["", "ECE / MCE on top-label confidence: equal-width bins (as torchmetrics) or equal-mass bins (adaptive, "
              f"used when a split has fewer than {c.min_items} items). Intervals: 95% bootstrap over photos.", "",
              "## Threshold", ""]
    if choice["reached"]:
        lines.append(f"Smallest threshold reaching the target precision {_pct(c.target_precision)} on val: "
                     f"**{choice['threshold']:.2f}** (val precision {_pct(choice['precision'])}, coverage "
                     f"{_pct(choice['coverage'])}).")
    else:
        lines.append(f"**None reached** the target precision {_pct(c.target_precision)} on val; the best is "
                     f"**{choice['threshold']:.2f}** (val precision {_pct(choice['precision'])}, coverage "
                     f"{_pct(choice['coverage'])}), stored with the model.")
    lines += [f"On test at that threshold: precision {_pct(test_row['precision'])}, coverage "
              f"{_pct(test_row['coverage'])}. Below it the model answers \"not conclusive\".", ""]
    for name, f in figures.items():
        ci = f.get("_ci", {})
        if "precision_at_threshold" in ci:
            lines.append(f"- {name} at {choice['threshold']:.2f}: precision {_ci(ci['precision_at_threshold'], True)}, "
                         f"coverage {_ci(ci['coverage_at_threshold'], True)}")
    lines.append("")
    for name in ("val", "test"):
        lines += [f"### {name}", "", *_table_md(tables[name]), ""]
    lines += ["## Plots", "", "![reliability](reliability.png)", "",
              "Most confident test errors (true -> predicted, calibrated confidence):", "",
              "![errors](gallery_errors.png)", "", "Not conclusive test images (least confident first):", "",
              "![not conclusive](gallery_not_conclusive.png)", ""]
    path.write_text("\n".join(lines))
