"""`pipeline app`: run the Streamlit app on 127.0.0.1 as a subprocess (headless, no usage stats,
no browser, no file watcher)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.app.webapp.backend import UPLOAD_MAX_MB, WORKDIR_ENV

MAIN = Path(__file__).with_name("main.py")


def streamlit_command(port: int, address: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(MAIN),
            "--server.address", address, "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--server.runOnSave", "false", "--global.developmentMode", "false",
            "--theme.base", "light", "--client.toolbarMode", "minimal",
            "--server.maxUploadSize", str(UPLOAD_MAX_MB)]


def app_env(workdir: Path) -> dict[str, str]:
    """The environment of the app process: the work dir, and Streamlit's state kept out of $HOME."""
    from pipeline.core.workspace import Workspace

    ws = Workspace(Path(workdir).resolve())
    env = {**os.environ, WORKDIR_ENV: str(ws.root), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    return env


def start(workdir: Path, port: int, address: str = "127.0.0.1", **popen: object) -> subprocess.Popen:
    """Start the app; the caller waits on (or terminates) the process."""
    import importlib.util

    if importlib.util.find_spec("streamlit") is None:
        raise ModuleNotFoundError("streamlit is not installed: pip install 'vdamage-pipeline[app]'")
    return subprocess.Popen(streamlit_command(port, address), env=app_env(workdir), **popen)  # noqa: S603
