"""Real-photo proxy sets for the held-out checks' layouts, cut from a COCO damage + parts dataset.

    python bench/proxy_sets.py --coco ../shared/data/car-damage-coco --out bench-work/proxy

Writes `gray2/`: a JSONL set of grayscale PNG crops, two classes (`damaged`: a damage polygon's box;
`clean`: a car-part box that overlaps no damage box by 5% of its area or more), each record's `group` its
source photo (so the split keeps a photo's crops together), `license` from the dataset. Run the train flow
on it as the held-out checks do (`--format jsonl --set train.epochs=4 --set train.image_size=160`), then
`bench/recipe_cv.py` on that work dir. Boxes are squared and padded by 1.3x (at least 96 px).
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path


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

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--coco", type=Path, required=True, help="folder with <split>/annotations.json and images")
    ap.add_argument("--out", type=Path, default=Path("bench-work/proxy"))
    a = ap.parse_args()
    out = a.out / "gray2"
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for ann_file in sorted(a.coco.glob("*/annotations.json")):
        split = ann_file.parent.name
        coco = json.loads(ann_file.read_text())
        names = {c["id"]: c["name"] for c in coco["categories"]}
        licence = (coco.get("licenses") or [{}])[0].get("name", "")
        by_image = collections.defaultdict(list)
        for ann in coco["annotations"]:
            by_image[ann["image_id"]].append(ann)
        for im in coco["images"]:
            anns = by_image[im["id"]]
            damage = [x["bbox"] for x in anns if names[x["category_id"]] == "damage"]
            with Image.open(ann_file.parent / im["file_name"]) as src:
                img = src.convert("RGB")
            for k, ann in enumerate(anns):
                if names[ann["category_id"]] == "damage":
                    label = "damaged"
                elif max([overlap(ann["bbox"], d) for d in damage] + [0.0]) < 0.05:
                    label = "clean"
                else:
                    continue
                name = f"{split}_{Path(im['file_name']).stem}_{k}.png"
                img.crop(square(ann["bbox"], *img.size)).convert("L").save(out / "images" / name)
                records.append({"path": f"images/{name}", "label": label, "group": f"{split}/{im['file_name']}",
                                "license": licence})
    with open(out / "manifest.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    counts = collections.Counter(r["label"] for r in records)
    print(f"{out}: {len(records)} grayscale crops from {len({r['group'] for r in records})} photos: {dict(counts)}")


if __name__ == "__main__":
    main()
