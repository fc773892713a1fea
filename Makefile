VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-all clean

setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) -m megatron_huatuo.demo

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ''

clean:
	rm -rf $(VENV) demo_output
