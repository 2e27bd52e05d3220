# Entry points. Every target builds .venv on first use (pinned dependencies, CPU torch when no GPU).
#   make train [EXP=gdsd_tiny_sudoku] [ARGS="key=value ..."]
#   make eval  [EXP=...] [CKPT=path] [DATA=path] [OUT=dir] [ARGS="eval.protocol=papers ..."]
#   make report [RUNS="runs ..."] [OUT=results/report]
#   make compare [TASK=sudoku] [SEEDS=3] [ARGS="key=value ..."]
#   make bench [ARGS="--quick --device cuda --out dir"]
#   make smoke-real [RECIPE=gdsd_llada_math] [ARGS=...]   a real-model recipe on CPU, on a toy published-format checkpoint
#   make test
EXP  ?= gdsd_tiny_sudoku
RECIPE ?= gdsd_llada_math
TASK ?= sudoku
SEEDS ?= 3
ARGS ?=
CKPT ?=
DATA ?=
OUT  ?=
RUNS ?= runs
PY   := .venv/bin/python
# On a CPU host `pip install torch==2.13.0` must resolve to the CPU build (a local wheel or the
# CPU index); pass e.g. TORCH_PIP_ARGS="--index-url <cpu wheel index>" where neither is configured.
TORCH_VERSION  ?= 2.13.0
TORCH_PIP_ARGS ?=

.PHONY: train eval report compare bench smoke-real test test-slow data clean-venv

.venv/.installed: pyproject.toml requirements.lock
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

train: .venv/.installed
	$(PY) -m gdsd_lightning train $(EXP) $(ARGS)

eval: .venv/.installed
	$(PY) -m gdsd_lightning eval $(EXP) $(if $(CKPT),--ckpt $(CKPT)) $(if $(DATA),--data $(DATA)) $(if $(OUT),--out $(OUT)) $(ARGS)

report: .venv/.installed
	$(PY) -m gdsd_lightning report $(RUNS) $(if $(OUT),--out $(OUT))

compare: .venv/.installed
	$(PY) -m gdsd_lightning compare --task $(TASK) --seeds $(SEEDS) $(ARGS)

bench: .venv/.installed
	$(PY) -m gdsd_lightning bench $(ARGS)

# The recipe's method, task, prompts, LoRA targets and gradient checkpointing on a toy random checkpoint
# in LLaDA's or Dream's published format (python -m gdsd_lightning toy-checkpoint), shrunk by _base/cpu_smoke.yaml.
smoke-real: .venv/.installed
	checkpoint=$$($(PY) -m gdsd_lightning toy-checkpoint $(RECIPE) --out runs/toy_published) && \
		$(PY) -m gdsd_lightning train $(RECIPE) extends=_base/cpu_smoke.yaml model.path=$$checkpoint $(ARGS)

data: .venv/.installed
	$(PY) -m gdsd_lightning make-data --out data

test: .venv/.installed
	$(PY) -m pytest

test-slow: .venv/.installed
	$(PY) -m pytest -m slow

clean-venv:
	rm -rf .venv
