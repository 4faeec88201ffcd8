# The two set-up commands of the README. Both create or refresh .venv first; that step is skipped when the venv is
# newer than the dependency files.
PYTHON ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
STAMP := $(VENV)/.polymodal-installed

.PHONY: demo test venv

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-ci.txt
	test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --upgrade pip
	$(VENV_PY) -m pip install --quiet -r requirements-ci.txt
	$(VENV_PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/polymodal train --config configs/llm/tiny.yaml

test: $(STAMP)
	$(VENV_PY) -m pytest -q
