"""Folders adapter: `root/<label>/**/<image>`; the top folder names the class.

Images nested deeper take their top folder as label. Folders named `no_damage`, `ok` or `clean`
mean undamaged and map to the label `no_damage`; any other folder is a damage class
(damage_types = [label]). Files at the root and non-images are `unsupported_file`.
group_id = the image path.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.core.config import DataConfig
from pipeline.data.manifest import NO_DAMAGE_LABEL, Candidate, QuarantineEntry
from pipeline.data.adapters.common import Limits, ScanResult, is_image, list_root, read_meta

CLEAN_FOLDERS = frozenset({NO_DAMAGE_LABEL, "ok", "clean"})


def scan_folders(root: Path, data_cfg: DataConfig, limits: Limits | None = None) -> ScanResult:
    """Read a class-per-folder dataset (see the module docstring)."""
    listing = list_root(root)
    meta = read_meta(root)
    quarantine = list(listing.quarantine)
    candidates = []
    for rel in listing.usable:
        folder, sep, _ = rel.partition("/")
        if not sep:
            quarantine.append(QuarantineEntry(rel, "unsupported_file", "file at the root; expected <label>/<image>"))
        elif not is_image(rel, data_cfg):
            quarantine.append(QuarantineEntry(rel, "unsupported_file", "not an image (data.image_extensions)"))
        else:
            damaged = folder not in CLEAN_FOLDERS
            label = folder if damaged else NO_DAMAGE_LABEL
            candidates.append(
                Candidate(
                    path=rel,
                    source_format="folders",
                    label=label,
                    group_id=rel,
                    has_damage=damaged,
                    damage_types=[label] if damaged else [],
                    license=meta.license,
                    synthetic=meta.synthetic,
                )
            )
    return ScanResult(candidates, quarantine, listing.files)
