"""The table `pipeline demo` prints after the factory flow: models, calibration, promotion, export
gate, retrieval headline, wall time and peak memory. Reads only the flow summary (per-phase
metrics and info) and the export phase's export.json, so it imports nothing heavy."""
from __future__ import annotations

import math
import resource
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MODEL_ROWS = (("teacher", "teacher"), ("student", "student (distilled)"),
              ("student_no_teacher", "student, no teacher"), ("finetune", "fine-tuned student"))


def _f(v: Any, fmt: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt) if isinstance(v, (int, float)) else str(v)


def _metrics(phases: Mapping[str, Any], name: str) -> dict[str, Any]:
    p = phases.get(name) or {}
    return {**(p.get("info") or {}), **(p.get("metrics") or {})}


def _ci(m: Mapping[str, Any], prefix: str) -> str:
    """'0.833 [0.70, 0.95] n=22' from <prefix>_ci_value/lo/hi/n metrics (or the bare value)."""
    v, lo, hi, n = (m.get(f"{prefix}_ci_{k}") for k in ("value", "lo", "hi", "n"))
    if v is None:
        return _f(m.get(prefix))
    return f"{_f(v)} [{_f(lo, '.2f')}, {_f(hi, '.2f')}] n={_f(n, '.0f')}"


def _model_rows(phases: Mapping[str, Any]) -> list[tuple[str, ...]]:
    t = _metrics(phases, "teacher")
    rows = [("majority class (always the most frequent train class)", "-", _f(t.get("test_majority_rate")), "-",
             "-", "-", "-"),
            ("baseline (linear probe, frozen teacher)", _f(t.get("baseline_val_top1")), _ci(t, "baseline_test_top1"),
             "0", "-", "-", "-")]
    names = [("teacher", "teacher")] + [(n, f"regional teacher {n.removeprefix('teacher_')}") for n in sorted(phases)
                                         if n.startswith("teacher_")] + list(MODEL_ROWS[1:])
    for phase, label in names:
        if phase not in phases:
            continue
        m = _metrics(phases, phase)
        if phase.startswith("teacher_") and "baseline_test_top1" in m:
            label += f" (global teacher on it: {_f(m['baseline_test_top1'])}" + \
                ("" if m.get("teaches", 1) else "; left out of the soft labels") + ")"
        if m.get("best_epoch") == 0:
            label += " [kept its starting model]"
        elif m.get("selected_on_val") == 0:
            label += " [last epoch: val too small to choose]"
        steps = _f(m.get("steps"), ".0f") + (" (short)" if m.get("short_of_budget") else "")
        rows.append((label, _f(m.get("val_top1")), _ci(m, "test_top1"), steps, "-", "-", "-"))
    c = _metrics(phases, "calibration")
    if c:
        ece = f"{_f(c.get('ece_before'))} -> {_f(c.get('ece_after'))}"
        reached = "" if c.get("threshold_reached", 1) else " (none reached)"
        top1 = (f"{_f(c.get('test_top1'))} [{_f(c.get('test_top1_lo'), '.2f')}, {_f(c.get('test_top1_hi'), '.2f')}] "
                f"n={_f(c.get('n_test'), '.0f')}")
        rows.append((f"calibrated (T = {_f(c.get('temperature'))})", _f(c.get("val_top1")), top1, "-",
                     ece, _f(c.get("threshold"), ".2f") + reached, _f(c.get("test_coverage_at_threshold"))))
    return rows


def comparison_lines(phases: Mapping[str, Any]) -> list[str]:
    """Whether each pair of models differs beyond the interval (paired bootstrap over photos)."""
    from pipeline.training.compare import comparisons

    paths = {name: (phases.get(name) or {}).get("path") for name in ("teacher", "student", "student_no_teacher",
                                                                      "finetune")}
    lines = comparisons({k: v for k, v in paths.items() if v and Path(v).is_dir()})
    return ["comparisons on test (top-1 difference, 95% paired bootstrap over photos):", *(f"- {x}" for x in lines)] \
        if lines else []


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: tuple[str, ...]) -> str:
        return "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))

    return [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]


def random_init_notes(phases: Mapping[str, Any]) -> list[str]:
    """A line per phase whose model was random-initialised (no pretrained weights)."""
    return [f"NOTE: {name} was RANDOM-INITIALISED (no pretrained weights): its figures are not a pretrained model's."
            for name in phases if _metrics(phases, name).get("random_init") in (1, 1.0, True)]


