# The two set-up commands of the README: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   ?= .venv
PIP    := $(VENV)/bin/python -m pip
ARCH   := $(shell uname -m)
# torch on these x86_64 machines comes from the local disk (a CUDA build that also runs on CPU);
# GPU users may install any CUDA build the pyproject ranges admit before `make install`.
ifeq ($(ARCH),x86_64)
TORCH  ?= torch==2.14.1 torchvision==0.29.1
else
TORCH  ?= torch==2.9.1 torchvision==0.24.1
endif
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench lint clean help

help:
	@echo "make demo   - install, generate demo data, run the pipeline on it"
	@echo "make test   - install with test extras, run the test suite"
	@echo "make bench  - run the benchmarks in bench/"
	@echo "make clean  - remove demo-work/ and caches (keeps .venv)"

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -c "import torch, torchvision" 2>/dev/null || $(PIP) install $(TORCH)
	$(PIP) install -c constraints.txt -e '.[test]'
	# Ultralytics pulls opencv-python beside the headless build; both write cv2: keep headless only.
	$(PIP) uninstall -y opencv-python opencv-python-headless >/dev/null
	$(PIP) install --no-deps -c constraints.txt opencv-python-headless
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/pipeline demo --workdir demo-work

test: install
	$(VENV)/bin/python -m pytest -q

test-fast: install
	$(VENV)/bin/python -m pytest -q -m "not slow"

bench: install
	$(VENV)/bin/python bench/cache_rerun.py

clean:
	rm -rf demo-work .pytest_cache
