"""The artifact id a committed artifact directory records (its lineage.json): what the index names as its
inputs and what the adopted head's projection points back to."""
from __future__ import annotations

import json
from pathlib import Path


def artifact_id_of(directory: Path | None) -> str | None:
    """The artifact id recorded in a committed artifact directory's lineage.json (None if it has none)."""
    lineage = Path(directory) / "lineage.json" if directory is not None else None
    if lineage is None or not lineage.is_file():
        return None
    return json.loads(lineage.read_text(encoding="utf-8")).get("artifact_id")
