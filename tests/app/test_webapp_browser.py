"""The search and runs app in a real headless browser (Debian chromium + chromium-driver through
Selenium): a text query, an image upload, a zone filter every result respects, the Runs and Compare
pages, no exception element anywhere. Screenshots go to a temp folder whose path is printed.

Needs /usr/bin/chromium and /usr/bin/chromedriver (`make browser-deps`, part of `make test`, installs them where apt-get
works); without them the tests skip and say why."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 240  # the first query loads the models on a shared 2-core machine
EXCEPTION = '[data-testid="stException"]'

pytestmark = [
    pytest.mark.slow,  # a real app and browser (and the retrieval flow behind them)
    pytest.mark.skipif(not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
                       reason=f"no {CHROMIUM} / {CHROMEDRIVER}: `make browser-deps` installs them (apt-get, as root)"),
    pytest.mark.timeout(1800),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(script_or_workdir: Path, port: int, log: Path) -> subprocess.Popen:
    """`pipeline app` on a work dir (or streamlit on a bare script), waiting until it answers."""
    if script_or_workdir.is_dir():
        cmd = [str(Path(sys.executable).with_name("pipeline")), "app", "--workdir", str(script_or_workdir),
               "--port", str(port)]
    else:
        from pipeline.app.webapp.launch import streamlit_command

        cmd = streamlit_command(port)
        cmd[cmd.index("run") + 1] = str(script_or_workdir)
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited: {log.read_text()[-2000:]}")
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"the app did not answer in 120 s: {log.read_text()[-2000:]}")


def browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--window-size=1400,1800"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)


def assert_no_exception(driver, where: str) -> None:
    """Fail when the page shows Streamlit's exception element (a traceback in the page)."""
    shown = driver.find_elements("css selector", EXCEPTION)
    assert not shown, f"{where}: the page shows an exception: {shown[0].text[:1500]}"


def page_text(driver) -> str:
    return driver.find_element("tag name", "body").text


