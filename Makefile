# The two set-up commands of the README: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   ?= .venv
# pip installs without byte-compiling (it compiles the ~29k files one by one: about two minutes here); the venv is
# compiled afterwards on every core (compileall -j 0: half that on 2 cores). Left to first import instead, the
# compiling lands in the tests, in every process that imports a module before its .pyc exists.
PIP    := $(VENV)/bin/python -m pip
PIP_INSTALL := $(PIP) install --no-compile
ARCH   := $(shell uname -m)
# torch on these x86_64 machines comes from the local disk (a CUDA build that also runs on CPU);
# GPU users may install any CUDA build the pyproject ranges admit before `make install`.
ifeq ($(ARCH),x86_64)
TORCH  ?= torch==2.14.1 torchvision==0.29.1
else
TORCH  ?= torch==2.9.1 torchvision==0.24.1
endif
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench lint clean help export-env browser-deps

help:
	@echo "make demo   - install, generate demo data, run the pipeline on it"
	@echo "make test   - install with test extras, run the test suite"
	@echo "make test-fast - the inner loop: every test not marked slow (a few minutes)"
	@echo "make bench  - run the benchmarks in bench/"
	@echo "make clean  - remove demo-work/ and caches (keeps .venv)"

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -c "import torch, torchvision" 2>/dev/null || $(PIP_INSTALL) $(TORCH)
	$(PIP_INSTALL) -c constraints.txt -e '.[test]'
	# Ultralytics pulls opencv-python beside the headless build; both write cv2: keep headless only.
	$(PIP) uninstall -y opencv-python opencv-python-headless >/dev/null
	$(PIP_INSTALL) --no-deps -c constraints.txt opencv-python-headless
	$(VENV)/bin/python -m compileall -q -j 0 "$$($(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null || true
	touch $(STAMP)

install: $(STAMP)

# The export phase's TF side (onnx2tf, tensorflowjs) cannot share .venv with torch (numpy/protobuf
# pins): a second venv, created once and reused; the phase calls into it by subprocess. Node's
# @tensorflow/tfjs + wasm backend come from the lock file (npm ci), once. Without npm the TF.js
# variants are reported as skipped.
EXPORT_VENV  ?= .venv-export
EXPORT_STAMP := $(EXPORT_VENV)/.installed
NODE_STAMP   := export/node_modules/.installed

$(EXPORT_STAMP): export/requirements-tf.txt export/requirements-tf-nodeps.txt
	test -x $(EXPORT_VENV)/bin/python || $(PYTHON) -m venv $(EXPORT_VENV)
	$(EXPORT_VENV)/bin/python -m pip install -r export/requirements-tf.txt
	$(EXPORT_VENV)/bin/python -m pip install --no-deps -r export/requirements-tf-nodeps.txt
	touch $(EXPORT_STAMP)

$(NODE_STAMP): export/package.json export/package-lock.json
	if command -v npm >/dev/null; then cd export && npm ci --no-audit --no-fund && touch node_modules/.installed; \
	else echo "npm not found: the TF.js variants will be skipped (Debian: apt-get install nodejs npm)"; fi

export-env: $(EXPORT_STAMP) $(NODE_STAMP)

# Test set-up only (never `make demo`): Debian's chromium + chromedriver (+ nodejs and npm unless a node is
# already installed: Debian's nodejs conflicts with a NodeSource one) where apt-get may run as root;
# elsewhere the browser tests skip and say why.
browser-deps:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && command -v node >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  pkgs="chromium chromium-driver"; command -v node >/dev/null || pkgs="$$pkgs nodejs npm"; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $$pkgs \
	  || echo "apt-get failed: the browser tests will skip"; \
	else echo "chromium/chromedriver missing and apt-get unavailable: the browser tests will skip"; fi

demo: install export-env
	$(VENV)/bin/pipeline demo --workdir demo-work

# The three installs are independent (two venvs, apt): side by side they take the longest one's time.
# The suite runs on TEST_WORKERS pytest-xdist workers, each file on one worker (tests/conftest.py).
TEST_WORKERS ?= 2
test:
	$(MAKE) -j3 install export-env browser-deps
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --durations=15

# The inner loop (under 3 minutes on 2 cores): the unit tests of every package, none of the `slow` ones
# (flows, servers, subprocess CLIs, real-model embedding/training/export); none needs the export env.
test-fast: install
	$(VENV)/bin/python -m pytest -q -m "not slow" --durations=10

bench: install
	$(VENV)/bin/python bench/cache_rerun.py

clean:
	rm -rf demo-work .pytest_cache
