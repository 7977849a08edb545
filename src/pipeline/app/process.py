"""Background processes of `pipeline up`: start one in its own session with its output in a log,
recognise it later (PID, command line and start time, so a recycled PID is never taken for it),
wait until it is ready, and stop it with its process group and descendants.

Foreground commands that own children (`pipeline app`, `pipeline serve-model`, `pipeline up` while it
starts the stack) turn SIGTERM and SIGHUP into `Terminated`, a KeyboardInterrupt, with
`signals_unwind()`: the same clean-up as Ctrl-C runs, so a terminated command (a test, a process
manager, `docker stop`) stops its children. `run_foreground` waits for a child started in its own
session (`child_options()`: it also gets SIGTERM if its parent dies, even by SIGKILL) and stops its
whole process group on any of these signals. `tied_command` wraps a Python command the same way;
`pipeline_tasks.ephemeral` applies it to the temporary Prefect server a `pipeline run` starts when no
server is configured (the Prefect side stays out of the library).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil  # a hard dependency of ultralytics

from pipeline.core.store import process_start

STOP_TIMEOUT = 15.0

# Keeps the Popen objects of this process's children referenced (no "still running" warnings).
_CHILDREN: dict[int, subprocess.Popen] = {}


class ServiceError(RuntimeError):
    """A service could not be started (port taken, crash, timeout)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C, so the same clean-up stops the children."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


@contextmanager
def signals_unwind(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """Within the block, `signums` raise `Terminated` in the main thread (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    previous = {s: signal.signal(s, raise_terminated) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# Run a Python command so that it gets SIGTERM when the process that started it dies, even by SIGKILL:
# PR_SET_PDEATHSIG survives exec; a parent already gone by then is caught by the ppid check.
_TIED = ("import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 15); os.getppid() == int(sys.argv[1]) or os._exit(1); "
         "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")


def tied_command(cmd: list[str]) -> list[str]:
    """`cmd` (`[python, ...]`) wrapped so the child dies with this process (Linux; elsewhere unchanged)."""
    if not sys.platform.startswith("linux") or not cmd or cmd[0] != sys.executable:
        return list(cmd)
    return [sys.executable, "-c", _TIED, str(os.getpid()), *cmd[1:]]


def child_options() -> dict[str, Any]:
    """Popen options of a foreground command's child: its own session (so its whole group can be
    stopped) and, on Linux, SIGTERM when its parent dies."""
    opts: dict[str, Any] = {"start_new_session": True}
    if sys.platform.startswith("linux"):
        opts["preexec_fn"] = _die_with_parent
    return opts


def stop_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process group of `proc` (started with child_options), then SIGKILL what is left."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        family = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except OSError:
        pass
    for p in family:  # descendants that left the group
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def run_foreground(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """Wait for `proc`; on Ctrl-C, SIGTERM or SIGHUP stop its process group and return 128 + the signal."""
    sigint = signal.getsignal(signal.SIGINT)
    with signals_unwind():
        try:
            return proc.wait()
        except KeyboardInterrupt as exc:
            if threading.current_thread() is threading.main_thread():  # a second signal must not cut it short
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(s, signal.SIG_IGN)
            try:
                stop_group(proc, timeout)
            finally:
                if threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGINT, sigint)
            return 128 + getattr(exc, "signum", signal.SIGINT)


def bin_path(name: str) -> str:
    """The console script `name` next to this interpreter (the venv's), else on PATH."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else (shutil.which(name) or name)


def log_tail(path: str | Path, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def live_process(entry: dict[str, Any]) -> psutil.Process | None:
    """The live process an entry names, or None if gone, a zombie, or a different program."""
    try:
        proc = psutil.Process(int(entry["pid"]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        args = list(entry.get("cmd") or [])[1:]  # argv[0] may show up as `python <script>`
        cmdline = proc.cmdline()
        if not args or cmdline[-len(args):] != args:
            return None
        if entry.get("start") is not None:
            if abs(process_start(proc.pid) - int(entry["start"])) > 1:
                return None
        elif entry.get("create_time") is not None:  # a state file written before `start`
            if abs(proc.create_time() - float(entry["create_time"])) > 1.0:
                return None
        return proc
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def spawn(name: str, cmd: list[str], env: dict[str, str], logs: Path, cwd: Path) -> dict[str, Any]:
    """Start `cmd` in its own session, output to logs/<name>.log; return its state entry."""
    log_path = logs / f"{name}.log"
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                env=env, cwd=str(cwd), start_new_session=True)
    _CHILDREN[proc.pid] = proc
    try:
        start: int | None = process_start(proc.pid)
    except psutil.Error:
        start = None
    return {"pid": proc.pid, "cmd": cmd, "start": start, "log": str(log_path)}


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def stop(entries: dict[str, dict[str, Any]], timeout: float = STOP_TIMEOUT) -> list[str]:
    """SIGTERM each verified process group (and descendants), wait, then SIGKILL what is left."""
    stopped: list[str] = []
    procs: list[psutil.Process] = []
    for name, entry in entries.items():
        leader = live_process(entry)
        if leader is None:
            continue
        try:
            family = [leader, *leader.children(recursive=True)]
        except psutil.Error:
            family = [leader]
        grouped: set[int] = set()
        try:
            if os.getpgid(leader.pid) == leader.pid:
                os.killpg(leader.pid, signal.SIGTERM)
                grouped = {p.pid for p in family if _pgid(p.pid) == leader.pid}
        except OSError:
            pass
        for p in family:  # one SIGTERM each: a second one makes a Prefect worker SIGKILL itself
            if p.pid not in grouped:
                try:
                    p.terminate()  # psutil refuses if the PID was reused meanwhile
                except psutil.Error:
                    pass
        procs.extend(family)
        stopped.append(name)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    for entry in entries.values():
        child = _CHILDREN.pop(int(entry.get("pid", -1)), None)
        if child is not None:
            try:
                child.wait(timeout=1)
            except (subprocess.TimeoutExpired, OSError):
                pass
    return stopped


def wait_until(ready: Callable[[], bool], entry: dict[str, Any], what: str, timeout: float) -> float:
    """Poll `ready` until true; raise with the log tail if the process exits or time runs out."""
    t0 = time.monotonic()
    while True:
        if ready():
            return time.monotonic() - t0
        child = _CHILDREN.get(entry["pid"])
        code = child.poll() if child is not None else None
        if code is not None or (child is None and live_process(entry) is None):
            raise ServiceError(f"{what} exited (code {code}) before it was ready; "
                               f"last lines of {entry['log']}:\n{log_tail(entry['log'])}")
        if time.monotonic() - t0 > timeout:
            raise ServiceError(f"{what} not ready after {timeout:.0f} s; "
                               f"last lines of {entry['log']}:\n{log_tail(entry['log'])}")
        time.sleep(0.5)


