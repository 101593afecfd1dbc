# The README's two commands: `make test` and `make demo`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/demo
STAMP := $(VENV)/.installed

.PHONY: test test-fast demo bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

# The whole suite, end-to-end command-line tests included.
test: $(STAMP)
	$(PY) -m pytest

# Everything but the slow end-to-end tests.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# Pretrain on the offline digits dataset, then linear probes (see README).
demo: $(STAMP)
	$(PY) main.py --config=configs/digits.py --workdir=$(WORKDIR)

clean:
	rm -rf $(VENV) workdirs .pytest_cache
