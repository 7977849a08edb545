"""The temporary Prefect server a flow process starts when no server is configured, tied to that process.

Prefect stops its ephemeral server only at a normal exit: a `pipeline run` killed with SIGKILL left it
running. `tie_prefect_ephemeral_server()` makes Prefect start it through `pipeline.app.process.tied_command`
(PR_SET_PDEATHSIG), so it dies with the flow process whatever ends it.
"""
from __future__ import annotations

import subprocess
from typing import Any

from pipeline.app.process import tied_command


class _TiedSubprocess:
    """The `subprocess` module as one module sees it: its Popen runs Python commands tied to this process."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def Popen(self, args: Any = None, *rest: Any, **kwargs: Any) -> subprocess.Popen:  # noqa: N802
        return self._real.Popen(tied_command(list(args)) if isinstance(args, (list, tuple)) else args, *rest, **kwargs)


def tie_prefect_ephemeral_server() -> bool:
    """Make the temporary Prefect server a flow process starts (no server configured) die with that process,
    even when it is SIGKILLed (Prefect stops it only at a normal exit); False if Prefect has no such server."""
    try:
        import prefect.server.api.server as server
    except ImportError:
        return False
    if not hasattr(server, "SubprocessASGIServer") or not hasattr(server, "subprocess"):
        return False
    if not isinstance(server.subprocess, _TiedSubprocess):
        server.subprocess = _TiedSubprocess(server.subprocess)
    return True
