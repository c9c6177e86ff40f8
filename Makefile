# Two commands on a fresh machine: `make run` (serve the shipped models) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup run test lint models teachers bench gpu-check clean

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# What serving needs, nothing more (no torch, no test tools): all `make run` installs.
$(VENV)/.installed-serve: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q -e .
	touch $@

# The serving install plus what training, export and the tests need.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $@

setup: $(VENV)/.installed

run: $(VENV)/.installed-serve
	LSTM_SERVE_HOST=$(HOST) LSTM_SERVE_PORT=$(PORT) $(BIN)/lstm-serve serve

# The server-facing tests once more with two front ends: workers=auto means one process on CI's 2 cores
# but several on a GPU machine, where per-process rate limits and start-up signals first broke (H200).
MULTIPROCESS_TESTS = tests/test_hardening.py tests/test_cost_budget.py tests/test_precision.py \
	tests/test_service_repository.py tests/test_service_api.py

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q
	LSTM_SERVE_WORKERS=2 $(BIN)/pytest -q $(MULTIPROCESS_TESTS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Reproduce the shipped models from the repo's own data (CPU; see docs/ for times): sentiment about
# 35 min on 1 thread (five teacher runs of the default recipe, then the student distilled from them;
# identical weights), translation about 12 h on 1 thread (a 12.7M-parameter teacher, its translations
# of the training set, an 8.7M-parameter student trained on them, a second teacher, the two teachers'
# translations, and the shipped student: the first one trained 7 more epochs on those; the α values
# were chosen on val, see docs/translation.md). Every train command resumes from its run folder's last.pt
# when re-run, so an interrupted `make models` continues where it stopped.
# Translation: a first sitting, then warm restarts from its best checkpoint (docs/translation.md).
TRANSLATION_FIRST = --enc-layers 2 --dropout 0.3 --word-dropout 0.1 --batch-tokens 1500 --lr 1e-3 --epochs 40 \
	--patience 4 --average-last 5 --threads 1 --no-progress
TRANSLATION_RESTART = --dropout 0.3 --word-dropout 0.1 --batch-tokens 1500 --lr 4e-4 --epochs 8 --patience 3 \
	--average-last 4 --threads 1 --no-progress
SENTIMENT_TEACHERS = runs/sentiment runs/sentiment-teacher-s1 runs/sentiment-teacher-s2 \
	runs/sentiment-teacher-s3 runs/sentiment-teacher-s4

models: $(VENV)/.installed
	$(BIN)/lstm-serve train sentiment --out runs/sentiment
	for seed in 1 2 3 4; do \
		$(BIN)/lstm-serve train sentiment --out runs/sentiment-teacher-s$$seed --seed $$seed || exit 1; \
	done
	$(BIN)/lstm-serve train sentiment --out runs/sentiment-student --teachers $(SENTIMENT_TEACHERS)
	$(BIN)/lstm-serve export sentiment runs/sentiment-student --version 1 --overwrite
	$(BIN)/lstm-serve train translation --out runs/translation-big --enc-hidden 320 --emb 320 --dec-hidden 640 \
		$(TRANSLATION_FIRST)
	$(BIN)/lstm-serve train translation --out runs/translation-big-ft --init-from runs/translation-big --seed 14 \
		$(TRANSLATION_RESTART)
	$(BIN)/lstm-serve export translation runs/translation-big-ft --repository runs/kd/teacher --version 1 \
		--overwrite --alpha 1.0 --beam-size 4 --precisions ''
	$(BIN)/python -m models.translation.distill runs/kd/teacher/translation/1 --out runs/kd/train-big-ft.de.gz \
		--alpha 1.0 --no-progress
	$(BIN)/lstm-serve train translation --out runs/translation-mid --enc-hidden 256 --emb 256 --dec-hidden 512 \
		$(TRANSLATION_FIRST)
	$(BIN)/lstm-serve train translation --out runs/translation-mid-ft --init-from runs/translation-mid --seed 14 \
		$(TRANSLATION_RESTART)
	$(BIN)/lstm-serve train translation --out runs/translation-mid-kd --init-from runs/translation-mid-ft --seed 15 \
		--train-targets runs/kd/train-big-ft.de.gz $(TRANSLATION_RESTART)
	$(BIN)/lstm-serve train translation --out runs/translation-mid-kd2 --init-from runs/translation-mid-kd --seed 16 \
		--train-targets runs/kd/train-big-ft.de.gz $(TRANSLATION_RESTART) --lr 2e-4 --epochs 6
	$(BIN)/lstm-serve train translation --out runs/translation-big-s2 --seed 15 $(TEACHER)
	$(BIN)/lstm-serve train translation --out runs/translation-big-s2-ft --init-from runs/translation-big-s2 --seed 16 \
		$(TRANSLATION_RESTART) --epochs 3
	$(BIN)/python -m models.translation.ensemble runs/translation-big-ft runs/translation-big-s2-ft \
		--distill runs/kd/train-ensemble.de.gz --beam-size 4 --alpha 1.0 --threads 2
	$(BIN)/lstm-serve train translation --out runs/translation-mid-ens --init-from runs/translation-mid-kd2 --seed 17 \
		--train-targets runs/kd/train-ensemble.de.gz $(TRANSLATION_RESTART) --epochs 7
	$(BIN)/lstm-serve export translation runs/translation-mid-ens --version 1 --overwrite --alpha 2.0 --beam-size 4 \
		--precisions int8

# The two teachers of `make models`' ensemble (docs/translation.md, "An ensemble of teachers"), each then
# fine-tuned (the second for 3 epochs: the checkpoint the ensemble used), on one core each (hours: they
# span sessions), then the ensemble's val BLEU.
# Re-run it after an interruption: train commands resume from last.pt, and a finished step (its
# report.json written) is skipped.
TEACHER = --enc-hidden 320 --emb 320 --dec-hidden 640 $(TRANSLATION_FIRST)
teacher_line = { test -f runs/$(1)/report.json || $(BIN)/lstm-serve train translation --out runs/$(1) --seed $(2) \
	$(TEACHER); } && { test -f runs/$(1)-ft/report.json || $(BIN)/lstm-serve train translation --out runs/$(1)-ft \
	--init-from runs/$(1) --seed $(3) $(TRANSLATION_RESTART) $(4); }

teachers: $(VENV)/.installed
	mkdir -p runs
	( $(call teacher_line,translation-big,13,14) ) >> runs/translation-big.log 2>&1 & \
	( $(call teacher_line,translation-big-s2,15,16,--epochs 3) ) >> runs/translation-big-s2.log 2>&1 & \
	wait
	$(BIN)/python -m models.translation.ensemble runs/translation-big-ft runs/translation-big-s2-ft --bleu val \
		--alpha 1.0 | tee runs/ensemble-val.txt

bench: $(VENV)/.installed
	$(BIN)/lstm-serve bench

# Verify a GPU machine: CUDA provider in use, GPU/CPU parity for both models, GPU figures written to
# bench/results/gpu_check.{json,png}. Swaps the venv's onnxruntime for onnxruntime-gpu (the two wheels
# provide the same module). Where onnxruntime-gpu is already installed: make gpu-check GPU_PYTHON=python3
GPU_PYTHON ?=
GPU_CHECK_ARGS ?=
ifeq ($(GPU_PYTHON),)
gpu-check: $(VENV)/.installed-gpu
	$(BIN)/python -m bench.gpu_check $(GPU_CHECK_ARGS)
else
gpu-check:
	$(GPU_PYTHON) -m bench.gpu_check $(GPU_CHECK_ARGS)
endif

$(VENV)/.installed-gpu: $(VENV)/.installed
	$(BIN)/pip uninstall -q -y onnxruntime
	$(BIN)/pip install -q 'onnxruntime-gpu>=1.20' 'nvidia-ml-py>=12'
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
