"""Per-file work under a time and a memory bound: each call runs in a worker process, so a pathological
file (a decoder that loops, allocates without end, or crashes) costs its own bound and nothing else.

`run_bounded(fn, args, workers, seconds, memory_mb)` calls the module-level function `fn` ("module:name")
once per argument tuple in `workers` processes and returns one `Outcome` per tuple, in order: `ok`
(with the value), `timeout` (the worker was killed after `seconds`), `memory` (a MemoryError under the
worker's address-space limit: what it had mapped at start plus `memory_mb`), `crash` (the worker died:
a signal or an exit) or `error` (an exception, with its text). A killed or dead worker is replaced.

Workers are forked from multiprocessing's fork server (a clean, single-threaded process; never from a
threaded flow process), with the imports of `fn`'s module preloaded there, so starting one is cheap.
Every worker is stopped when the call returns or fails.
"""
from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

from pipeline.core.errors import PipelineError

PRELOAD = ["pipeline.data.images", "numpy", "PIL.Image", "PIL.ImageOps", "PIL.PngImagePlugin", "PIL.JpegImagePlugin",
           "PIL.TiffImagePlugin", "PIL.GifImagePlugin", "imagehash", "scipy.fftpack"]


READY = ("ready",)  # a worker's first message: it started and imported its function


class WorkersCannotStart(PipelineError):
    """A worker process died before it could take any work: nothing it would decode can be judged (a retry
    cannot help; the message says what to change)."""


@dataclass
class Outcome:
    status: str  # ok | timeout | memory | crash | error
    value: Any = None
    detail: str = ""


def _limit_memory(memory_mb: int) -> None:
    try:
        import resource

        with open("/proc/self/statm") as fh:
            mapped = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = mapped + memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, OSError, ValueError):  # no /proc or no RLIMIT_AS: the time bound still holds
        pass


def _worker(conn: Connection, fn_ref: str, memory_mb: int) -> None:
    module, name = fn_ref.split(":")
    fn = getattr(importlib.import_module(module), name)
    _limit_memory(memory_mb)
    conn.send(READY)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        index, args = msg
        try:
            reply = (index, "ok", fn(*args), "")
        except MemoryError:
            reply = (index, "memory", None, f"needed more than {memory_mb} MB")
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
            reply = (index, "error", None, f"{type(exc).__name__}: {exc}"[:500])
        try:
            conn.send(reply)
        except MemoryError:
            conn.send((index, "memory", None, f"needed more than {memory_mb} MB"))


def _context() -> mp.context.BaseContext:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        try:
            ctx.set_forkserver_preload(PRELOAD)
        except (AttributeError, ValueError):
            pass
        return ctx
    return mp.get_context("spawn")


class _Slot:
    """One worker process and what it is doing."""

    def __init__(self, ctx: Any, fn_ref: str, memory_mb: int) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, fn_ref, memory_mb), daemon=True)
        self.proc.start()
        child.close()
        self.task: int | None = None
        self.started = 0.0
        self.ready = False

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
        self.conn.close()


def _death(proc: Any) -> str:
    code = proc.exitcode
    if code is not None and code < 0:
        try:
            import signal

            return f"the worker died of signal {signal.Signals(-code).name}"
        except ValueError:
            return f"the worker died of signal {-code}"
    return f"the worker exited with code {code}"


def run_bounded(fn_ref: str, args: Sequence[tuple], workers: int, seconds: float, memory_mb: int,
                on_done: Callable[[], None] | None = None) -> list[Outcome]:
    """Run `fn_ref` (module:function) on every tuple of `args` under the bounds (module docstring)."""
    out: list[Outcome | None] = [None] * len(args)
    if not args:
        return []
    ctx = _context()
    todo = list(range(len(args)))[::-1]
    slots = [_Slot(ctx, fn_ref, memory_mb) for _ in range(max(1, min(workers, len(args))))]
    try:
        while todo or any(s.task is not None for s in slots):
            for s in slots:
                if s.task is None and todo:
                    s.task, s.started = todo.pop(), time.monotonic()
                    s.conn.send((s.task, args[s.task]))
            busy = [s for s in slots if s.task is not None]
            left = min(s.started + seconds for s in busy) - time.monotonic()
            ready = wait([s.conn for s in busy], timeout=max(left, 0.0))
            for i, s in enumerate(slots):
                if s.task is None:
                    continue
                if s.conn in ready:
                    try:
                        msg = s.conn.recv()
                    except (EOFError, OSError):
                        s.proc.join(timeout=5)
                        if not s.ready:
                            raise WorkersCannotStart(
                                f"the bounded worker processes cannot start ({_death(s.proc)} before taking any "
                                f"work). When the pipeline is called from a script, multiprocessing re-imports that "
                                f"script in each worker: put the call under `if __name__ == \"__main__\":`; or set "
                                f"audit.isolate=false to decode in threads (without the time and memory bounds)"
                            ) from None
                        out[s.task] = Outcome("crash", detail=_death(s.proc))
                        s.stop(kill=True)
                        slots[i] = _Slot(ctx, fn_ref, memory_mb)
                    else:
                        if msg == READY:
                            s.ready = True
                            continue
                        index, status, value, detail = msg
                        out[index] = Outcome(status, value, detail)
                        s.task = None
                        if status == "memory":  # its heap may be fragmented near the limit: start afresh
                            s.stop()
                            slots[i] = _Slot(ctx, fn_ref, memory_mb)
                    if on_done:
                        on_done()
                elif time.monotonic() - s.started > seconds:
                    out[s.task] = Outcome("timeout", detail=f"took longer than {seconds:g} s")
                    s.stop(kill=True)
                    slots[i] = _Slot(ctx, fn_ref, memory_mb)
                    if on_done:
                        on_done()
    finally:
        for s in slots:
            s.stop(kill=s.task is not None)
    return [o if o is not None else Outcome("crash", detail="no answer") for o in out]