def _calibration_lines(c: Mapping[str, Any]) -> list[str]:
    if not c:
        return []
    head = "threshold reaches" if c.get("threshold_reached", 1) else "NONE REACHED the target; best threshold gives"
    flag = [] if c.get("reliable", 1) else [f"calibration UNRELIABLE: {c.get('reliability', 'too few val items')}"]
    return flag + [(f"calibration: {head} val precision {_f(c.get('val_precision_at_threshold'))} at coverage "
             f"{_f(c.get('val_coverage_at_threshold'))}; on test precision {_f(c.get('test_precision_at_threshold'))}, "
             f"coverage {_f(c.get('test_coverage_at_threshold'))}; test ECE {_f(c.get('ece_before'))} -> "
             f"{_f(c.get('ece_after'))}, MCE {_f(c.get('mce_before'))} -> {_f(c.get('mce_after'))}")]


def _promotion_lines(p: Mapping[str, Any]) -> list[str]:
    if not p:
        return ["promotion: not run"]
    verdict = "PROMOTED to champion" if p.get("promoted") else "kept as challenger"
    champ = (f"; champion v{int(p['champion_version'])} top-1 {_f(p.get('champion_top1'))}, ECE {_f(p.get('champion_ece'))}"
             if p.get("champion_version") else "")
    return [(f"promotion: {p.get('registered_model', 'student')} v{_f(p.get('version'), '.0f')} {verdict} "
             f"({p.get('decision', '')}); top-1 {_f(p.get('new_top1'))}, ECE {_f(p.get('new_ece'))} on "
             f"{_f(p.get('compared_items'), '.0f')} frozen test items{champ}"),
            *([f"training manifest: {p['training_manifest']}"] if p.get("training_manifest") else [])]


def _export_lines(phases: Mapping[str, Any]) -> list[str]:
    e = phases.get("export")
    if not e or not e.get("path") or not (Path(e["path"]) / "export.json").is_file():
        return ["export: not run"]
    from pipeline.export.cards import gate_table

    return ["export gate (latency in ms per image):", gate_table(Path(e["path"]), _metrics(phases, "export"))]


def _retrieval_lines(phases: Mapping[str, Any]) -> list[str]:
    v = _metrics(phases, "validation")
    if not v:
        return []
    i = _metrics(phases, "index")
    return [(f"retrieval: {_f(v.get('n_crops'), '.0f')} crops indexed ({i.get('kind', '?')}); image queries "
             f"precision@1 damage type {_f(v.get('fused_precision_at_1_damage_type', v.get('precision_at_1_damage_type')))}, "
             f"mAP@R {_f(v.get('fused_map_at_r_damage_type', v.get('map_at_r_damage_type')))}, damaged-query coverage "
             f"{_f(v.get('fused_coverage_damaged', v.get('coverage_damaged')))} (chance {_f(v.get('coverage_chance'))})")]


def peak_memory_mb() -> tuple[float, float]:
    """(this process, the largest finished child process) peak resident memory in MB (Linux: KiB)."""
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return me, child


def demo_table(summary: Mapping[str, Any], wall_s: float) -> str:
    phases = summary.get("phases") or {}
    lines = ["", "== models (top-1 on the crops' val / test splits) =="]
    lines += _table(_model_rows(phases), ("model", "val top-1", "test top-1 [95% CI over photos]", "steps",
                                          "ECE before -> after", "threshold", "coverage"))
    lines += random_init_notes(phases)
    lines += comparison_lines(phases)
    if summary.get("seeds"):
        from pipeline.core.seeds import seed_lines

        lines += ["over train.seeds:", *(f"- {x}" for x in seed_lines(summary["seeds"]))]
    lines += ["", *_calibration_lines(_metrics(phases, "calibration")), *_promotion_lines(_metrics(phases, "promotion")),
              "", *_export_lines(phases), "", *_retrieval_lines(phases)]
    me, child = peak_memory_mb()
    lines += ["", (f"wall time {wall_s / 60:.1f} min ({wall_s:.0f} s); peak memory {max(me, child):.0f} MB "
                   f"(this process {me:.0f} MB, largest child process {child:.0f} MB)")]
    return "\n".join(lines)
