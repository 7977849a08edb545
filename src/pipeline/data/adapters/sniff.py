"""Guess which dataset format a folder holds, to say so when the chosen adapter finds nothing usable."""
from __future__ import annotations

import posixpath
from collections import Counter
from pathlib import Path

from pipeline.core.config import DataConfig
from pipeline.data.adapters.common import is_image, list_root
from pipeline.data.adapters.labelme import NAME_RE

HEAD_BYTES = 65_536  # JSON files are recognised by their first bytes; a COCO file can be huge
MAX_JSON = 200  # JSON files opened at most


def _json_kind(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            head = fh.read(HEAD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None
    if '"shapes"' in head:
        return "labelme"
    if '"images"' in head and ('"annotations"' in head or '"categories"' in head):
        return "coco"
    return None


def sniff_format(root: Path, data_cfg: DataConfig) -> tuple[str | None, str]:
    """(the format the files look like or None, the evidence in words)."""
    root = Path(root)
    if not root.is_dir():
        return None, f"{root} is not a folder"
    files = list_root(root).usable
    if not files:
        return None, "no files"
    seen: Counter[str] = Counter()
    n_json = 0
    for rel in files:
        name = posixpath.basename(rel)
        suffix = posixpath.splitext(name)[1].lower()
        if NAME_RE.match(name):
            seen["labelme names"] += 1
        if suffix == ".jsonl":
            seen["jsonl files"] += 1
        elif suffix == ".json" and n_json < MAX_JSON:
            n_json += 1
            kind = _json_kind(root / rel)
            if kind:
                seen[f"{kind} json files"] += 1
        elif is_image(name, data_cfg):
            seen["images in subfolders" if "/" in rel else "images at the root"] += 1
    evidence = ", ".join(f"{n} {what}" for what, n in sorted(seen.items())) or "nothing recognisable"
    evidence = f"{len(files)} files: {evidence}"
    if seen["coco json files"]:
        return "coco", evidence
    if seen["jsonl files"]:
        return "jsonl", evidence
    if seen["labelme names"] or seen["labelme json files"]:
        return "labelme", evidence
    if seen["images in subfolders"]:
        return "folders", evidence
    return None, evidence
