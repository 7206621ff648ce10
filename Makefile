# Two entry points (see README): `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: run test setup clean

$(BIN)/kinship: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: a bare requirement would pull a multi-GB CUDA build on CPU machines.
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/kinship

DATA ?= data/synth
RUN  ?= runs/demo

run: setup
	@test -d $(DATA) || $(BIN)/kinship synth --out $(DATA)
	$(BIN)/kinship data check $(DATA)
	$(BIN)/kinship baseline --data $(DATA)

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .kinship-cache
