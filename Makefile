# The two commands of the README, plus the pieces they are made of.
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= config/default.toml

.PHONY: run test install install-test lint typecheck pytest demo bench soak clean

run: install  ## install into a local virtual environment and start the daemon
	$(VENV)/bin/oracled run --config $(CONFIG)

test: install-test lint typecheck pytest  ## install everything the tests need and run them all

install:
	@scripts/bootstrap.sh

install-test:
	@scripts/bootstrap.sh test && scripts/chain-setup.sh
	@scripts/ops-setup.sh

lint:
	$(VENV)/bin/ruff check oracled tests benchmarks
	$(VENV)/bin/ruff format --check oracled tests benchmarks

typecheck:
	$(VENV)/bin/mypy oracled benchmarks

# The suite as two shards side by side (scripts/pytest-shards.sh); one file: .venv/bin/pytest FILE
pytest:
	PYTEST=$(VENV)/bin/pytest scripts/pytest-shards.sh

demo: install  ## install, then `oracled demo`: simulated venues on loopback, no internet needed
	$(VENV)/bin/oracled demo

BENCH_OUT ?= benchmarks/results
bench: install-test  ## the benchmark set (a few minutes); tables on stdout, JSON in $(BENCH_OUT)
	@mkdir -p $(BENCH_OUT)
	$(PY) benchmarks/bench_round.py --markets 100,1000,5000 --sources 8,16 --json $(BENCH_OUT)/round.json
	$(PY) benchmarks/bench_ingest.py --frames 20000 --repeat 3 --json $(BENCH_OUT)/ingest.json
	$(PY) benchmarks/bench_e2e.py --markets 1000 --sources 8 --rates 8000,32000,64000 --duration 8 --json $(BENCH_OUT)/e2e.json
	$(PY) benchmarks/bench_e2e.py --markets 1000 --sources 8 --rates 32000 --duration 8 --watch 10 --json $(BENCH_OUT)/e2e-watch10.json
	$(PY) benchmarks/bench_e2e.py --venue binance --memory 100,1000,5000 --sources 8 --json $(BENCH_OUT)/memory.json

SOAK_SECONDS ?= 14400
soak: install-test  ## the long soak (4 h by default): faults on a schedule, checked at the end
	@mkdir -p $(BENCH_OUT)
	$(PY) benchmarks/soak.py --duration $(SOAK_SECONDS) --json $(BENCH_OUT)/soak.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis
