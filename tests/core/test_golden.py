"""Golden hashes: a phase whose output changes must bump its version (see tests/golden.py)."""
import json

import pytest

from golden import FIXTURE, PHASES, compare, make_dataset, run_phases


@pytest.fixture(scope="module")
def current(tmp_path_factory):
    base = tmp_path_factory.mktemp("golden")
    return run_phases(make_dataset(base / "data"), base / "work")


def test_golden_fixture_covers_every_phase():
    golden = json.loads(FIXTURE.read_text())
    assert set(golden) == set(PHASES)


@pytest.mark.slow  # every retrieval-side phase on 20 demo photos
@pytest.mark.parametrize("phase", PHASES)
def test_phase_output_matches_golden_or_version_was_bumped(current, phase):
    golden = json.loads(FIXTURE.read_text())[phase]
    now = current[phase]
    diffs = compare(golden["outputs"], now["outputs"])
    if not diffs:
        return
    if now["version"] == golden["version"]:
        pytest.fail(
            f"phase {phase!r} changed its outputs ({'; '.join(diffs)}) but its version is still "
            f"{now['version']!r}: bump `version=` in its PhaseSpec (src/pipeline/*/phases.py), then regenerate "
            f"the fixture with `.venv/bin/python tests/golden.py --update`")
    pytest.fail(f"phase {phase!r} is at version {now['version']} (fixture: {golden['version']}) and its outputs "
                f"changed; regenerate the fixture: `.venv/bin/python tests/golden.py --update`")


def test_compare_catches_changes_and_tolerates_float_noise():
    a = {"t.parquet": {"rows": 2, "exact": "abc", "approx": [1.0, 2.0]}}
    assert compare(a, {"t.parquet": {"rows": 2, "exact": "abc", "approx": [1.0 + 1e-7, 2.0]}}) == []
    assert compare(a, {"t.parquet": {"rows": 2, "exact": "abd", "approx": [1.0, 2.0]}}) == ["t.parquet: exact differs"]
    assert compare(a, {"t.parquet": {"rows": 2, "exact": "abc", "approx": [1.1, 2.0]}}) == ["t.parquet: float values differ"]
