"""Gated promotion in the registry: the new student takes the alias `champion` or `challenger`.

`promote_student`: the new student takes the alias `champion` only if, on the frozen
test items (persisted at the first promotion as an artifact of that version's run, pointed to by
the registered model's `pipeline.frozen_test` tag), minus the items either model trained on, and
on the classes both know, it clears the floors of `registry.gate` (above the majority-class rate
and not below the frozen-probe baseline beyond the interval, the first promotion included) and,
with a champion, is not worse than it beyond the interval with an ECE at most the champion's +
`promotion.ece_margin`; otherwise it becomes `challenger`, the reason in its tags. Every alias change (gate or manual
`pin_champion`) is appended to the registered model's `pipeline.history` tag (JSON list).

Kill-safety: registering is idempotent (a version with the same weights is reused; its files are logged
before the version exists, so no version lacks them). Before a promotion changes an alias it records
the aliases and history length it started from (`pipeline.promotion.pending` on the registered model)
and clears that once its decision is tagged; a promotion that finds the mark (its predecessor was
killed half-way) first restores that state (`repair_interrupted_promotion`), so it decides again from
the same state, with the same result.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

from pipeline.registry.versions import (
    CHALLENGER,
    CHAMPION,
    FROZEN_TAG,
    HISTORY_TAG,
    PENDING_TAG,
    alias_version,
    read_json_artifact,
    record_event,
    history,
    resolve_version,
    trained_items,
    version_model_dir,
)

FROZEN_PATH = "promotion/frozen_test.json"


def frozen_test_items(client, name: str) -> list[dict[str, str]] | None:
    tag = client.get_registered_model(name).tags.get(FROZEN_TAG)
    if not tag:
        return None
    ref = json.loads(tag)
    return read_json_artifact(client, ref["run_id"], ref["path"])


def freeze_test_items(client, name: str, mv, records: list[dict[str, str]]) -> None:
    client.log_text(mv.run_id, json.dumps(records, indent=1), FROZEN_PATH)
    client.set_registered_model_tag(name, FROZEN_TAG, json.dumps({"run_id": mv.run_id, "path": FROZEN_PATH,
                                                                   "version": int(mv.version), "n": len(records)}))


def _compare_set(client, name: str, new, champ, test_items: Sequence[Any]) -> tuple[list[dict], dict[str, Any]]:
    """The frozen test items (persisted now if this is the first promotion) minus what either model
    trained on, restricted to the classes both models know; plus how the set was formed."""
    from pipeline.training.inference import item_records

    frozen = frozen_test_items(client, name)
    tag = client.get_registered_model(name).tags.get(FROZEN_TAG)
    first = frozen is None or json.loads(tag).get("version") == int(new.version)  # by this version (a killed try too)
    if frozen is None:
        frozen = _with_photos(item_records(test_items), test_items)
        freeze_test_items(client, name, new, frozen)
    new_classes = json.loads(new.tags.get("class_names", "[]"))
    champ_classes = json.loads(champ.tags.get("class_names", "[]")) if champ else new_classes
    shared = [c for c in new_classes if c in set(champ_classes)]
    trained = trained_items(client, new) | (trained_items(client, champ) if champ else set())
    unseen = [r for r in frozen if r["item_id"] not in trained]
    present = [r for r in unseen if Path(r["path"]).is_file()]
    records = [r for r in present if r["label"] in set(shared)]
    info = {"frozen_items": len(frozen), "frozen_now": first, "left_out_trained": len(frozen) - len(unseen),
            "missing_files": len(unseen) - len(present), "outside_shared_classes": len(present) - len(records),
            "compared_items": len(records), "classes_changed": new_classes != champ_classes,
            "shared_classes": shared, "only_new": [c for c in new_classes if c not in set(champ_classes)],
            "only_champion": [c for c in champ_classes if c not in set(new_classes)]}
    return records, info


def _with_photos(records: list[dict[str, str]], items: Any) -> list[dict[str, str]]:
    """Each record's photo group (`group`, see training.items.photo_groups), so intervals resample
    photos and JSONL groups, not crops or images of one photo."""
    from pipeline.training.items import photo_of

    photo = photo_of(items)
    return [{**r, "group": photo.get(r["item_id"], r["item_id"])} for r in records]


def _pending(client, name: str) -> dict[str, Any] | None:
    tag = client.get_registered_model(name).tags.get(PENDING_TAG)
    return json.loads(tag) if tag else None


def _mark_pending(client, name: str, version: int, champ, events: int) -> None:
    challenger = alias_version(client, name, CHALLENGER)
    client.set_registered_model_tag(name, PENDING_TAG, json.dumps({
        "version": version, CHAMPION: int(champ.version) if champ else None,
        CHALLENGER: int(challenger.version) if challenger else None, "history": events}))


def repair_interrupted_promotion(client, name: str) -> dict[str, Any] | None:
    """Undo what a killed promotion of `name` did after it marked itself pending: the champion and
    challenger aliases and the history go back to what they were; returns the mark (None: nothing to do)."""
    mark = _pending(client, name)
    if mark is None:
        return None
    for alias in (CHAMPION, CHALLENGER):
        current = alias_version(client, name, alias)
        if mark.get(alias) is not None:
            if current is None or int(current.version) != int(mark[alias]):
                client.set_registered_model_alias(name, alias, str(mark[alias]))
        elif current is not None:
            client.delete_registered_model_alias(name, alias)
    events = history(client, name)
    if len(events) > int(mark.get("history", len(events))):
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(events[: int(mark["history"])]))
    client.delete_registered_model_tag(name, PENDING_TAG)
    return mark


def promote_student(client, name: str, new_version: int | str, test_items: Sequence[Any], cfg: Any,
                    cache_dir: Path | None = None, device: str = "cpu", veto: str | None = None,
                    baseline_dir: Path | None = None, majority_class: str | None = None) -> dict[str, Any]:
    """The gate (module docstring and `registry.gate`). Returns the decision: promoted, reason, both sets
    of figures, every floor rule with its interval, the comparison set's make-up; the alias change is
    recorded in the history. A `veto` (e.g. "no passing browser variant") keeps the new version
    challenger whatever its figures. `baseline_dir`: the frozen-probe model dir (teacher's `probe/`);
    `majority_class`: the train split's most frequent class."""
    repair_interrupted_promotion(client, name)  # a promotion killed half-way: back to the state it started from
    new = resolve_version(client, name, int(new_version))
    champ = alias_version(client, name, CHAMPION)
    cache = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="registry-"))
    records, info = _compare_set(client, name, new, champ, test_items)
    from pipeline.registry import gate

    n_bins, margin = cfg.calibration.n_bins, cfg.promotion.ece_margin
    new_fig, new_ok = gate.score_records(version_model_dir(client, new, cache), records, n_bins, device)
    champ_fig, champ_ok = (gate.score_records(version_model_dir(client, champ, cache), records, n_bins, device)
                           if champ else (None, None))
    probe_fig, probe_ok = (gate.score_records(Path(baseline_dir), records, n_bins, device)
                           if baseline_dir is not None and (Path(baseline_dir) / "model.json").is_file() else (None, None))
    rules = gate.floors(new_ok, records, majority_class=majority_class, probe=probe_ok,
                        champion=champ_ok if champ is not None and champ.version != new.version else None,
                        seed=int(getattr(cfg.train, "seed", 0)))
    decision: dict[str, Any] = {"name": name, "version": int(new.version), "ece_margin": margin, **info,
                                "new": new_fig, "champion": champ_fig, "probe": probe_fig, "floors": rules,
                                "majority_class": majority_class,
                                "champion_version": int(champ.version) if champ else None}
    failed = [r for r in rules if not r["passed"]]
    if champ is not None and champ.version == new.version:
        promoted, reason = True, "already the champion"
    elif veto or failed:
        promoted = False
        reason = "; ".join([*([f"vetoed: {veto}"] if veto else []),
                            *(["refused by the floor: " + "; ".join(r["text"] for r in failed)] if failed else [])])
    elif not records:
        promoted, reason = False, "no frozen test item left to compare on (shared classes, unseen by both)"
    elif champ is None:
        promoted, reason = True, "first promotion, floors cleared: " + "; ".join(r["text"] for r in rules)
    else:
        ece_ok = new_fig["ece"] <= champ_fig["ece"] + margin
        promoted = ece_ok
        reason = "; ".join([*(r["text"] for r in rules),
                            f"ECE {new_fig['ece']:.4f} {'<=' if ece_ok else '>'} champion {champ_fig['ece']:.4f} + {margin}"])
    decision.update(promoted=promoted, reason=reason, alias=CHAMPION if promoted else CHALLENGER)
    _mark_pending(client, name, int(new.version), champ, len(history(client, name)))  # cleared when all is done
    if champ is None or champ.version != new.version:
        client.set_registered_model_alias(name, decision["alias"], new.version)
        challenger = alias_version(client, name, CHALLENGER) if promoted else None
        if challenger is not None and challenger.version == new.version:
            client.delete_registered_model_alias(name, CHALLENGER)
        record_event(client, name, {"action": "promoted" if promoted else "challenger", "version": int(new.version),
                               "previous_champion": decision["champion_version"], "by": "gate", "reason": reason})
    client.set_model_version_tag(name, str(new.version), "pipeline.promotion",
                                 json.dumps({k: decision[k] for k in ("promoted", "reason", "compared_items")}))
    client.delete_registered_model_tag(name, PENDING_TAG)
    return decision
