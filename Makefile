# Thin wrappers over `python -m pipeline <stage>`; run `make help` for the list.
#
# Exit status 1 of data, extract and mels means "done, but some clips were left out or failed"
# (listed, and in a table next to the output): the output is complete, so Make goes on.
#
# Each stage's output is a real file (manifest, store COMPLETE marker, a .done stamp) that
# depends on data/stamps/<stage>-<key>.params: a hash of that stage's parameters and code,
# rewritten by `python -m pipeline.stamps` only when it changes. So a stage reruns exactly
# when its inputs changed, and touching nothing reruns nothing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= data

DATASET ?= demo
TEACHER ?= musicnn
# A dataset's source (ROOT, CSV, SPLITS, CLIPS) is remembered with its manifest: later commands
# need only DATASET=; giving another source rebuilds the manifest (and what depends on it).
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
# Arithmetic of the teacher's network in stage one: auto (default: bf16 on a GPU that supports
# it, for teachers whose bf16 embeddings agree with fp32), bf16, fp16 or fp32. Not a stamp
# variable: it is not part of a store's fingerprint, so changing it does not redo a store.
PRECISION ?=
# Stage one and mels: mark a store complete unless more than this fraction of its clips failed
# (0 to 1; empty: the default 0.2). Not a stamp variable: it does not change the store.
MAX_FAILED ?=
# Stage one and mels: HASH_AUDIO=1 records each clip's audio sha256 and lets the content decide
# whether a clip's audio changed (else its path, size and modification time decide). Not a
# stamp variable: it does not change the store's values.
HASH_AUDIO ?=
# Stage one on a Ray cluster: ENGINE=ray [RAY_ADDRESS=auto|host:port] (the same store)
ENGINE      ?= local
RAY_ADDRESS ?=
# Training: TEACHER=none is the baseline; "a+b" trains against several teacher stores.
# Empty values keep the dataset preset's choice.
STUDENT  ?=
FRONTEND ?=
LOSS     ?=
LAMBDA   ?=
KD       ?=
WORKERS  ?=
# Training processes: NPROC>1 launches data-parallel training through torchrun (one GPU each
# with CUDA); the preset's batch_size stays the global batch, split over the processes.
NPROC    ?=
# Any other training setting, e.g. SETTINGS="max_epochs=20 lr=3e-4"
SETTINGS ?=
# Comparisons: seeds per arm, label fractions and λ values as further axes;
# KD=0 leaves the EAsT-KD arm out of a comparison.
SEEDS           ?= 3
LABEL_FRACTIONS ?= 1
LAMBDAS         ?=
# Teacher probes: store names to rank, e.g. TEACHERS="musicnn panns panns-penultimate";
# empty: every complete teacher store of the dataset.
TEACHERS ?=
# Benchmark sizes: 1 is the full benchmark, 0.01 a quick look
BENCH_SCALE ?= 1

export DATA DATASET TEACHER ROOT CSV SPLITS CLIPS WEIGHTS STORE TEACHER_OPTS
export STUDENT FRONTEND LOSS LAMBDA KD SETTINGS

CLI       := $(PY) -m pipeline --data-dir $(DATA)
# Appended to data / extract / mels: exit status 1 (some clips failed, output complete) is fine.
SOME_FAILED := || [ $$? -eq 1 ]
ENGINE_OPTS := $(if $(filter ray,$(ENGINE)),--engine ray $(if $(RAY_ADDRESS),--ray-address $(RAY_ADDRESS)))
PRECISION_OPTS := $(if $(PRECISION),--precision $(PRECISION))
MAX_FAILED_OPTS := $(if $(MAX_FAILED),--max-failed $(MAX_FAILED))
HASH_AUDIO_OPTS := $(if $(filter 1 yes true True,$(HASH_AUDIO)),--hash-audio)
INSTALLED := $(VENV)/.installed
STAMPS    := $(DATA)/stamps
CACHE     := $(DATA)/cache/$(DATASET)
MANIFEST  := $(DATA)/manifests/$(DATASET).parquet
# Store names: a teacher's name with ':' as '-' (hear:<module> → hear-<module>).
TEACHER_STORES := $(subst :,-,$(filter-out none,$(subst +, ,$(TEACHER))))
EMBEDDING := $(CACHE)/$(subst :,-,$(or $(STORE),$(TEACHER))).zarr/COMPLETE/zarr.json
KD_ON     := $(filter 1 yes true True,$(KD))
TRAINED   := $(STAMPS)/train-$(DATASET)-$(or $(STUDENT),preset)-$(subst :,-,$(TEACHER))$(if $(KD_ON),-kd).done
# `make eval` without DATASET= evaluates the trained runs of every dataset.
EVAL_DATASET := $(if $(filter file,$(origin DATASET)),,$(DATASET))
EVALUATED := $(STAMPS)/eval-$(or $(EVAL_DATASET),all).done
REPORT    := $(DATA)/reports/$(DATASET)/report.md

