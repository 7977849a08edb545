"""Concurrent runs on one work dir: MLflow's SQLite store is created and written under one lock."""
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import pytest

from pipeline.core.tracking import MlflowTracker, db_lock, sqlite_path

# Each process waits for a start signal, then opens the tracker on the (new) database and logs a run.
WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipeline.core.tracking import MlflowTracker
    db, name, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    Path(str(go) + "." + name).touch()
    while not go.exists():
        time.sleep(0.005)
    t = MlflowTracker(f"sqlite:///{db}", "exp", artifact_root=db.parent / "mlartifacts")
    parent = t.start_flow_run(name, "data-prep", {"who": name})
    t.log_phase(parent, "audit", name * 8, False, {"k": 1}, {"n": 2.0})
    t.end_flow_run(parent)
""")


def _runs(db: Path) -> list:
    tracker = MlflowTracker(f"sqlite:///{db}", "exp")
    return tracker.client.search_runs([tracker.experiment_id], max_results=100)


@pytest.mark.slow
def test_two_processes_create_and_write_one_new_sqlite_store(tmp_path):
    db, go = tmp_path / "mlflow.db", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(db), name, str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for name in ("a", "b")]
    while not all(Path(f"{go}.{n}").exists() for n in ("a", "b")) and all(p.poll() is None for p in procs):
        time.sleep(0.01)
    go.touch()  # both processes start the schema creation at once
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    runs = _runs(db)
    assert sorted(r.data.tags.get("prefect.flow_run_id", r.data.tags.get("pipeline.phase")) for r in runs) == \
        ["a", "audit", "audit", "b"]
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.slow
def test_threads_sharing_one_tracker_never_write_at_once(tmp_path):
    db = tmp_path / "mlflow.db"
    tracker = MlflowTracker(f"sqlite:///{db}", "exp")
    parent = tracker.start_flow_run("flow-1", "retrieval", {})
    inside, most, errors = [0], [0], []
    guard = threading.Lock()

    def watched(call):
        def wrapper(*args, **kwargs):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            try:
                time.sleep(0.005)  # widen the window two unserialised writers would overlap in
                return call(*args, **kwargs)
            finally:
                with guard:
                    inside[0] -= 1
        return wrapper

    for name in ("create_run", "log_batch", "set_terminated"):
        setattr(tracker.client, name, watched(getattr(tracker.client, name)))

    def log(i: int) -> None:
        try:
            tracker.log_phase(parent, f"phase{i}", f"{i:064d}", False, {"i": i}, {"m": float(i)})
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=log, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and most[0] == 1
    children = [r for r in _runs(db) if r.data.tags.get("mlflow.parentRunId") == parent]
    assert sorted(r.data.metrics["m"] for r in children) == [float(i) for i in range(8)]


def test_one_lock_per_database_and_none_for_a_server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sqlite_path(f"sqlite:///{tmp_path}/m.db") == tmp_path / "m.db"
    assert sqlite_path("sqlite:///m.db?timeout=5") == Path("m.db") and sqlite_path("sqlite://") is None
    assert db_lock("sqlite:///m.db") is db_lock(f"sqlite:///{tmp_path}/m.db")  # one file, one lock
    assert db_lock("sqlite:///m.db") is not db_lock("sqlite:///other.db")
    assert isinstance(db_lock("http://127.0.0.1:5000"), nullcontext)
    with db_lock("sqlite:///m.db"):
        assert (tmp_path / "m.db.lock").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_pipeline_runs_at_once_on_a_new_workdir(prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from pipeline.core.config import DemoConfig
    from pipeline.demo.generator import generate_demo_data

    data, work = tmp_path / "data", tmp_path / "work"
    generate_demo_data(data, DemoConfig(n_images=24, seed=3, width=256, height=192), progress=False)
    exe = Path(sys.executable).with_name("pipeline")
    cmd = [str(exe), "run", "data-prep", "--dataset", str(data), "--format", "labelme", "--workdir", str(work), "--json"]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the session's server: no temporary ones
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=800) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outs]
    summaries = [json.loads(out) for out, _ in outs]
    assert len({s["mlflow_run_id"] for s in summaries}) == 2
    assert summaries[0]["phases"]["split"]["artifact_id"] == summaries[1]["phases"]["split"]["artifact_id"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    assert [client.get_run(s["mlflow_run_id"]).info.status for s in summaries] == ["FINISHED", "FINISHED"]
    assert not list((work / "artifacts" / ".staging").iterdir())
    from typer.testing import CliRunner

    from pipeline.app.cli import app

    res = CliRunner().invoke(app, ["gc", "--workdir", str(work), "--min-age-minutes", "0", "--json"])
    found = json.loads(res.output)  # both runs recorded every artifact: nothing to collect
    assert found["n_runs"] == 2 and found["garbage"] == [] and found["missing"] == []
    assert {tuple(k) for k in found["kept"]} >= {(p, s["artifact_id"]) for p, s in summaries[0]["phases"].items()}


# Four runs at once on one work dir, each under `run_guard` as a flow run is: artifacts, then its run record.
RUN = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path[:0] = [sys.argv[4], str(Path(sys.argv[4]) / 'core')]  # tests/ (helpers) and tests/core
    from test_integrity import run_chain
    from pipeline.core.gc import run_guard
    work, data, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    with run_guard(work):
        out = run_chain(work, data, upto="split", sets=[f"split.seed={seed}"])
        runs = work / "runs"
        runs.mkdir(exist_ok=True)
        phases = {k: {"phase": k, "artifact_id": r.artifact_id} for k, r in out.items()}
        (runs / f"run{seed}.json").write_text(json.dumps({"flow_run_id": f"run{seed}", "phases": phases}))
    print(json.dumps(phases))
""")


