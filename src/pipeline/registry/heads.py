"""The embedding study's heads in the MLflow registry: `register_head` (a cell's head as a version of
`<experiment>-embedding-head`, alias `best`) and `head_from_registry` (a version or alias back to the
embedding_cell artifact id `embed.head` takes). `embed.head: registry:<alias or version>` is resolved
through `core.phases.resolve_reference('embed_head', ...)`, registered here.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pipeline.core.phases import register_resolver

HEAD_MODEL = "embedding-head"


def register_head(tracking_uri: str, experiment: str, head_dir: Path, tags: dict[str, str], alias: str = "best") -> str:
    """Register a head directory as a version of `<experiment>-embedding-head` with `alias` (idempotent by the
    weights' and head.json's sha256); returns the version."""
    import tempfile

    from pipeline.core.hashing import sha256_bytes, sha256_file
    from pipeline.registry.versions import ensure_registered, experiment_id, registry_client

    client = registry_client(tracking_uri)
    name = f"{experiment}-{HEAD_MODEL}"
    sha = sha256_bytes((sha256_file(head_dir / "model.safetensors") + sha256_file(head_dir / "head.json")).encode())
    ensure_registered(client, name)
    found = [mv for mv in client.search_model_versions(f"name = '{name}'") if mv.tags.get("sha256") == sha]
    if found:  # the same weights again (e.g. a cell recomputed under a new phase version): point the
        mv = found[0]  # version at the artifact that made them now, which `head_from_registry` resolves to
        for key, value in tags.items():
            if mv.tags.get(key) != value:
                client.set_model_version_tag(name, mv.version, key, value)
    else:
        run = client.create_run(experiment_id(client, experiment), run_name=f"register {name}",
                                tags={"pipeline.registered_model": name})
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(head_dir, Path(tmp) / "head")
            client.log_artifacts(run.info.run_id, str(Path(tmp) / "head"), "head")
        mv = client.create_model_version(name, f"{run.info.artifact_uri}/head", run_id=run.info.run_id,
                                         tags={"sha256": sha, **tags})
        client.set_terminated(run.info.run_id)
    client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def head_from_registry(tracking_uri: str, experiment: str, ref: str) -> str:
    """The embedding_cell artifact id of registered head version `ref` ('registry:best', 'best' or a version
    number) of `<experiment>-embedding-head`: what `embed.head` takes."""
    from pipeline.registry.versions import registry_client, resolve_version

    ref = ref.removeprefix("registry:")
    mv = resolve_version(registry_client(tracking_uri), f"{experiment}-{HEAD_MODEL}", int(ref) if ref.isdigit() else ref)
    return str(mv.tags["artifact_id"])


def _resolve_head(ref: str, cfg: Any, runtime: dict[str, Any]) -> str:
    from pipeline.core.workspace import Workspace

    uri = Workspace(Path(runtime.get("workdir", "."))).tracking_uri(cfg)
    return head_from_registry(uri, cfg.tracking.experiment, ref)


register_resolver("embed_head", _resolve_head)