# Refresh the parameter stamps before Make compares timestamps (needs the venv's Python only
# for the standard library; before `make setup` the stamp rule below creates them).
# $(shell) does not see exported variables in every make version: pass them, shell-quoted.
quote = '$(subst ','\'',$(1))'
STAMP_VARS := DATA DATASET TEACHER ROOT CSV SPLITS CLIPS WEIGHTS STORE TEACHER_OPTS \
	STUDENT FRONTEND LOSS LAMBDA KD SETTINGS TEACHERS
STAMP_CMD := env $(foreach v,$(STAMP_VARS),$(v)=$(call quote,$($(v)))) $(PY) -m pipeline.stamps
ifneq ($(wildcard $(PY)),)
_ := $(shell $(STAMP_CMD))
endif

.PHONY: help setup data extract mels train compare paper probes eval report demo bench test torture lint format clean-venv

help:
	@echo "make demo                                   everything on the offline default dataset"
	@echo "make setup                                  virtual env with everything (.venv)"
	@echo "make data DATASET=demo [CLIPS=N]            render the offline default dataset"
	@echo "make data DATASET=openmic ROOT=<release>    manifest from OpenMIC-2018"
	@echo "make data DATASET=magnatagatune ROOT=<dir> [SPLITS=<dir>]  manifest from MagnaTagATune"
	@echo "make data DATASET=<name> CSV=<file.csv>     manifest from your own CSV"
	@echo "make extract DATASET=... TEACHER=...        stage one: teacher embeddings (resumable)"
	@echo "make extract ... ENGINE=ray [RAY_ADDRESS=auto]  the same on a Ray cluster"
	@echo "make extract ... PRECISION=bf16             teacher network in bf16 (default auto)"
	@echo "make extract|mels ... MAX_FAILED=0.5        complete a store with up to 50 % of clips failed"
	@echo "make extract|mels ... HASH_AUDIO=1          audio content (sha256), not size and time, says what changed"
	@echo "make mels DATASET=... [FRONTEND=cp_resnet]  log-mel store (make train builds it if missing)"
	@echo "make train DATASET=... TEACHER=...|none [STUDENT= LOSS=dc|cosine LAMBDA= KD=1 SETTINGS=...]"
	@echo "                                            stage two: train a student (resumable)"
	@echo "make train ... NPROC=2                      the same on 2 processes (torchrun, DDP)"
	@echo "make compare DATASET=... TEACHER=... [SEEDS=3 LABEL_FRACTIONS=\"0.1 1\" LAMBDAS=\"0.5 0.9\" KD=0]"
	@echo "                                            baseline vs EAsT vs EAsT-KD over seeds, 95% CIs"
	@echo "make paper DATASET=openmic|magnatagatune [SEEDS=3]  the paper's whole table, ours beside theirs"
	@echo "make probes DATASET=... [TEACHERS=\"musicnn panns\"] [SEEDS=3]  rank teacher stores by linear-probe"
	@echo "                                            test mAP (default: every complete store), no training"
	@echo "make eval [DATASET=...]                     test metrics of trained runs + teacher probes"
	@echo "                                            (of every dataset without DATASET=)"
	@echo "make report DATASET=...                     markdown report with plots"
	@echo "make bench [BENCH_SCALE=1] [DEVICE=cuda]    benchmarks → data/bench/results.md"
	@echo "make test                                   the test suite"
	@echo "make torture                                the long reliability runs (kills, bad inputs, ...)"
	@echo "make lint                                   ruff"