@pytest.mark.slow
def test_gc_under_four_concurrent_runs_collects_nothing_in_use(tmp_path):
    from pipeline.core import gc
    from pipeline.core.config import DemoConfig
    from pipeline.core.store import ArtifactStore
    from pipeline.demo.generator import generate_demo_data

    data, work = tmp_path / "data", tmp_path / "work"
    generate_demo_data(data, DemoConfig(n_images=20, seed=5, width=192, height=144, bad_examples=False), progress=False)
    store = ArtifactStore(work / "artifacts")
    tests = str(Path(__file__).parent.parent)
    procs = [subprocess.Popen([sys.executable, "-c", RUN, str(work), str(data), str(seed), tests], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in range(4)]
    refused = collected = 0
    while any(p.poll() is None for p in procs):  # gc as often as it can while the runs go on
        try:
            collected += len(gc.collect(work, store, min_age_s=0).garbage)
        except gc.GcRefused:
            refused += 1
        time.sleep(0.05)
    outs = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err[-2000:] for _, err in outs]
    assert refused > 0  # it tried while runs were live, and refused
    for out, _ in outs:
        for name, ref in json.loads(out.strip().splitlines()[-1]).items():
            assert store.is_complete(name, ref["artifact_id"]) and not store.check(name, ref["artifact_id"]), name
    assert len({json.loads(o.strip().splitlines()[-1])["split"]["artifact_id"] for o, _ in outs}) == 4
    final = gc.collect(work, store, min_age_s=0)  # all four recorded: nothing of theirs is garbage
    assert [g for g in final.garbage if g.kind == "artifact"] == [] and final.missing == []


@pytest.mark.slow
def test_two_promotions_at_once_leave_exactly_one_champion(tmp_path):
    """Two promotions (register teacher and student, gate, alias) started at once on one registry: the
    promotion holds the registry database's lock as the phase does (a thread lock here, the same file lock
    across processes: test_two_processes_create_and_write_one_new_sqlite_store), so they decide one after
    the other: one champion, two versions, two history events, one teacher version, nothing pending."""
    from fault_harness import promote, registry_state
    from pipeline.registry.verify import VerifyReport, check_registry
    from training_fixtures import colour_images, tiny_model_dir

    train = colour_images(tmp_path / "train", 6, seed=0, prefix="tr")
    test = colour_images(tmp_path / "test", 8, seed=2, prefix="te")
    (tmp_path / "items.json").write_text(json.dumps({"train": train, "test": test}))
    teacher = tiny_model_dir(tmp_path / "teacher", train, seed=1)
    db, go = tmp_path / "mlflow.db", threading.Barrier(2)
    decisions, errors = {}, []

    def one(who: str, seed: int) -> None:
        spec = {"items": str(tmp_path / "items.json"), "teacher": str(teacher), "db": str(db),
                "student": str(tiny_model_dir(tmp_path / f"student-{who}", train, seed=seed)),
                "out": str(tmp_path / f"out-{who}"), "cache": str(tmp_path / f"cache-{who}")}
        go.wait()  # both promotions start at once
        try:
            decisions[who] = promote(spec)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(who, seed)) for who, seed in (("a", 0), ("b", 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    state = registry_state(tmp_path)["vehicle-damage-student"]
    report = VerifyReport()
    check_registry(f"sqlite:///{db}", report, tmp_path / "verify")
    assert not report.findings and state["versions"] == 2 and state["pending"] is None
    assert "champion" in state["aliases"] and len(state["history"]) == 2
    by_version = {d["version"]: d for d in decisions.values()}
    first, second = (by_version[v] for _, v in state["history"])  # the order they decided in
    assert first["alias"] == "champion"  # the first promotion of a registry takes the champion alias
    expected = second["version"] if second["alias"] == "champion" else first["version"]
    assert int(state["aliases"]["champion"]) == expected
    assert registry_state(tmp_path)["vehicle-damage-teacher"]["versions"] == 1


def test_heavy_phases_on_a_cpu_take_turns_and_light_ones_do_not():
    """Two torch phases started together by the thread task runner run one after the other on a CPU
    (together they oversubscribe the cores); CPU-pool phases and a GPU run are not serialised."""
    from types import SimpleNamespace

    from pipeline.core import runner
    from pipeline.core.config import PipelineConfig

    cpu = PipelineConfig().model_copy(deep=True)
    cpu.runtime.device = "cpu"
    heavy, light = SimpleNamespace(pool="gpu"), SimpleNamespace(pool="cpu")
    assert runner._exclusive(heavy, cpu) is runner._CPU_HEAVY
    assert isinstance(runner._exclusive(light, cpu), nullcontext)
    spans: list[tuple[float, float]] = []

    def phase() -> None:
        with runner._exclusive(heavy, cpu):
            t0 = time.perf_counter()
            time.sleep(0.05)
            spans.append((t0, time.perf_counter()))

    threads = [threading.Thread(target=phase) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert len(spans) == 3 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no two overlap
