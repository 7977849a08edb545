"""Real-photo proxy sets for the held-out checks' layouts, cut from a COCO damage + parts dataset.

    python bench/proxy_sets.py --coco ../shared/data/car-damage-coco --out bench-work/proxy

Writes `gray2/`: a JSONL set of grayscale PNG crops, two classes (`damaged`: a damage polygon's box;
`clean`: a car-part box that overlaps no damage box by 5% of its area or more), each record's `group` its
source photo (so the split keeps a photo's crops together), `license` from the dataset. Run the train flow
on it as the held-out checks do (`--format jsonl --set train.epochs=4 --set train.image_size=160`), then
`bench/recipe_cv.py` on that work dir. The polygons are the project's COCO adapter's (`scan_coco`: damage
or part by supercategory, bad records quarantined); their boxes are squared and padded by 1.3x (>= 96 px).
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path


def box(points: list[list[float]]) -> list[float]:
    """(x, y, w, h) of a polygon."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def overlap(a: list[float], b: list[float]) -> float:
    """Share of box a (x, y, w, h) covered by box b."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return ix * iy / max(aw * ah, 1.0)


def square(b: list[float], width: int, height: int, pad: float = 1.3, least: int = 96) -> tuple[int, int, int, int]:
    x, y, w, h = b
    cx, cy, side = x + w / 2, y + h / 2, max(max(w, h) * pad, least)
    return (int(max(0, cx - side / 2)), int(max(0, cy - side / 2)), int(min(width, cx + side / 2)),
            int(min(height, cy + side / 2)))


def main() -> None:
    from PIL import Image

    from pipeline.core.config import load_config
    from pipeline.data.adapters.coco import scan_coco

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--coco", type=Path, required=True, help="a COCO dataset root (the `coco` format's)")
    ap.add_argument("--out", type=Path, default=Path("bench-work/proxy"))
    a = ap.parse_args()
    out = a.out / "gray2"
    (out / "images").mkdir(parents=True, exist_ok=True)
    scan = scan_coco(a.coco, load_config(None, []).data)  # the adapter's reading: damage vs part, quarantine
    records = []
    for cand in scan.candidates:
        boxes = [(ann, box(ann.points)) for ann in cand.annotations]
        damage = [b for ann, b in boxes if ann.kind == "damage"]
        with Image.open(a.coco / cand.path) as src:
            img = src.convert("RGB")
        for k, (ann, b) in enumerate(boxes):
            if ann.kind == "damage":
                label = "damaged"
            elif max([overlap(b, d) for d in damage] + [0.0]) < 0.05:
                label = "clean"
            else:
                continue
            name = f"{Path(cand.path).with_suffix('').as_posix().replace('/', '_')}_{k}.png"
            img.crop(square(b, *img.size)).convert("L").save(out / "images" / name)
            records.append({"path": f"images/{name}", "label": label, "group": cand.path, "license": cand.license})
    with open(out / "manifest.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    counts = collections.Counter(r["label"] for r in records)
    print(f"{out}: {len(records)} grayscale crops from {len({r['group'] for r in records})} photos: {dict(counts)}"
          f" ({len(scan.quarantine)} files or shapes quarantined by the COCO reader)")


if __name__ == "__main__":
    main()