setup: $(INSTALLED)

# torch is installed first and pinned: a bare `torch` requirement would pull a CUDA build.
# These declare requirements that cannot be installed or run here and are not needed, hence
# --no-deps: musicnn (pretrained weights only), tinysoundfont (pyaudio), torchopenl3 (an old
# resampy), hear21passt (timm, torchaudio), aisfx (an old librosa and numpy; weights only).
# torchaudio itself only serves the tests, as the reference Kaldi filterbank (its compiled part
# does not load on a CPU-only torch).
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[demo,onnx,dev]'
	$(PY) -m pip install --quiet --no-deps musicnn==0.1.0 tinysoundfont==0.3.7 \
		torchopenl3==1.0.1 hear21passt==0.0.26 torchaudio==2.11.0 aisfx==0.1.2
	touch $@

$(STAMPS)/%.params: | $(INSTALLED)
	$(STAMP_CMD)

data: $(MANIFEST)
$(MANIFEST): $(STAMPS)/data-$(DATASET).params | $(INSTALLED)
	$(CLI) data $(DATASET) $(if $(ROOT),--root $(ROOT)) $(if $(CSV),--csv $(CSV)) \
		$(if $(SPLITS),--split-dir $(SPLITS)) $(if $(CLIPS),--clips $(CLIPS)) $(SOME_FAILED)

extract: $(EMBEDDING)
$(EMBEDDING): $(STAMPS)/extract-$(DATASET)-$(subst :,-,$(or $(STORE),$(TEACHER))).params $(MANIFEST)
	$(CLI) extract $(DATASET) $(TEACHER) --replace-stale $(if $(WEIGHTS),--weights $(WEIGHTS)) \
		$(if $(DEVICE),--device $(DEVICE)) $(if $(STORE),--name $(STORE)) \
		$(foreach o,$(TEACHER_OPTS),-o $(o)) $(PRECISION_OPTS) $(MAX_FAILED_OPTS) $(ENGINE_OPTS) \
		$(HASH_AUDIO_OPTS) $(SOME_FAILED)

# Teacher stores a training run needs, by store name (= teacher name).
$(CACHE)/%.zarr/COMPLETE/zarr.json: $(STAMPS)/extract-$(DATASET)-%.params $(MANIFEST)
	$(CLI) extract $(DATASET) $(patsubst hear-%,hear:%,$*) --replace-stale \
		$(if $(DEVICE),--device $(DEVICE)) $(PRECISION_OPTS) $(MAX_FAILED_OPTS) $(ENGINE_OPTS) \
		$(HASH_AUDIO_OPTS) $(SOME_FAILED)

mels: $(MANIFEST)
	$(CLI) mels $(DATASET) $(if $(FRONTEND),--frontend $(FRONTEND)) \
		$(if $(DEVICE),--device $(DEVICE)) $(MAX_FAILED_OPTS) $(HASH_AUDIO_OPTS) $(SOME_FAILED)

train: $(TRAINED)
$(TRAINED): $(STAMPS)/train-$(DATASET)-$(or $(STUDENT),preset)-$(subst :,-,$(TEACHER))$(if $(KD_ON),-kd).params \
		$(MANIFEST) $(foreach t,$(TEACHER_STORES),$(CACHE)/$(t).zarr/COMPLETE/zarr.json)
	$(if $(filter-out 0 1,$(NPROC)),$(PY) -m torch.distributed.run --standalone \
		--nproc-per-node $(NPROC) -m pipeline --data-dir $(DATA),$(CLI)) train $(DATASET) \
		teacher=$(TEACHER) $(if $(STUDENT),student=$(STUDENT)) \
		$(if $(FRONTEND),frontend=$(FRONTEND)) $(if $(LOSS),loss=$(LOSS)) \
		$(if $(LAMBDA),lam=$(LAMBDA)) $(if $(KD_ON),kd=True) \
		$(foreach s,$(SETTINGS),$(call quote,$(s))) $(if $(DEVICE),--device $(DEVICE)) \
		$(if $(WORKERS),--workers $(WORKERS))
	touch $@

