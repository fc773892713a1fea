VENV ?= .venv
PY := $(VENV)/bin/python
# pytest-xdist workers for `make test` (2 = the 2-core machines the suite is sized for; 0 = one process)
TEST_WORKERS ?= 2

.PHONY: setup demo test test-all clean

setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) -m megatron_huatuo.demo

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS)

test-all: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m ''

clean:
	rm -rf $(VENV) demo_output
