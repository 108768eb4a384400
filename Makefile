# Two commands set everything up on a fresh machine:
#   make train   short CRPO training on an embedded local Ray, tiny model, CPU
#   make test    the test suite
# Both install into .venv first (idempotent: redone only when pyproject.toml changes).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.crpo-ray-installed
# CPU build of torch, installed before anything else so no CUDA build is pulled in.
# GPU users: install your CUDA build of torch into .venv first; it is kept.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install train test clean chromium

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/crpo-ray train --config configs/tiny-cpu.yaml $(ARGS)

test: $(STAMP) chromium
	$(PY) -m pytest -q tests $(ARGS)

# Headless Chromium for the HTML report test (tests/test_report.py), from Debian's packages.
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		export DEBIAN_FRONTEND=noninteractive; \
		(apt-get install -y -qq chromium >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)) && echo "installed $$(chromium --version)" \
		|| echo "make: could not install chromium: the headless-Chromium report test is skipped"; \
	else echo "make: chromium is not installed and this is not root: the headless-Chromium report test is skipped (install it with: apt-get install chromium)"; fi

clean:
	rm -rf $(VENV) .cache runs
