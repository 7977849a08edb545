"""The network for model loading: off by default, lifted for one load when the config allows it.

Runs are offline (`core.workspace.OFFLINE_ENV` sets HF_HUB_OFFLINE=1, so a missing hub model
fails at once instead of after a minute of retries). With downloads allowed (`embed.allow_download`,
`train.allow_download`), `try_download` probes the host, lifts the hub's offline switch for that one
load (`hub_online`) and restores it afterwards; what happened goes into the caller's list of what was
tried. `hf_cached` looks files up in the local HF hub cache (`hub_cache_dir`) without the network.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar
from urllib.parse import urlparse

HUB_HOST = "huggingface.co"
HUB_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
PROBE_TIMEOUT_S = 3.0
T = TypeVar("T")


def probe(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when `host` answers on `port`, else why not."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return None
    except OSError as exc:
        return f"{host}:{port} unreachable ({type(exc).__name__}: {exc})"


@contextmanager
def hub_online() -> Iterator[None]:
    """Lift the Hugging Face hub's offline switch for the duration of one load, then restore it.

    HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE are read by huggingface_hub once, at import, into
    `huggingface_hub.constants.HF_HUB_OFFLINE` (which transformers, timm, open_clip and
    sentence-transformers consult through it), so both the variables and the constant change.
    The environment is process-wide: do not load models from other threads meanwhile.
    """
    import huggingface_hub.constants as hub_constants

    saved_env = {k: os.environ.get(k) for k in HUB_OFFLINE_VARS}
    saved_const = hub_constants.HF_HUB_OFFLINE
    for key in HUB_OFFLINE_VARS:
        os.environ[key] = "0"
    hub_constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        hub_constants.HF_HUB_OFFLINE = saved_const


def try_download(host: str, fetch: Callable[[], T], tried: list[str], allowed: bool,
                 key: str | None = "embed.allow_download") -> T | None:
    """`fetch()` with the hub online, when downloads are allowed and `host` answers; else None.

    What happened is appended to `tried` (for the ModelUnavailable message); `key` is the caller's
    config switch for downloads (None: it has none).
    """
    if not allowed:
        why = f"{key}=false" if key else "no download switch here"
        tried.append(f"download: not attempted ({why}; runs are offline by default)")
        return None
    with hub_online():
        why = probe(host)
        if why is None:
            try:
                return fetch()
            except Exception as exc:  # noqa: BLE001 - any failed download means: not available
                why = f"failed ({type(exc).__name__}: {str(exc)[:300]})"
    switch = f" ({key}=true)" if key else ""
    tried.append(f"download from {host} with HF_HUB_OFFLINE lifted for this load{switch}: {why}")
    return None


def hub_cache_dir() -> str:
    """The local HF hub cache (under HF_HOME)."""
    import huggingface_hub.constants as hub_constants

    return str(hub_constants.HF_HUB_CACHE)


def hf_cached(repo_id: str, filenames: list[str]) -> str | None:
    """The first of `filenames` of hub repo `repo_id` in the local cache, without the network."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        hit = try_to_load_from_cache(repo_id, name)
        if isinstance(hit, str):
            return hit
    return None


def host_of(url: str | None) -> str:
    """The host a weights URL downloads from (the hub when there is no URL)."""
    return (urlparse(url).hostname or HUB_HOST) if url else HUB_HOST
