"""The review folder a person opens in LabelMe (`labelme FOLDER --flags FOLDER/flags.txt --nodata`).

Per queued photo, `<rank>_<hash12>.<ext>` (the photo's bytes, copied) and `<rank>_<hash12>.json` beside
it in LabelMe's format: `imagePath` relative, `imageData` null, `imageHeight` / `imageWidth` (after
EXIF orientation, as LabelMe shows the photo), `flags` with every class of the model and the predicted
one set, `shapes` empty, or for a crops model the windows it scored as rectangles labelled
`model:<class>` (hints: delete them; left in, the labelme adapter drops them as shape-level
`unknown_label` rows and keeps the photo), or for a label check the run's damage polygons with their
codes. Also `flags.txt` (the classes), `queue.csv` (one row per photo: content hash, source path, model
version and run, top-k probabilities, uncertainty, rank, why selected) and `README.md` (what to do).

After a person labels a photo and renames it and its JSON in the users' naming
(`zona1_<ko|ok>_<a>_<b>_<ts>_zona_<Z>_imageDANO_original.jpg` and `..._labelDANO_modificado.json`, damage
shapes labelled `1`..`8`), the folder reads back through the `labelme` adapter.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.data.manifest import DAMAGE_TYPES

LABELME_VERSION = "5.2.1"
QUEUE_FIELDS = ("rank", "file", "content_hash", "source_path", "kind", "model", "model_version", "model_run",
                "predicted", "confidence", "not_conclusive", "top_k", "uncertainty", "uncertainty_kind",
                "current_label", "why_selected")
_CODE = {name: str(code) for code, name in DAMAGE_TYPES.items()}

README = """# Photos to label

Queued by review {when} with {model}: the {n} photos the model was least sure of,
not-conclusive ones first, no two alike (see queue.csv: why each one was picked).

1. Open the folder in LabelMe: `labelme . --flags flags.txt --nodata --autosave`
2. For each photo: set the flag of the right class; draw each damage as a polygon labelled with its
   code (1 surface_scratch, 2 dent, 3 paint_peeling, 4 deep_scratch, 5 crack, 6 missing_part,
   7 missing_accessory, 8 misaligned_part; 9 = not damage). Boxes labelled `model:...` are the
   model's windows, hints only: delete them.
3. Rename the photo `zona1_<ko|ok>_<a>_<b>_<timestamp>_zona_<1..10>_imageDANO_original.<ext>` and its
   JSON `..._labelDANO_modificado.json` (`ko` damaged, `ok` clean). The folder then reads as a
   `labelme` dataset (`pipeline run data-prep --dataset <folder> --format labelme`); photos not renamed
   yet are quarantined as `bad_filename`, queue.csv / flags.txt as `unsupported_file`.
"""


def _dims(path: Path) -> tuple[int, int]:
    from pipeline.data.images import load_rgb

    _, info = load_rgb(str(path), 89_478_485)
    return int(info["width"]), int(info["height"])


def _window_shapes(windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for w in windows:
        x0, y0, x1, y1 = w["box"]
        note = f"p={w['confidence']:.2f}" + (", deciding window" if w.get("deciding") else "")
        out.append({"label": f"model:{w['label']}", "points": [[x0, y0], [x1, y1]], "group_id": None,
                    "description": note, "shape_type": "rectangle", "flags": {}, "mask": None})
    return out


def _label_shapes(annotations: str | None) -> list[dict[str, Any]]:
    """The run's damage annotations as LabelMe polygons labelled with their codes."""
    out = []
    for a in json.loads(annotations or "[]"):
        if a.get("kind") != "damage" or a.get("label") not in _CODE:
            continue
        out.append({"label": _CODE[a["label"]], "points": a["points"], "group_id": None, "description": "",
                    "shape_type": "polygon", "flags": {}, "mask": None})
    return out


def labelme_doc(image_name: str, width: int, height: int, class_names: Sequence[str], predicted: str,
                shapes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version": LABELME_VERSION, "flags": {c: c == predicted for c in class_names}, "shapes": shapes,
            "imagePath": image_name, "imageData": None, "imageHeight": height, "imageWidth": width}


def top_k(probs: np.ndarray, class_names: Sequence[str], k: int) -> str:
    order = np.argsort(-probs)[:k]
    return "; ".join(f"{class_names[i]}:{probs[i]:.4f}" for i in order)


def write_folder(selected: list[Any], class_names: Sequence[str], model: Any, run: str, out: Path, k: int,
                 kind: str, when: str) -> list[dict[str, Any]]:
    """Write the folder (see the module doc); returns the queue rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for rank, c in enumerate(selected, start=1):
        stem = f"{rank:03d}_{c.key[:12]}"
        image_name = stem + c.path.suffix.lower()
        shutil.copyfile(c.path, out / image_name)
        width, height = _dims(out / image_name)
        predicted = class_names[int(np.argmax(c.probs))]
        shapes = _label_shapes(c.annotations) if c.kind == "label_check" else _window_shapes(c.windows)
        doc = labelme_doc(image_name, width, height, class_names, predicted, shapes)
        (out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        rows.append({"rank": rank, "file": image_name, "content_hash": c.key, "source_path": c.source,
                     "kind": c.kind, "model": model.name or model.describe(), "model_version": model.version,
                     "model_run": model.run_id, "predicted": predicted, "confidence": round(float(np.max(c.probs)), 6),
                     "not_conclusive": bool(c.not_conclusive), "top_k": top_k(c.probs, class_names, k),
                     "uncertainty": round(float(c.uncertainty), 6), "uncertainty_kind": kind,
                     "current_label": c.label or "", "why_selected": c.why, "run": run})
    (out / "flags.txt").write_text("\n".join(class_names) + "\n", encoding="utf-8")
    write_queue(rows, out / "queue.csv")
    (out / "README.md").write_text(README.format(when=when, model=model.describe(), n=len(rows)), encoding="utf-8")
    return rows


def write_queue(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=(*QUEUE_FIELDS, "run"), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
