"""Hostile datasets (tests/hostile_corpus.py, 40+ kinds over the four formats): every input is accounted
(accepted, or quarantined with the expected reason), nothing outside the dataset root is ever opened or
listed (a sys.addaudithook records every open in this process; the paths sent to the bounded decode
workers are recorded too), no run crashes, and per-file work is bounded (too_costly)."""
from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hostile_corpus import AUDIT, EXTENSIONS, build, outcomes
from pipeline.core.config import AuditConfig, DataConfig

_SEEN: list[str] | None = None
_LOCK = threading.Lock()
_EVENTS = {"open", "os.listdir", "os.scandir", "shutil.copyfile", "os.link", "os.symlink"}


def _hook(event: str, args: tuple) -> None:
    if _SEEN is not None and event in _EVENTS and args:
        target = args[0]
        if isinstance(target, (str, bytes, Path)):
            with _LOCK:
                _SEEN.append(target.decode("utf-8", "replace") if isinstance(target, bytes) else str(target))


sys.addaudithook(_hook)  # an audit hook cannot be removed: it records only inside `watching()`


@contextmanager
def watching():
    global _SEEN
    _SEEN = []
    try:
        yield _SEEN
    finally:
        _SEEN = None


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build(tmp_path_factory.mktemp("hostile"))


def _escapes(opened: list[str], outside: Path) -> list[str]:
    import os

    out = os.path.realpath(outside)
    return [p for p in opened if os.path.realpath(p) == out or os.path.realpath(p).startswith(out + os.sep)]


@pytest.mark.parametrize("fmt", ["labelme", "folders", "coco", "jsonl"])
def test_every_hostile_input_is_accounted_and_nothing_outside_the_root_is_opened(corpus, fmt, tmp_path, monkeypatch):
    import pipeline.data.audit as audit_mod
    from pipeline.data.adapters import scan
    from pipeline.data.dataset import snapshot

    roots, outside, kinds = corpus
    root = roots[fmt]
    sent: list[str] = []
    real = audit_mod.run_bounded

    def recording(fn, args, *a, **kw):
        sent.extend(str(t[0]) for t in args)
        return real(fn, args, *a, **kw)

    monkeypatch.setattr(audit_mod, "run_bounded", recording)
    with watching() as hashed:
        snapshot(root)  # the dataset phase hashes every file (the bytes, never parsed)
    with watching() as opened:
        audit_mod.run_audit(root, fmt, DataConfig(image_extensions=EXTENSIONS), AuditConfig(**AUDIT), tmp_path,
                            progress=False)
    assert not _escapes(hashed + opened + sent, outside), _escapes(hashed + opened + sent, outside)
    assert all(Path(p).resolve().is_relative_to(root.resolve()) for p in sent)  # decoded: only files in the root

    got = outcomes(pq.read_table(tmp_path / "manifest.parquet").to_pylist(),
                   pq.read_table(tmp_path / "quarantine.parquet").to_pylist())
    mine = [k for k in kinds if k.fmt == fmt]
    wrong = {p: (want, got.get(p)) for k in mine for p, want in k.expect.items() if got.get(p) != want}
    assert not wrong, wrong
    listed = scan(root, fmt, DataConfig(image_extensions=EXTENSIONS)).files
    assert set(listed) <= set(got), set(listed) - set(got)  # every file of the root is in one place
    never_read = [p for k in mine if "16 MB" in k.name for p in k.expect if p.endswith(".json")]
    assert not [p for p in opened if any(p.endswith(n) for n in never_read)]  # over the bound: never opened


def test_the_corpus_covers_at_least_30_kinds(corpus):
    _, _, kinds = corpus
    assert len(kinds) >= 30 and len({k.name for k in kinds}) == len(kinds)
    reasons = {v.split("+")[-1] for k in kinds for v in k.expect.values()}
    assert {"path_escape", "decompression_bomb", "too_costly", "bad_filename", "malformed_annotation",
            "decode_error", "accepted", "unsupported_file", "bad_record", "missing_file"} <= reasons


def test_bounded_work_times_out_runs_out_of_memory_and_survives_a_crashing_decoder():
    from pipeline.data.bounded import run_bounded

    out = run_bounded("time:sleep", [(0.0,), (30.0,), (0.0,)], workers=2, seconds=1.0, memory_mb=64)
    assert [o.status for o in out] == ["ok", "timeout", "ok"]
    out = run_bounded("os:urandom", [(16,), (512 * 1024 * 1024,)], workers=1, seconds=30, memory_mb=64)
    assert [o.status for o in out] == ["ok", "memory"] and len(out[0].value) == 16
    out = run_bounded("os:abort", [()], workers=1, seconds=30, memory_mb=64)
    assert out[0].status == "crash" and "SIGABRT" in out[0].detail
    out = run_bounded("json:loads", [("{",)], workers=1, seconds=30, memory_mb=64)
    assert out[0].status == "error" and "JSONDecodeError" in out[0].detail


def test_workers_that_cannot_start_say_why(tmp_path):
    """A script that calls the pipeline without a `__main__` guard: each worker re-imports it and dies at start.
    That used to quarantine every file as decode_error; now it is one clear error naming the fix."""
    import subprocess
    import sys

    script = tmp_path / "no_guard.py"
    script.write_text(
        "from pipeline.data.bounded import run_bounded\n"
        "print(run_bounded('json:loads', [('1',)], workers=1, seconds=30, memory_mb=256))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode != 0
    assert "WorkersCannotStart" in done.stderr and 'if __name__ == "__main__":' in done.stderr
    assert "audit.isolate=false" in done.stderr
