# `make test` and `make demo` do all set-up on a fresh machine: they create .venv and install the project.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Keep the tiny-model kit and DeepSpeed's JIT builds inside the checkout, not in $HOME.
export TSCALE_TINY_DIR ?= $(CURDIR)/.tiny_models
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-fast demo lint bench clean

$(BIN)/tscale: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test,deepspeed]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import tscale_train, search, rewards, diffusers, open_clip" 
	touch $(BIN)/tscale

install: $(BIN)/tscale

# Everything, as CI runs it.
test: install
	$(BIN)/python -m pytest -q tests

# The tier to run after every change: no subprocess launches, no kit builds, no benchmark smoke runs.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The online loop on 2 CPU processes and the shapes model: SES pairs scored by shapes-clip teach a LoRA;
# the verifier (ground truth, never trained on) judges the held-out prompts before -> after; then SES
# with the trained LoRA on a held-out prompt, base vs searched side by side.
demo: install
	rm -rf runs/demo
	OMP_NUM_THREADS=1 $(BIN)/accelerate launch --config_file accelerate_configs/cpu/demo.yaml \
		recipes/flux2_klein_dpo.py --config recipes/configs/shapes.yaml --output_dir runs/demo
	OMP_NUM_THREADS=2 $(BIN)/python -m tscale_train.shapes.evaluation --lora runs/demo --run runs/demo --images_per_family 40
	OMP_NUM_THREADS=2 $(BIN)/tscale ses --model shapes --lora runs/demo --reward shapes-clip \
		--prompt "an orange circle to the left of a cyan square" --budget 20 --seed 1 \
		--save-trace --out runs/demo/ses/orange_circle.png

# The CPU benchmarks of docs/benchmarks.md: the shapes world's (each 5-30 minutes on 2 cores),
# then the analytic and tiny-kit ones (each under 10 minutes).
bench: install
	$(BIN)/python bench/shapes_previews.py
	$(BIN)/python bench/shapes_search.py --search-rewards shapes-clip --plot bench/results/shapes_search_clip.png
	$(BIN)/python bench/shapes_search.py --search-rewards verifier --plot bench/results/shapes_search_verifier.png
	$(BIN)/python bench/shapes_training.py
	$(BIN)/python bench/shapes_hacking.py
	$(BIN)/python bench/search_quality.py
	$(BIN)/python bench/search_speed.py
	$(BIN)/python bench/amortisation.py
	$(BIN)/python bench/pair_sources.py
	$(BIN)/python bench/guards.py
	$(BIN)/python bench/gpu_klein.py --tiny

clean:
	rm -rf $(VENV) .tiny_models .torch_extensions runs
