# def-jax -- the whole set-up is `make demo` or `make test`: each creates .venv with the pinned dependencies
# (requirements.lock) when it is missing or older than the dependency files, then runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check --quiet

.PHONY: demo test lock clean help

help:
	@echo "make demo   set up .venv if needed, then run the end-to-end demo (def-jax demo)"
	@echo "make test   set up .venv if needed, then run the test suite"
	@echo "make lock   re-resolve the dependencies of setup.cfg into requirements.lock"
	@echo "make clean  remove .venv and caches"

demo: $(STAMP)
	$(BIN)/def-jax demo

# two pytest-xdist workers, one test file at a time each, in the order of tests/conftest.py (the longest files first;
# without --no-loadscope-reorder xdist would sort the files by their number of tests instead);
# `.venv/bin/python -m pytest tests/test_x.py` runs one file in this process
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

$(STAMP): requirements.lock setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "def-jax needs Python >= 3.11 (found " + sys.version.split()[0] + "); run make PYTHON=/path/to/python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip==26.3
	$(PIP) install -r requirements.lock
	$(PIP) install --no-deps -e .
	@touch $@

# Resolve setup.cfg's pins (and the test and worlds extras) afresh in a scratch venv and freeze the full set.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip==26.3
	.venv-lock/bin/python -m pip install --quiet -e '.[test,worlds]'
	.venv-lock/bin/python -m pip freeze --exclude-editable --exclude def-jax > requirements.lock
	rm -rf .venv-lock
	@echo "requirements.lock: $$(wc -l < requirements.lock) pinned packages"

clean:
	rm -rf $(VENV) .venv-lock .pytest_cache *.egg-info
