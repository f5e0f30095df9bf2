# Thin wrappers over `python -m pipeline <stage>`; run `make help` for the list.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= data

DATASET ?= demo
TEACHER ?= musicnn
ROOT    ?=
CSV     ?=
SPLITS  ?=
CLIPS   ?=
WEIGHTS ?=
DEVICE  ?=
# Store name under data/cache/DATASET/ (default: the teacher's name)
STORE   ?=
# Extra teacher options, e.g. TEACHER_OPTS="layer=penultimate batch_size=32"
TEACHER_OPTS ?=
# Training: TEACHER=none is the baseline; "a+b" trains against several teacher stores.
# Empty values keep the dataset preset's choice.
STUDENT  ?=
FRONTEND ?=
LOSS     ?=
LAMBDA   ?=
KD       ?=
WORKERS  ?=
# Any other training setting, e.g. SETTINGS="max_epochs=20 lr=3e-4"
SETTINGS ?=

CLI := $(PY) -m pipeline --data-dir $(DATA)

.PHONY: help setup data extract mels train test lint format clean-venv

help:
	@echo "make setup                                  virtual env with everything (.venv)"
	@echo "make data DATASET=demo [CLIPS=N]            render the offline default dataset"
	@echo "make data DATASET=openmic ROOT=<release>    manifest from OpenMIC-2018"
	@echo "make data DATASET=magnatagatune ROOT=<dir> [SPLITS=<dir>]  manifest from MagnaTagATune"
	@echo "make data DATASET=<name> CSV=<file.csv>     manifest from your own CSV"
	@echo "make extract DATASET=... TEACHER=...        stage one: teacher embeddings (resumable)"
	@echo "make mels DATASET=... [FRONTEND=cp_resnet]  log-mel store (make train builds it if missing)"
	@echo "make train DATASET=... TEACHER=...|none [STUDENT= LOSS=dc|cosine LAMBDA= KD=1 SETTINGS=...]"
	@echo "                                            stage two: train a student (resumable)"
	@echo "make test                                   the test suite"
	@echo "make lint                                   ruff"

setup: $(VENV)/.installed

# torch is installed first and pinned: a bare `torch` requirement would pull a CUDA build.
# musicnn (pretrained weights only) and tinysoundfont declare requirements that cannot be
# installed and are not needed, hence --no-deps.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet --no-deps musicnn==0.1.0 tinysoundfont==0.3.7
	$(PY) -m pip install --quiet -e '.[demo,dev]'
	touch $@

data: setup
	$(CLI) data $(DATASET) $(if $(ROOT),--root $(ROOT)) $(if $(CSV),--csv $(CSV)) \
		$(if $(SPLITS),--split-dir $(SPLITS)) $(if $(CLIPS),--clips $(CLIPS))

extract: setup
	$(CLI) extract $(DATASET) $(TEACHER) $(if $(WEIGHTS),--weights $(WEIGHTS)) \
		$(if $(DEVICE),--device $(DEVICE)) $(if $(STORE),--name $(STORE)) \
		$(foreach o,$(TEACHER_OPTS),-o $(o))

mels: setup
	$(CLI) mels $(DATASET) $(if $(FRONTEND),--frontend $(FRONTEND)) $(if $(DEVICE),--device $(DEVICE))

train: setup
	$(CLI) train $(DATASET) teacher=$(TEACHER) $(if $(STUDENT),student=$(STUDENT)) \
		$(if $(FRONTEND),frontend=$(FRONTEND)) $(if $(LOSS),loss=$(LOSS)) \
		$(if $(LAMBDA),lam=$(LAMBDA)) $(if $(filter 1 yes true True,$(KD)),kd=True) \
		$(SETTINGS) $(if $(DEVICE),--device $(DEVICE)) $(if $(WORKERS),--workers $(WORKERS))

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check pipeline tests
	$(VENV)/bin/ruff format --check pipeline tests

format: setup
	$(VENV)/bin/ruff format pipeline tests
	$(VENV)/bin/ruff check --fix pipeline tests

clean-venv:
	rm -rf $(VENV)
