# The two set-up commands of the README. Both create or refresh .venv first; that step is skipped when the venv is
# newer than the dependency files.
PYTHON ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
STAMP := $(VENV)/.polymodal-installed

.PHONY: demo test venv tokenizers

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-ci.txt
	test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --upgrade pip
	$(VENV_PY) -m pip install --quiet -r requirements-ci.txt
	$(VENV_PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/polymodal train --config configs/llm/tiny.yaml

# The synthetic-world pipeline. Every step writes a `.done` file when it has finished, so an interrupted
# `make` redoes only what is missing (training itself resumes from its last checkpoint).
BIN := $(VENV)/bin
SCENES := .cache/polymodal/scenes
TOKENIZER_MODALITIES := rgb depth normal semseg

$(SCENES)/.done: | $(STAMP)
	$(BIN)/polymodal synth --out $(SCENES) --format shards --num-samples 4000 --samples-per-shard 1000
	touch $@

runs/tokenizer-%-tiny/.done: $(SCENES)/.done
	$(BIN)/polymodal train --config configs/tokenizers/$*_tiny.yaml
	$(BIN)/polymodal tokenizer eval --checkpoint runs/tokenizer-$*-tiny --out runs/tokenizer-$*-tiny/eval
	touch $@

# The four tiny image tokenizers with their held-out evaluation (runs/tokenizer-<m>-tiny/eval/).
tokenizers: $(foreach m,$(TOKENIZER_MODALITIES),runs/tokenizer-$(m)-tiny/.done)

test: $(STAMP)
	$(VENV_PY) -m pytest -q
