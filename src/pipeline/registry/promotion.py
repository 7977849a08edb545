"""The promotion phase: register the teachers and the calibrated student, gate the student, report.

`run_promotion` depends on the registry's state, so the phase is never a cache hit. It writes
`report.md` (the decision, both sets of figures, the comparison set, recent history) and
`decision.json` into out_dir, and returns {promoted (1/0), version, figures...} as metrics.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.registry.promote import promote_student
from pipeline.registry.versions import (
    history,
    register_classifier,
    registry_client,
    student_name,
    teacher_name,
)

OUTPUTS = ("report.md", "decision.json")


def _teacher_region(phase: str) -> str | None:
    return None if phase == "teacher" else phase.removeprefix("teacher_")


def run_promotion(student_dir: Path, test_items: Sequence[Any], trained_item_ids: Sequence[str], cfg: Any,
                  tracking_uri: str, out_dir: Path, *, teacher_dirs: Mapping[str, Path] | None = None,
                  teacher_trained: Mapping[str, Sequence[str]] | None = None, tags: dict[str, str] | None = None,
                  veto: str | None = None, cache_dir: Path | None = None, device: str = "cpu",
                  export_dir: Path | None = None, majority_class: str | None = None) -> dict[str, Any]:
    """Register teachers (`teacher_dirs`: phase name 'teacher' / 'teacher_<region>' -> model dir) as
    `<experiment>-teacher[-<region>]` and the calibrated student as `<experiment>-student`, then gate the
    student (`promote.promote_student`). `veto` (e.g. no passing browser variant) keeps it challenger."""
    client = registry_client(tracking_uri)
    experiment = cfg.tracking.experiment
    registered: dict[str, int] = {}
    if cfg.promotion.register_teachers:
        for phase, model_dir in sorted((teacher_dirs or {}).items()):
            name = teacher_name(cfg, _teacher_region(phase))
            mv = register_classifier(client, name, model_dir, experiment, (teacher_trained or {}).get(phase, ()), tags)
            registered[name] = int(mv.version)
    name = student_name(cfg)
    mv = register_classifier(client, name, student_dir, experiment, trained_item_ids, tags)
    registered[name] = int(mv.version)
    if export_dir is not None:  # the student version gains its passing exported variants
        from pipeline.registry.export_io import attach_variants

        attach_variants(client, mv, Path(export_dir))
    probe = Path(teacher_dirs["teacher"]) / "probe" if teacher_dirs and "teacher" in teacher_dirs else None
    decision = promote_student(client, name, mv.version, test_items, cfg, cache_dir=cache_dir, device=device,
                               veto=veto, baseline_dir=probe, majority_class=majority_class)
    decision["registered"] = registered
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "decision.json").write_text(json.dumps(decision, indent=2, sort_keys=True, default=str) + "\n")
    write_promotion_report(out_dir / "report.md", decision, history(client, name)[-10:])
    metrics: dict[str, Any] = {"promoted": int(decision["promoted"]), "version": int(mv.version),
                               "compared_items": decision["compared_items"],
                               "new_top1": decision["new"]["top1"], "new_ece": decision["new"]["ece"]}
    if decision["champion"]:
        metrics.update(champion_top1=decision["champion"]["top1"], champion_ece=decision["champion"]["ece"],
                       champion_version=decision["champion_version"])
    for rule in decision.get("floors", []):
        metrics.update({f"floor_{rule['rule']}_passed": int(rule["passed"]),
                        f"floor_{rule['rule']}_diff": rule["diff_value"], f"floor_{rule['rule']}_diff_lo": rule["diff_lo"],
                        f"floor_{rule['rule']}_diff_hi": rule["diff_hi"]})
    if decision.get("probe"):
        metrics["probe_top1"] = decision["probe"]["top1"]
    metrics.update(decision=decision["reason"], alias=decision["alias"], registered_model=name)
    return metrics


def _fig(v: float | None, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.4f}"


def _n(f: dict[str, Any]) -> str:
    return f"{f['n']} ({f.get('n_photos', '-')})" if f else "-"


def _top1(f: dict[str, Any]) -> str:
    if not f:
        return "-"
    return f"{_fig(f.get('top1'), True)} [{_fig(f.get('top1_lo'), True)}, {_fig(f.get('top1_hi'), True)}]"


def write_promotion_report(path: Path, d: dict[str, Any], events: list[dict[str, Any]]) -> None:
    verdict = "**promoted: champion**" if d["promoted"] else "**not promoted: challenger**"
    champ = d["champion"] or {}
    lines = [f"# Promotion of {d['name']} version {d['version']}", "", f"{verdict}: {d['reason']}.", "",
             "| model | version | items (photos) | top-1 [95% CI over photos] | ECE |", "|---|---|---|---|---|",
             f"| new student | {d['version']} | {_n(d['new'])} | {_top1(d['new'])} | {_fig(d['new']['ece'])} |",
             f"| champion | {d['champion_version'] or '-'} | {_n(champ)} | {_top1(champ)} | {_fig(champ.get('ece'))} |",
             *([f"| frozen-probe baseline | - | {_n(d['probe'])} | {_top1(d['probe'])} | {_fig(d['probe']['ece'])} |"]
               if d.get("probe") else []), "",
             "Rules, on the same frozen test items (intervals: 95% paired bootstrap over photos): above the "
             f"majority-class rate ('{d.get('majority_class')}') beyond the interval; not worse than the frozen-probe "
             "baseline beyond the interval (these two floors hold for the first promotion too); with a champion, not "
             f"worse than it beyond the interval and ECE at most the champion's + {d['ece_margin']}.", "",
             "| rule | passed | top-1 difference [95% CI] | n (photos) |", "|---|---|---|---|",
             *[f"| {r['rule']} | {'yes' if r['passed'] else '**no**'} | {_fig(r['diff_value'])} [{_fig(r['diff_lo'])}, "
               f"{_fig(r['diff_hi'])}] | {int(r['diff_n'])} ({int(r['diff_n_groups'])}) |" for r in d.get("floors", [])],
             "", "## Comparison set", "",
             f"- frozen test items: {d['frozen_items']}" + (" (frozen now, at the first promotion)" if d['frozen_now'] else ""),
             f"- left out, trained on by either model: {d['left_out_trained']}",
             f"- missing image files: {d['missing_files']}",
             f"- outside the shared classes: {d['outside_shared_classes']}",
             f"- compared: {d['compared_items']}"]
    if d["classes_changed"]:
        lines.append(f"- **the class list changed**: compared on the shared classes {d['shared_classes']}; only the "
                     f"new model: {d['only_new']}; only the champion: {d['only_champion']}")
    lines += ["", "## Registered", ""] + [f"- {n}: version {v}" for n, v in sorted(d.get("registered", {}).items())]
    lines += ["", "## Recent history", "", "| time | action | version | previous champion | by | reason |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {e['time']} | {e['action']} | {e['version']} | {e.get('previous_champion') or '-'} | {e['by']} "
              f"| {e['reason']} |" for e in events]
    path.write_text("\n".join(lines) + "\n")