# Trains only the runs that are missing (finished ones are found by their configuration), then
# evaluates and writes the report with the comparison.
compare: $(MANIFEST) $(foreach t,$(TEACHER_STORES),$(CACHE)/$(t).zarr/COMPLETE/zarr.json)
	$(if $(filter-out 0 1,$(NPROC)),$(PY) -m torch.distributed.run --standalone \
		--nproc-per-node $(NPROC) -m pipeline --data-dir $(DATA),$(CLI)) compare $(DATASET) \
		$(TEACHER) --seeds $(SEEDS) --label-fractions $(LABEL_FRACTIONS) \
		$(if $(LAMBDAS),--lambdas $(LAMBDAS)) $(if $(filter 0 no false False,$(KD)),--no-kd) \
		$(if $(STUDENT),student=$(STUDENT)) $(if $(FRONTEND),frontend=$(FRONTEND)) \
		$(if $(LOSS),loss=$(LOSS)) $(foreach s,$(SETTINGS),$(call quote,$(s))) \
		$(if $(DEVICE),--device $(DEVICE)) $(if $(WORKERS),--workers $(WORKERS))

# The paper's table (DATASET=openmic|magnatagatune): the four teachers' stores, then every run.
PAPER_TEACHERS := vggish openl3 passt panns
paper: $(MANIFEST) $(foreach t,$(PAPER_TEACHERS),$(CACHE)/$(t).zarr/COMPLETE/zarr.json)
	$(CLI) paper $(DATASET) --seeds $(SEEDS) $(foreach s,$(SETTINGS),$(call quote,$(s))) \
		$(if $(DEVICE),--device $(DEVICE)) $(if $(WORKERS),--workers $(WORKERS))

# Teacher stores ranked by linear-probe test mAP (data/reports/DATASET/probes.md), from the
# cached stores only. Stores named after a teacher are extracted (or refreshed) as for training;
# other store names (made with STORE= and TEACHER_OPTS=) must exist and are probed as they are.
PROBE_STORES := $(subst :,-,$(TEACHERS))
is_teacher = $(or $(wildcard pipeline/teachers/$(1).py),$(filter hear-%,$(1)))
probes: $(MANIFEST) $(foreach t,$(PROBE_STORES),$(if $(call is_teacher,$(t)),$(CACHE)/$(t).zarr/COMPLETE/zarr.json))
	$(CLI) probes $(DATASET) $(PROBE_STORES) --seeds $(SEEDS)

eval: $(EVALUATED)
$(EVALUATED): $(wildcard $(STAMPS)/train-$(or $(EVAL_DATASET),*)-*.done) | $(INSTALLED)
	$(CLI) eval $(EVAL_DATASET) $(if $(DEVICE),--device $(DEVICE))
	touch $@

report: $(REPORT)
$(REPORT): $(EVALUATED)
	$(CLI) report $(DATASET)

# The embedded default, end to end: the student without a teacher and with musicnn (EAsT),
# three seeds each, then test metrics, the teacher's probe, the comparison with 95 % intervals
# and the report (`make compare DATASET=demo TEACHER=musicnn` adds EAsT-KD).
demo: $(INSTALLED)
	$(MAKE) --no-print-directory compare DATASET=demo TEACHER=musicnn SEEDS=3 KD=0 \
		LABEL_FRACTIONS=1 LAMBDAS=

bench: $(INSTALLED)
	$(PY) -m pipeline.bench --scale $(BENCH_SCALE) $(if $(DEVICE),--device $(DEVICE)) \
		--out $(DATA)/bench --root $(DATA)/bench/work

test: $(INSTALLED)
	$(PY) -m pytest -q

# The long reliability runs, marked torture (tests/reliability/ and others; pytest's default
# options leave them out).
torture: $(INSTALLED)
	$(PY) -m pytest -q -m torture

lint: $(INSTALLED)
	$(VENV)/bin/ruff check pipeline tests
	$(VENV)/bin/ruff format --check pipeline tests

format: $(INSTALLED)
	$(VENV)/bin/ruff format pipeline tests
	$(VENV)/bin/ruff check --fix pipeline tests

clean-venv:
	rm -rf $(VENV)
