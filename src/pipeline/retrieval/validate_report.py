"""report.md of retrieval validation: the headline, a row per ranking with intervals, the breakdowns."""
from __future__ import annotations

from typing import Any

COVERAGE_BAR = 0.60


def _ci(e: Any) -> str:
    """'0.886 [0.829, 0.936]' of an Estimate."""
    if e is None or e.value != e.value:
        return "n/a"
    return f"{e.value:.3f} [{e.lo:.3f}, {e.hi:.3f}]"


def headline(m: dict[str, Any], k: int) -> list[str]:
    bar = "meets" if m["coverage_bar_met"] else "DOES NOT meet"
    ranking_ = ("Image queries (what `pipeline search --image` ranks by: the image part of each query against the "
                "index)" if m["image_query_headline"] else
                "Stored vectors against stored vectors (this fusion mixes image and text into one vector, so an "
                "image-only ranking cannot be separated)")
    lines = [f"{ranking_}, {m['n_queries']} queries from {m['n_query_photos']} photos ({m['n_query_groups']} groups); "
             f"a query's own photo and group are excluded from its neighbours (on average "
             f"{m['mean_excluded_references']:.1f} crops per query).", "",
             f"**Coverage** (same damage state among the top {k}): damaged {m['coverage_damaged']:.3f} "
             f"[{m['coverage_damaged_lo']:.3f}, {m['coverage_damaged_hi']:.3f}] ({int(m['coverage_damaged_n_queries'])} "
             f"queries, {int(m['coverage_damaged_n_photos'])} photos), clean {m['coverage_clean']:.3f} "
             f"[{m['coverage_clean_lo']:.3f}, {m['coverage_clean_hi']:.3f}] ({int(m['coverage_clean_n_queries'])} "
             f"queries, {int(m['coverage_clean_n_photos'])} photos) (chance {m['coverage_chance']:.3f}); {bar} the "
             f"users' bar of {COVERAGE_BAR:.0%}. mAP@R by damage type {m['map_at_r_damage_type']:.3f} "
             f"[{m['map_at_r_damage_type_lo']:.3f}, {m['map_at_r_damage_type_hi']:.3f}], by zone {m['map_at_r_zone']:.3f}.",
             "", "Intervals: 95% bootstrap over the query photos (photo groups; 2000 seeded draws): the queries of one "
             "photo are not independent.", ""]
    if m["image_query_headline"]:
        lines += [f"Fused vectors (image + context text, stored vector against stored vectors; `fused_*`): coverage "
                  f"damaged {m['fused_coverage_damaged']:.3f}, clean {m['fused_coverage_clean']:.3f}; mAP@R by damage "
                  f"type {m['fused_map_at_r_damage_type']:.3f}. Not the headline: a user's image query has no text.", ""]
    return lines


def rows_table(rows: list[dict[str, Any]], k: int) -> list[str]:
    cols = ("coverage_damaged", "coverage_clean", "balanced_coverage", "map_at_r_damage_type",
            f"precision_at_{k}_damage_type")
    head = ["row", "queries (photo groups)", "coverage damaged", "coverage clean", "balanced", "mAP@R damage type",
            f"P@{k} damage type"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        n = r["balanced_coverage"]
        lines.append(f"| {r['label']} | {n.n_queries} ({n.n_photos}) | " + " | ".join(_ci(r[c]) for c in cols) + " |")
    return lines


def report(metrics: dict[str, Any], rows: list[dict[str, Any]], per_type: dict, per_zone: dict, filters: dict,
           plots: list[str], k: int, notes: Any = ()) -> str:
    lines = ["# Retrieval validation", "", *notes, *headline(metrics, k), "## Rows", "",
             "Every row ranks the same queries with the same exclusions; intervals on the same photo draws.", "",
             *rows_table(rows, k)]
    diffs = [key for key in metrics if key.startswith("served_minus_") and key.endswith("_balanced_coverage")]
    for key in diffs:
        other = key[len("served_minus_"):-len("_balanced_coverage")]
        lines += ["", f"Served minus `{other}` (balanced coverage, paired over the same draws): {metrics[key]:+.3f} "
                  f"[{metrics[key + '_lo']:+.3f}, {metrics[key + '_hi']:+.3f}]."]
    lines += ["", "| metric | value |", "|---|---|",
              *[f"| {key} | {val:.4f} |" for key, val in metrics.items() if isinstance(val, (int, float))]]
    for title, table in ((f"## By damage type (precision@{k}, recall@{k})", per_type),
                         (f"## By zone (precision@{k}, recall@{k})", per_zone)):
        lines += ["", title, "", "| label | precision | recall |", "|---|---|---|",
                  *[f"| {lab} | {table['precision'][lab]:.3f} | {table['recall'][lab]:.3f} |" for lab in table["precision"]]]
    if filters:
        lines += ["", "## Filter correctness", "", "| filter | hits | matching | ok |", "|---|---|---|---|",
                  *[f"| {name} | {f['hits']} | {f['matching']} | {'yes' if f['ok'] else 'NO'} |" for name, f in filters.items()]]
    lines += ["", "## Plots", "", *[f"![{p}]({p})" for p in plots]]
    return "\n".join(lines) + "\n"
