# WBC portal. `make run` starts it on a bare machine; `make test` checks everything.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
APT_PACKAGES := docker-compose chromium libpango-1.0-0 libpangoft2-1.0-0

.PHONY: setup apt frontend run test lint typecheck format migrate demo demo-model bench bench-loop train-cpu clean

setup: $(VENV)/.installed apt frontend

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# System packages: docker-compose validates docker-compose.yml offline in the tests;
# Chromium runs the end-to-end browser tests.
apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

# The browser UI: TypeScript built by Vite into static files Django serves (no CDN).
frontend:
	@if [ -f frontend/package.json ]; then \
	  cd frontend && { [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund; } && npm run build; \
	fi

migrate: setup
	$(PY) manage.py migrate --noinput

demo: migrate
	$(PY) manage.py load_demo

# The demo's model (demo/model/: EfficientNet-Lite0's last stage + head, trained on PBC cells
# that are not the demo's own; see scripts/make_demo_model.py). About 8 minutes on one thread.
demo-model: setup
	nice -n 10 $(PY) scripts/make_demo_model.py --pbc $(SHARED_DATA)/pbc

run: demo
	@echo "Serving on http://$(HOST):$(PORT)/  (Ctrl-C to stop)"
	$(VENV)/bin/uvicorn wbcportal.asgi:application --host $(HOST) --port $(PORT)

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format:
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck:
	$(VENV)/bin/mypy

test: lint typecheck
	@set -e; eval "$$($(PY) scripts/service_env.py)"; \
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The learning loop through the product (docs/benchmarks.md, "Learning loop"): about 20 minutes.
bench-loop: setup
	@set -e; eval "$$($(PY) scripts/service_env.py)"; \
	$(PY) benchmarks/bench_loop.py --rounds 5 --batch 100 --out runs/bench/loop

# Every benchmark, each next to its baseline; rewrites the table in docs/benchmarks.md.
bench: setup
	$(PY) benchmarks/run_all.py

# The documented CPU training run (mlworker/training.md): ResNet-18 on pbc + deepapl, central 60 %,
# 28 epochs at 64 px then 10 at 96 px, fp32 on both cores, weight average, flip TTA;
# patient-disjoint validation;
# outputs in runs/train-cpu/.
SHARED_DATA ?= ../shared/data
train-cpu: setup
	$(PY) -m mlworker.train --data $(SHARED_DATA)/pbc --data $(SHARED_DATA)/deepapl \
	  --out runs/train-cpu --arch resnet18 --weights none --image-size 96 --crop 0.6 \
	  --low-res-size 64 --low-res-epochs 28 --batch-size 64 --epochs-head 0 \
	  --epochs-finetune 38 --finetune-scope all --epochs-weak 0 --optimizer adamw --lr 0.002 \
	  --weight-decay 0.05 --lr-schedule cosine --warmup-epochs 1 --label-smoothing 0.1 \
	  --ema-decay 0.985 --tta flips --val-every 4 --balance sampler --balance-power 1.0 \
	  --balance-sources --color-jitter 0.2 --stain-jitter 0.1 \
	  --threads 2 --workers 1 --precision fp32 --seed 0

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
