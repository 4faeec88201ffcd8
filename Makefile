# The two set-up commands of the README. Both create or refresh .venv first; that step is skipped when the venv is
# newer than the dependency files.
PYTHON ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
STAMP := $(VENV)/.polymodal-installed

.PHONY: demo llm-demo lumina-demo lumina-records test venv tokenizers vision-demo

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-ci.txt
	test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --upgrade pip
	$(VENV_PY) -m pip install --quiet -r requirements-ci.txt
	$(VENV_PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The synthetic-world pipeline. Every step writes a `.done` file when it has finished, so an interrupted
# `make` redoes only what is missing (training itself resumes from its last checkpoint).
BIN := $(VENV)/bin
SCENES := data/scenes
TOKENIZER_MODALITIES := rgb depth normal semseg

$(SCENES)/.done: | $(STAMP)
	$(BIN)/polymodal synth --out $(SCENES) --format shards --num-samples 4000 --samples-per-shard 1000
	touch $@

# TOKENIZER_THREADS=1 with `make -j2` trains two tokenizers at once, one thread each (small convolutions use 2 cores
# better as two processes than as one two-threaded one).
runs/tokenizer-%-tiny/.done: $(SCENES)/.done
	env $(if $(TOKENIZER_THREADS),OMP_NUM_THREADS=$(TOKENIZER_THREADS)) \
		$(BIN)/polymodal train --config configs/tokenizers/$*_tiny.yaml
	$(BIN)/polymodal tokenizer eval --checkpoint runs/tokenizer-$*-tiny --out runs/tokenizer-$*-tiny/eval
	touch $@

# The four tiny image tokenizers with their held-out evaluation (runs/tokenizer-<m>-tiny/eval/).
TOKENIZERS_DONE := $(foreach m,$(TOKENIZER_MODALITIES),runs/tokenizer-$(m)-tiny/.done)
tokenizers: $(TOKENIZERS_DONE)

WORDPIECE := data/tokenizers/4m-wordpiece.json
FOURM := runs/fourm-tiny
SCENE_SHARDS := $(SCENES)/[rgb,tok_rgb,tok_depth,tok_normal,tok_semseg,caption,det,crop_settings]/shard-{00003..00003}.tar
IMAGE_TOKENIZERS := $(foreach m,$(TOKENIZER_MODALITIES),--tokenizer tok_$(m)@64=runs/tokenizer-$(m)-tiny)

$(WORDPIECE): | $(STAMP)
	$(BIN)/polymodal tokenizer train-text --kind wordpiece --output $@ --vocab-size 8192

$(SCENES)/.pretokenized: $(TOKENIZERS_DONE)
	$(BIN)/polymodal pretokenize-4m --source $(SCENES) --n-crops 2 --workers 2 \
		$(foreach m,$(TOKENIZER_MODALITIES),--tokenizer $(m)=runs/tokenizer-$(m)-tiny)
	touch $@

$(FOURM)/.done: $(SCENES)/.pretokenized $(WORDPIECE)
	$(BIN)/polymodal train --config configs/fourm/tiny.yaml
	touch $@

$(FOURM)/.generated: $(FOURM)/.done
	$(BIN)/polymodal generate --model $(FOURM) $(IMAGE_TOKENIZERS) --text-tokenizer $(WORDPIECE) \
		--schedule configs/fourm/generation/rgb2all_tiny.yaml --data '$(SCENE_SHARDS)' --num-samples 8 \
		--out $(FOURM)/generations/rgb2all
	$(BIN)/polymodal generate --model $(FOURM) $(IMAGE_TOKENIZERS) --text-tokenizer $(WORDPIECE) \
		--schedule configs/fourm/generation/caption2rgb_tiny.yaml --data '$(SCENE_SHARDS)' --num-samples 8 \
		--out $(FOURM)/generations/caption2rgb
	touch $@

$(FOURM)/.evaluated: $(FOURM)/.done
	$(BIN)/polymodal eval --model $(FOURM) $(IMAGE_TOKENIZERS) --text-tokenizer $(WORDPIECE) \
		--num-scenes 64 --out $(FOURM)/eval
	touch $@

# The whole 4M pipeline on the synthetic world: scenes -> tokenizers -> pre-tokenized shards -> 4M -> any-to-any
# generation and the held-out evaluation.
demo: $(STAMP)
	$(MAKE) -j2 TOKENIZER_THREADS=1 tokenizers $(WORDPIECE)
	$(MAKE) $(FOURM)/.generated $(FOURM)/.evaluated
	@echo "pictures: $(FOURM)/generations/rgb2all/generations.png $(FOURM)/generations/caption2rgb/generations.png"
	@echo "          $(FOURM)/eval/samples.png $(FOURM)/loss.png runs/tokenizer-*-tiny/eval/reconstructions.png"
	@echo "numbers:  $(FOURM)/eval/eval.json runs/tokenizer-*-tiny/eval/eval.json"

# Lumina-mGPT's pre-tokenization on the synthetic conversations (a sprinkle of bad items shows the error report):
# two ranks in parallel, then their records merged into one record file.
CONVERSATIONS := data/conversations
BPE := data/tokenizers/lumina-bpe-1024.json
LUMINA_RECORDS := data/lumina-records
LUMINA_INPUTS := --in_filename $(CONVERSATIONS)/conversations.json --out_dir $(LUMINA_RECORDS) --target_size 64 \
	--text_vocab_size 1024 --text_tokenizer $(BPE) --image_tokenizer runs/tokenizer-rgb-tiny

$(CONVERSATIONS)/.done: | $(STAMP)
	$(BIN)/polymodal synth --out $(CONVERSATIONS) --format conversations --num-samples 2000 --bad-fraction 0.01
	touch $@

$(BPE): $(CONVERSATIONS)/.done
	$(BIN)/polymodal lumina train-text --in_filename $(CONVERSATIONS)/conversations.json --output $@ --vocab-size 1024

$(LUMINA_RECORDS)/record.json: $(CONVERSATIONS)/.done $(BPE) runs/tokenizer-rgb-tiny/.done
	$(BIN)/polymodal lumina pretokenize --splits=2 --rank=0 $(LUMINA_INPUTS) & rank0=$$!; \
	$(BIN)/polymodal lumina pretokenize --splits=2 --rank=1 $(LUMINA_INPUTS) & rank1=$$!; \
	wait $$rank0 && wait $$rank1
	$(BIN)/polymodal lumina concat-records --sub_record_dir $(LUMINA_RECORDS) --save_path $@

lumina-records: $(LUMINA_RECORDS)/record.json

LUMINA := runs/lumina-tiny

$(LUMINA)/.done: $(LUMINA_RECORDS)/record.json
	$(BIN)/polymodal train --config configs/lumina/tiny.yaml
	touch $@

$(LUMINA)/.generated: $(LUMINA)/.done
	$(BIN)/polymodal generate --model $(LUMINA) --prompts-file configs/lumina/demo_prompts.txt --num-samples 4 \
		--cfg-scale 3 --image $(CONVERSATIONS)/images/00000000.rgb.png --out $(LUMINA)/generations
	touch $@

# The first held-out evaluation trains the colour and shape judge (a few minutes) and keeps it in the user cache.
$(LUMINA)/.evaluated: $(LUMINA)/.done
	$(BIN)/polymodal eval --model $(LUMINA) --num-scenes 64 --out $(LUMINA)/eval
	touch $@

# The image-text pipeline on the synthetic world: conversations -> BPE + the rgb tokenizer -> records -> the tiny
# Chameleon -> text-to-image and captions -> the held-out evaluation beside its baselines.
lumina-demo: $(STAMP)
	$(MAKE) $(LUMINA)/.generated $(LUMINA)/.evaluated
	@echo "pictures: $(LUMINA)/generations/generations.png $(LUMINA)/eval/samples.png $(LUMINA)/loss.png"
	@echo "numbers:  $(LUMINA)/eval/eval.json"

# The l3m recipes on the synthetic world: AIMv1, AIMv2, AIMv2-MoE, CLIP and a supervised ViT, each trained from its tiny config
# and evaluated on held-out scenes beside the same evaluators on its initial weights and the trivial baselines.
VIT_FOLDER := data/scenes_imagefolder_object
VISION_RECIPES := aimv1 aimv2 aimv2_moe clip vit
VISION_TABLE := runs/vision-demo.md
VISION_RUNS := $(foreach r,$(VISION_RECIPES),runs/$(r)-tiny/.done)

$(VIT_FOLDER)/.done: | $(STAMP)
	$(BIN)/polymodal synth --out $(VIT_FOLDER) --format imagefolder --label object --num-samples 4000
	touch $@

runs/aimv1-tiny/.done runs/aimv2-tiny/.done runs/aimv2_moe-tiny/.done runs/clip-tiny/.done: $(SCENES)/.done $(WORDPIECE)
runs/vit-tiny/.done: $(VIT_FOLDER)/.done

# One recipe at a time on all cores: each tiny config's step count fills about 7 minutes of a 2-core machine.
$(VISION_RUNS): runs/%-tiny/.done:
	$(BIN)/polymodal train --config configs/$*/tiny.yaml
	$(BIN)/polymodal eval --model runs/$*-tiny --evaluator all --table > runs/$*-tiny/baselines.md
	touch $@

vision-demo: $(STAMP)
	$(MAKE) $(VISION_RUNS)
	for r in $(VISION_RECIPES); do printf '\n### %s\n\n' "$$r"; cat runs/$$r-tiny/baselines.md; done > $(VISION_TABLE)
	@cat $(VISION_TABLE)
	@echo "table: $(VISION_TABLE)   loss curves: $(foreach r,$(VISION_RECIPES),runs/$(r)-tiny/loss.png)"

# The tiny LLM on built-in data (this Python's standard-library docstrings).
llm-demo: $(STAMP)
	$(VENV)/bin/polymodal train --config configs/llm/tiny.yaml

# --durations: the slowest tests are named at the end of every run, to keep the suite inside its time budget.
test: $(STAMP)
	$(VENV_PY) -m pytest -q --durations=25
