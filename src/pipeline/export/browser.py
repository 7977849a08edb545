"""The static page, its loopback HTTP server, and headless Chromium driven by Selenium.

`build_site` lays out a servable folder: index.html + app.js (web/), vendor/ (tf.min.js, the wasm
backend and its .wasm files from the lock-file install) and model/ (a TF.js variant + card.json).
`serve` binds 127.0.0.1 on a free port. `Chromium` starts Debian's chromium through
/usr/bin/chromedriver given explicitly (Selenium Manager would go to the network), headless, with
a fresh profile; `gate_logits` runs the page's `runGate` over inputs served beside the page.
"""
from __future__ import annotations

import functools
import shutil
import tempfile
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.export.runtimes import WEB

VENDOR = {"@tensorflow/tfjs/dist/tf.min.js": "tf.min.js",
          "@tensorflow/tfjs-backend-wasm/dist/tf-backend-wasm.min.js": "tf-backend-wasm.min.js"}
CHROME_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage")


def build_site(tfjs_dir: Path, card: dict[str, Any], mods: Path, site: Path) -> Path:
    import json

    site.mkdir(parents=True, exist_ok=True)
    for name in ("index.html", "app.js"):
        shutil.copyfile(WEB / name, site / name)
    (site / "vendor").mkdir(exist_ok=True)
    for src, dst in VENDOR.items():
        shutil.copyfile(mods / src, site / "vendor" / dst)
    for wasm in (mods / "@tensorflow/tfjs-backend-wasm/dist").glob("*.wasm"):
        shutil.copyfile(wasm, site / "vendor" / wasm.name)
    if (site / "model").exists():
        shutil.rmtree(site / "model")
    shutil.copytree(tfjs_dir, site / "model")
    (site / "model" / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return site


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".js": "text/javascript", ".json": "application/json"}

    def log_message(self, *args: Any) -> None:  # quiet
        pass


@contextmanager
def serve(site: Path, port: int = 0) -> Iterator[str]:
    """Serve `site` on 127.0.0.1 (a free port unless given); yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_Handler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def browser_missing(chromium: str, chromedriver: str) -> str:
    """Why the browser check cannot run here ("" when it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    for path, what in ((chromium, "chromium"), (chromedriver, "chromedriver")):
        if not Path(path).is_file():
            return f"{what} not found at {path} (Debian: apt-get install chromium chromium-driver)"
    return ""


class Chromium:
    """Headless Chromium with a fresh profile; `with Chromium(...) as c: c.open(url)`."""

    def __init__(self, chromium: str, chromedriver: str, timeout_s: int = 300):
        self.chromium, self.chromedriver, self.timeout_s = chromium, chromedriver, timeout_s
        self.driver: Any = None
        self._profile: str | None = None

    def __enter__(self) -> "Chromium":
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self._profile = tempfile.mkdtemp(prefix="pipeline-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = self.chromium
        for arg in (*CHROME_ARGS, f"--user-data-dir={self._profile}", "--window-size=900,900"):
            opts.add_argument(arg)
        self.driver = webdriver.Chrome(service=Service(executable_path=self.chromedriver), options=opts)
        self.driver.set_script_timeout(self.timeout_s)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.driver is not None:
            self.driver.quit()
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)

    def open(self, url: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver.get(url)
        WebDriverWait(self.driver, self.timeout_s).until(
            lambda d: d.execute_script("return window.pipelineReady === true || !!window.pipelineError"))
        error = self.driver.execute_script("return window.pipelineError || null")
        if error:
            raise RuntimeError(f"the page failed to load the model: {error}")

    def gate_logits(self, n: int) -> tuple[np.ndarray, list[float], str]:
        res = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "window.runGate('inputs.f32', arguments[0]).then(done, (e) => done({error: String(e)}));", n)
        if "error" in res:
            raise RuntimeError(f"runGate failed in the page: {res['error']}")
        return np.asarray(res["logits"], dtype=np.float32), [float(t) for t in res["times"]], str(res["backend"])

    def classify_file(self, path: Path) -> dict[str, Any]:
        """Give the page a photo through its file input (what a drop does) and read the answer back."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver.execute_script("window.lastAnswer = null;")
        self.driver.find_element(By.ID, "file").send_keys(str(Path(path).resolve()))
        WebDriverWait(self.driver, self.timeout_s).until(lambda d: d.execute_script("return !!window.lastAnswer"))
        answer = self.driver.execute_script("return window.lastAnswer")
        answer["text"] = self.driver.find_element(By.ID, "answer").text
        return answer

    def screenshot(self, path: Path) -> Path:
        self.driver.save_screenshot(str(path))
        return path


def chromium_logits(site: Path, x: np.ndarray, cfg: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """(logits, timings) of the site's model in headless Chromium over the NCHW inputs `x`."""
    np.ascontiguousarray(x, dtype="<f4").tofile(site / "inputs.f32")
    try:
        with serve(site) as url, Chromium(cfg.chromium, cfg.chromedriver, cfg.timeout_s) as browser:
            browser.open(url)
            logits, times, backend = browser.gate_logits(len(x))
    finally:
        (site / "inputs.f32").unlink(missing_ok=True)
    return logits, {"backend": backend, "median_ms": float(np.median(times)), "min_ms": float(np.min(times))}


def serve_forever(tfjs_dir: Path, mods: Path, site: Path, port: int = 0, on_ready: Any = print) -> None:
    """Lay out the page for a TF.js variant (its card.json beside it) and serve it on 127.0.0.1 until
    interrupted; `on_ready(url)` is called once the server listens."""
    import json
    import time

    card = json.loads((Path(tfjs_dir) / "card.json").read_text())
    build_site(tfjs_dir, card, mods, site)
    with serve(site, port) as url:
        on_ready(url)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
