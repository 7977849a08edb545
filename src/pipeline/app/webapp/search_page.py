"""The Search page: a text or an image query, filters, a grid of crops; a clicked crop's source photo
with its box and its lineage. Everything it computes comes from `backend`."""
from __future__ import annotations

from typing import Any

import streamlit as st

from pipeline.app.webapp import backend
from pipeline.core.errors import ConfigError
from pipeline.core.store import ArtifactNotFound

COLUMNS = 4
QUERY_ERRORS = (ValueError, OSError, ConfigError, ArtifactNotFound)


@st.cache_resource(show_spinner="Opening the index...")
def opened_index(workdir: str, index_id: str) -> Any:
    """The index and its metadata (no models yet): enough for the filters."""
    return backend.open_retriever(backend.AppContext.open(workdir), index_id, load_models=False)


@st.cache_resource(show_spinner="Loading the embedding models (first query after start)...")
def loaded_models(workdir: str, index_id: str) -> bool:
    """Loads the embedder into the cached retriever once; later queries reuse it."""
    opened_index(workdir, index_id).embedder  # noqa: B018
    return True


def _filters(retriever: Any) -> dict[str, Any]:
    facets = backend.facets(retriever)
    zones = facets["zones"]
    with st.sidebar:
        st.subheader("Filters")
        k = st.number_input("Results (k)", min_value=1, max_value=100, value=12, key="k")
        chosen = st.multiselect("Zones", list(zones), format_func=lambda z: f"{z} {zones[z]}".strip(), key="zones")
        damaged = st.radio("Damaged", list(backend.DAMAGED), horizontal=True, key="damaged")
        types = st.multiselect("Damage types", facets["damage_types"], key="damage_types")
    return {"k": int(k), "zones": chosen, "damaged": damaged, "damage_types": types}


def _query() -> tuple[Any, str | None]:
    mode = st.radio("Query by", ["text", "image"], horizontal=True, key="mode")
    if mode == "text":
        text = st.text_input("Describe the damage", placeholder="deep scratch on the driver door", key="text")
        return (text or None), None
    upload = st.file_uploader("Photo or crop", key="upload")
    if upload is None:
        return None, None
    image, problem = backend.read_upload(upload.getvalue())
    if image is not None:
        st.image(image, caption=f"query: {upload.name}", width=160)
    return image, problem


def _grid(hits: list[dict[str, Any]]) -> None:
    for start in range(0, len(hits), COLUMNS):
        for col, hit in zip(st.columns(COLUMNS), hits[start:start + COLUMNS]):
            with col:
                st.image(hit["crop_path"], width="stretch")
                state = "damaged" if hit["has_damage"] else "clean"
                st.markdown(f"**#{hit['rank']}** score {hit['score']:.3f} · zone {hit['zone']} "
                            f"{hit.get('zone_name') or ''} · {state}")
                st.caption(f"{', '.join(hit['damage_types'] or []) or 'no damage type'} — {hit.get('text') or ''}")
                if st.button("Source photo and lineage", key=f"sel-{hit['crop_id']}"):
                    st.session_state["selected"] = hit["crop_id"]


def _details(ctx: backend.AppContext, retriever: Any, index_id: str, crop_id: str) -> None:
    st.subheader(f"Crop {crop_id[:12]}")
    photo, caption = backend.source_view(ctx, retriever, index_id, crop_id)
    if photo is None:
        st.warning(caption)
    else:
        st.image(photo, caption=caption, width=640)
    lineage = backend.hit_lineage(ctx, index_id)
    st.markdown("**Made by run(s):** " + (", ".join(f"`{r['flow_run_id'][:8]}` {r['flow']} {r['started_at']}"
                                                    for r in lineage["runs"]) or "no run record"))
    if lineage.get("error"):
        st.warning(lineage["error"])
    st.table([{**a, "artifact_id": a["artifact_id"][:16]} for a in lineage["artifacts"]])


def render(workdir: str) -> None:
    st.title("Search")
    ctx = backend.AppContext.open(workdir)
    choices = backend.index_choices(ctx)
    if not choices:
        st.info(f"No index in {ctx.workdir} yet: run `pipeline run retrieval --workdir {ctx.workdir} ...` first.")
        return
    labels = {c["artifact_id"]: c["label"] for c in choices}
    with st.sidebar:
        index_id = st.selectbox("Index", list(labels), format_func=labels.get, key="index")
    try:
        retriever = opened_index(str(ctx.workdir), index_id)
    except QUERY_ERRORS as exc:
        st.error(f"Cannot open index {index_id[:12]}: {exc}")
        return
    filters = _filters(retriever)
    query, problem = _query()
    if problem:
        st.error(problem)
        return
    if query is None:
        st.info("Type a text or upload an image to search.")
        return
    try:
        loaded_models(str(ctx.workdir), index_id)
        outcome = backend.search(retriever, query, **filters)
    except QUERY_ERRORS as exc:
        st.error(f"The query failed: {exc}")
        return
    if outcome.message:
        st.warning(outcome.message)
        return
    st.caption(f"{len(outcome.hits)} result(s) from index {index_id[:12]}")
    _grid(outcome.hits)
    selected = st.session_state.get("selected")
    if selected and selected in {h["crop_id"] for h in outcome.hits}:
        _details(ctx, retriever, index_id, selected)
