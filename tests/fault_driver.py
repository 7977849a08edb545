"""Run one `pipeline` command with a test-only kill hook (used by tests/fault_harness.py; production code
reads nothing of this).

    python tests/fault_driver.py '<json spec>'

spec: {"argv": [pipeline CLI arguments], "target": phase or null, "kill_at": k, "delay_s": d,
       "counts": path or null}

A sys.addaudithook counts the file-system events (open, rename/replace, mkdir, remove, rmtree, copy,
link, sqlite connect) on paths under the work dir or the dataset (not the interpreter's own imports or a
shared font cache, which vary from run to run) while each phase's `execute_phase` runs in this (the
flow) process;
at the k-th event of the target phase it SIGKILLs this process, after `delay_s` seconds (so the kill can
land inside the write that follows the event). With `counts`, the per-phase event counts are written
there when the command ends (the reference run).
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import threading
from collections import Counter

EVENTS = frozenset({"open", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree",
                    "shutil.copyfile", "shutil.copytree", "os.link", "os.truncate", "sqlite3.connect"})


def under(roots: tuple[str, ...], args: tuple) -> bool:
    """Whether an audit event's first path arguments lie under one of `roots` (realpaths)."""
    for a in args[:2]:
        if isinstance(a, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(a)).startswith(roots):
            return True
    return False


def roots_of(argv: list[str]) -> tuple[str, ...]:
    return tuple(os.path.realpath(argv[argv.index(flag) + 1]) for flag in ("--workdir", "--dataset") if flag in argv)


def main() -> None:
    spec = json.loads(sys.argv[1])
    target, kill_at, delay = spec.get("target"), int(spec.get("kill_at") or 0), float(spec.get("delay_s") or 0)
    state = {"phase": None, "fired": False}
    counts: Counter[str] = Counter()

    def kill() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    roots = roots_of(spec["argv"])

    def hook(event: str, args: tuple) -> None:
        if event not in EVENTS or state["phase"] is None or not under(roots, args):
            return
        phase = state["phase"]
        counts[phase] += 1
        if phase == target and counts[phase] == kill_at and not state["fired"]:
            state["fired"] = True
            if delay > 0:
                threading.Timer(delay, kill).start()
            else:
                kill()

    sys.addaudithook(hook)
    import pipeline_tasks.phase as task_phase

    real = task_phase.execute_phase

    def execute_phase(name, *args, **kwargs):
        state["phase"] = name
        try:
            return real(name, *args, **kwargs)
        finally:
            state["phase"] = None

    task_phase.execute_phase = execute_phase
    if spec.get("counts"):
        atexit.register(lambda: open(spec["counts"], "w").write(json.dumps(counts)))
    from pipeline.app.cli import app

    app(spec["argv"])


if __name__ == "__main__":
    main()
