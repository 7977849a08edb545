"""The export artifact and the MLflow registry: passing variants attached to a student version,
and the champion's browser variant served by `pipeline serve-model`.

A registered version gains `export/<variant>/` artifacts (model files + card.json) in its run for
every admitted variant, `export/export.json`, and version tags `pipeline.export.passed`,
`pipeline.export.browser_variant` (or "none") and `pipeline.export.artifact`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError

PASSED_TAG, BROWSER_TAG, ARTIFACT_TAG = "pipeline.export.passed", "pipeline.export.browser_variant", "pipeline.export.artifact"


def read_summary(export_dir: Path) -> dict[str, Any]:
    path = Path(export_dir) / "export.json"
    if not path.is_file():
        raise ConfigError(f"not an export artifact (no export.json): {export_dir}")
    return json.loads(path.read_text())


def browser_variants(export_dir: Path) -> list[str]:
    """The admitted TF.js variants, the served one first (cards.BROWSER_ORDER): promotion needs at least one."""
    return list(read_summary(export_dir)["browser_variants"])


def attach_variants(client: Any, mv: Any, export_dir: Path) -> list[str]:
    """Log the admitted variants of `export_dir` into version `mv`'s run and tag the version."""
    export_dir = Path(export_dir)
    summary = read_summary(export_dir)
    for name in summary["passed"]:
        client.log_artifacts(mv.run_id, str(export_dir / summary["variants"][name]["dir"]), f"export/{name}")
    client.log_artifact(mv.run_id, str(export_dir / "export.json"), "export")
    browser = summary["browser_variants"][0] if summary["browser_variants"] else "none"
    for key, value in ((PASSED_TAG, ",".join(summary["passed"]) or "none"), (BROWSER_TAG, browser),
                       (ARTIFACT_TAG, export_dir.name)):
        client.set_model_version_tag(mv.name, mv.version, key, value)
    return list(summary["passed"])


def browser_model_dir(client: Any, name: str, ref: str | int, cache_dir: Path) -> Path:
    """The TF.js variant (model.json + shards + card.json) of version `ref` of `name`, downloaded once."""
    from pipeline.registry.versions import resolve_version

    mv = resolve_version(client, name, ref)
    variant = mv.tags.get(BROWSER_TAG)
    if not variant or variant == "none":
        raise ConfigError(f"{name} version {mv.version} ({ref}) has no TF.js variant that passed the export gate")
    dst = Path(cache_dir) / name / str(mv.version)
    local = dst / "export" / variant
    if not (local / "model.json").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        client.download_artifacts(mv.run_id, f"export/{variant}", str(dst))
    return local