def wait_for(driver, what, where: str, timeout: float = WAIT_S):
    """Poll `what(driver)` until truthy; fail at once when an exception element appears."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert_no_exception(driver, where)
        value = what(driver)
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{where}: timed out; the page says: {page_text(driver)[-1500:]}")


def settled(driver) -> bool:
    """Streamlit is not running the script (its status widget is gone)."""
    return not driver.find_elements("css selector", '[data-testid="stStatusWidget"]')


def results(driver) -> list[dict]:
    """The result captions of the search grid: rank, score, zone, damaged."""
    out = []
    for m in re.finditer(r"#(\d+) score (-?[\d.]+) · zone (\d+)[^·\n]* · (damaged|clean)", page_text(driver)):
        out.append({"rank": int(m[1]), "score": float(m[2]), "zone": int(m[3]), "damaged": m[4] == "damaged"})
    return out


def shot(driver, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


@pytest.fixture(scope="module")
def shots() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="webapp-screenshots-"))
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def app_workdir(demo_retrieval) -> Path:
    """The session's retrieval work dir on the demo data (tests/conftest.py): its two newest runs are the
    same data and config (the second all cache hits), so Runs and Compare have two runs to show."""
    return demo_retrieval["workdir"]


def test_exception_detector_fails_on_a_raising_page(tmp_path, shots):
    script = tmp_path / "raises.py"
    script.write_text("import streamlit as st\nst.title('about to fail')\nraise RuntimeError('boom in the page')\n")
    port = free_port()
    proc = start_app(script, port, tmp_path / "app.log")
    driver = browser(tmp_path / "profile")
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        with pytest.raises(AssertionError, match="boom in the page"):
            wait_for(driver, lambda d: False, "raising page", timeout=60)
        shot(driver, shots, "00-raising-page")
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(timeout=20)


def _search_text(driver, shots: Path) -> None:
    box = wait_for(driver, lambda d: d.find_elements("css selector", 'input[aria-label="Describe the damage"]'),
                   "search page")[0]
    box.send_keys("deep scratch on the driver door\n")
    found = wait_for(driver, lambda d: settled(d) and len(r := results(d)) == 12 and r, "text query")  # k = 12
    assert [r["rank"] for r in found] == list(range(1, 13))
    assert all(a["score"] >= b["score"] for a, b in zip(found, found[1:]))
    shot(driver, shots, "01-search-text")


def _click_label(driver, text: str) -> None:
    label = next(e for e in driver.find_elements("css selector", "label") if e.text.strip() == text)
    driver.execute_script("arguments[0].click();", label)


def _zone_filter(driver, shots: Path, avoid: int) -> int:
    """Pick a zone other than `avoid` (the unfiltered top hit's) in the sidebar multiselect; every result
    must then be in it. Returns the zone."""
    combo = driver.find_element("css selector", '[data-testid="stSidebar"] [data-testid="stMultiSelect"] input')
    combo.click()
    option = wait_for(driver, lambda d: [o for o in d.find_elements("css selector", '[role="option"]')
                                         if o.text.split(" ")[0].isdigit() and o.text.split(" ")[0] != str(avoid)],
                      "zone options")[0]
    zone = int(option.text.split(" ")[0])
    option.click()
    found = wait_for(driver, lambda d: settled(d) and (r := results(d)) and {x["zone"] for x in r} == {zone} and r,
                     f"zone {zone} filter", timeout=120)
    assert found and all(r["zone"] == zone for r in found)
    shot(driver, shots, "02-search-zone-filter")
    return zone


def test_app_in_a_browser(app_workdir, demo_dataset, shots, tmp_path):
    from pipeline.core.runs import RunRecord

    port = free_port()
    proc = start_app(app_workdir, port, tmp_path / "app.log")
    driver = browser(tmp_path / "profile")
    base = f"http://127.0.0.1:{port}"
    try:
        driver.get(f"{base}/")
        _search_text(driver, shots)
        zone = _zone_filter(driver, shots, avoid=results(driver)[0]["zone"])

        # an image query: a photo of the dataset, uploaded
        _click_label(driver, "image")
        upload = wait_for(driver, lambda d: d.find_elements("css selector", 'input[type="file"]'), "upload")[0]
        photo = next(demo_dataset.glob("zona1_ko_*_imageDANO_original.jpg"))
        upload.send_keys(str(photo))
        found = wait_for(driver, lambda d: settled(d) and "query: " in page_text(d) and results(d), "image query")
        assert found and all(r["zone"] == zone for r in found)  # the filter still holds
        shot(driver, shots, "03-search-image")

        # an unreadable upload: a message in the page, no traceback
        bad = tmp_path / "not-an-image.jpg"
        bad.write_text("not an image")
        driver.find_element("css selector", 'input[type="file"]').send_keys(str(bad))
        wait_for(driver, lambda d: "not a readable image" in page_text(d), "bad upload")

        records = RunRecord.all(app_workdir)
        driver.get(f"{base}/runs")
        wait_for(driver, lambda d: settled(d) and "cache hit" in page_text(d) and "Validation" in page_text(d),
                 "runs page")
        assert records[0].flow_run_id in page_text(driver)
        shot(driver, shots, "04-runs")

        driver.get(f"{base}/compare")
        # the page's last section, not its first line: Streamlit renders element by element, and its status
        # widget shows only after a moment, so "settled" alone can read a half-drawn page
        wait_for(driver, lambda d: settled(d) and "phase(s) recomputed" in page_text(d)
                 and ("No metric moved." in page_text(d) or "Metrics that moved" in page_text(d)), "compare page")
        text = page_text(driver)
        assert "0 of 9 phase(s) recomputed" in text and "No file added, removed or changed." in text
        shot(driver, shots, "05-compare")
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(timeout=20)
