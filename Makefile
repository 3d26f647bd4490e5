# Two commands do everything on a fresh machine:
#   make demo   pretrain MAE on the shipped CIFAR-10 sample, draw reconstructions, kNN top-1,
#               attention / PCA pictures and the report page
#   make test   run the test suite
# Each creates its own virtual environment in .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO   ?= runs/demo

.PHONY: demo test test-fast lint format clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	rm -rf $(DEMO)
	$(PY) -m mimkit pretrain --config mae_vit_tiny_cifar_demo --data examples/cifar10-mini/train --out $(DEMO)
	$(PY) -m mimkit visualize --checkpoint $(DEMO)/checkpoint-last.pth \
		--images examples/cifar10-mini/test --num-images 8 --out $(DEMO)/reconstructions.png
	$(PY) -m mimkit knn --checkpoint $(DEMO)/checkpoint-last.pth --data examples/cifar10-mini \
		--out $(DEMO)/knn eval.cache_dir=none
	$(PY) -m mimkit inspect --checkpoint $(DEMO)/checkpoint-last.pth \
		--images examples/cifar10-mini/test --out $(DEMO)
	$(PY) -m mimkit report $(DEMO) --out $(DEMO)/report.html
	@echo "pictures: $(DEMO)/reconstructions.png $(DEMO)/loss.png $(DEMO)/attention.png" \
		"$(DEMO)/features.png; kNN: $(DEMO)/knn/metrics.json; page: $(DEMO)/report.html"

test: $(VENV)/.installed
	$(PY) -m pytest -q

# unit tests only (tests marked slow left out): under 2 minutes on 2 cores, for contributors
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(VENV)/.installed
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
