# Two entry points (see README): `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: run test setup clean browser

$(BIN)/kinship: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: a bare requirement would pull a multi-GB CUDA build on CPU machines.
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/kinship

DATA ?= data/synth
RUN  ?= runs/demo

# The whole job on this machine (README "Orchestration"): the local stack (S3 + Prefect + one worker per
# pool), a synthetic data set pushed to S3, every deployment, one `kinship/full` run followed to the end
# (deployments/follow.py prints its children's lines too: fetch, epochs, engine rows), then where its report
# is and the UI address. A second `make run` reuses the stack; on the same data version, code and configuration
# its run ends at once with "nothing new since run X" (README "Retraining"; TRAIN='{"epochs":14}' trains again).
DEMO_DATA ?= data/demo
DEMO_URI  ?= s3://kinship/datasets/demo
STACK_ENV  = $${KINSHIP_STACK_DIR:-.stack}/env
# JSON overrides of the deployment's defaults, e.g. make run TRAIN='{"epochs":14}' PRECISIONS='["fp32","int8"]'
TRAIN      ?=
PRECISIONS ?=

run: setup
	infra/local/up
	@test -d $(DEMO_DATA) || $(BIN)/kinship synth --out $(DEMO_DATA) --size 64
	$(BIN)/kinship data check $(DEMO_DATA)
	. "$(STACK_ENV)" && $(BIN)/kinship data push $(DEMO_DATA) $(DEMO_URI)
	. "$(STACK_ENV)" && $(BIN)/prefect --no-prompt deploy --all
	. "$(STACK_ENV)" && $(BIN)/python deployments/follow.py kinship/full --param 'dataset_uri="$(DEMO_URI)"' \
	    $(if $(TRAIN),--param 'train=$(TRAIN)') $(if $(PRECISIONS),--param 'precisions=$(PRECISIONS)')
	. "$(STACK_ENV)" && $(BIN)/python deployments/show_run.py --out out

# The browser test drives Debian's chromium (Playwright's own browser download cannot work offline).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium could not be installed: the UI test will be skipped"

# Two lanes at once (tests/run_lanes.py): the integration tests (real servers, mostly waiting on them) and the
# CPU-bound rest, as two pytest processes; on 2 cores the waiting of one hides under the work of the other.
test: setup browser
	$(BIN)/python tests/run_lanes.py

# What this host's GPU does for the project (scripts/gpu_check.py, README "GPU generations"): AMP vs FP32 training,
# PyTorch pairs/s on the GPU and the TensorRT engines where TensorRT supports it; one table, out/gpu-check/gpu-check.json,
# about 5 minutes. Needs torch and the library only. Without a CUDA/ROCm GPU: one line, exit 2 (GPU_CHECK_ARGS=--cpu
# runs the same steps on the CPU with tiny sizes).
GPU_CHECK_ARGS ?=
.PHONY: gpu-check
gpu-check: setup
	$(BIN)/python scripts/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .kinship-cache
