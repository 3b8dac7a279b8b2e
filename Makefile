# tfreid: `make quickstart` (train + evaluate + export on the synthetic dataset) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Quickstart locations and experiment (override on the command line).
EXPERIMENT ?= nonlocal_i3d:synthetic
PRESET ?= easy
DATA_RAW ?= runs/data/synthetic_$(PRESET)_raw
RUN_DIR ?= runs/quickstart
# The converter flags of the streams the experiment's model reads beyond the RGB frames
# and the keypoints every quickstart dataset has (`python -m tfreid.data.streams`: e.g.
# --optical_flow for a3d). A dataset converted with extra flags goes to its own directory
# (runs/data/synthetic_easy_optical_flow), so the default quickstart converts no flow.
# Computed by `quickstart` (after the install) and handed to the sub-make.
STREAM_FLAGS ?=
DATA_SUFFIX := $(subst $(eval) ,,$(subst --,_,$(STREAM_FLAGS)))
DATA ?= runs/data/synthetic_$(PRESET)$(DATA_SUFFIX)

.PHONY: install quickstart quickstart-run data test bench clean leaderboard

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Rendered once: the stamp is written when rendering finished (a run cut short re-renders,
# --overwrite replacing only the generator's own entries); the conversion is resumable and
# its manifest.json is written last.
RAW_DONE := $(DATA_RAW).complete

$(RAW_DONE): | $(STAMP)
	$(PY) -m data_pipelines.synthetic --output_dir=$(DATA_RAW) --num_identities=150 --seed=0 --preset=$(PRESET) --overwrite
	touch $@

$(DATA)/manifest.json: $(RAW_DONE)
	$(PY) -m data_pipelines.convert --dataset=mars --input_dir=$(DATA_RAW) --output_dir=$(DATA) --keypoints=$(DATA_RAW)/keypoints.jsonl $(STREAM_FLAGS)

data: $(DATA)/manifest.json

# The experiment's converter flags (keypoints left out: always converted), then the run.
quickstart: $(STAMP)
	$(MAKE) --no-print-directory quickstart-run STREAM_FLAGS="$$(TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m tfreid.data.streams --experiment=$(EXPERIMENT) | tr ' ' '\n' | grep -v '^--keypoints' | tr '\n' ' ')"

quickstart-run: data
	$(PY) -m tfreid.train --experiment=$(EXPERIMENT) --data_dir=$(DATA) --model_dir=$(RUN_DIR)
	$(PY) -m tfreid.evaluate --model_dir=$(RUN_DIR)
	$(PY) -m tfreid.export --model_dir=$(RUN_DIR) --export_dir=$(RUN_DIR)/export
	@echo; $(PY) -c "import json, tfreid.evaluate as e; \
	  print(e.format_summary(json.load(open('$(RUN_DIR)/eval/metrics.json'))))"
	@echo "SavedModel: $$(ls -d $(RUN_DIR)/export/* | sort -V | tail -n 1) (serve it: README, Export and serving)"

test: install
	$(PY) -m pytest -n 2 -q tests

# Every method's :synthetic experiment on both presets, 3 seeds (benchmarks/leaderboard.py:
# resumable; tables, plot and attention pictures in docs/leaderboard). Not part of `test`.
LEADERBOARD_FLAGS ?=
leaderboard: $(STAMP)
	$(PY) benchmarks/leaderboard.py $(LEADERBOARD_FLAGS)

clean:
	rm -rf runs

include bazel.mk
