# make demo: set up .venv and run the main job; make test: set up .venv and run the tests; make check-wheel: the
# built wheel, installed into a fresh environment outside the checkout, runs the demo (CI runs it after the tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu

.PHONY: install test demo lint check-wheel clean

install: $(STAMP)

# The CPU build of PyTorch comes first on machines without an NVIDIA GPU: a plain `torch` would pull a
# multi-GB CUDA build. The package itself only declares a torch range.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/python -m pip install --quiet torch; \
	else \
		$(BIN)/python -m pip install --quiet torch==2.13.0 || \
		$(BIN)/python -m pip install --quiet torch --index-url $(TORCH_CPU_INDEX); \
	fi
	$(BIN)/python -m pip install --quiet -e ".[test,explore,track]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

demo: install
	$(BIN)/causaldiffae demo --out runs/demo
	@echo "demo: open runs/demo/report.md (traversal grids of the shipped model beside the true counterfactuals)"

lint: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy

# sdist -> wheel, its contents, a fresh venv in a temporary folder (torch as in .venv), --help and a short demo
check-wheel: install
	$(BIN)/python scripts/check_wheel.py --torch-index-url $(TORCH_CPU_INDEX)

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
