# Two commands from a fresh machine: `make demo` and `make test`.
# ORACLE=1 also installs torch (the differential-test oracle); without it torch tests skip.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
comma   := ,
EXTRAS  := test,demo$(if $(ORACLE),$(comma)oracle)
STAMP   := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# The benchmarks time tapegrad against torch, so they always install torch (the oracle extra).
BENCH_STAMP := $(VENV)/.installed-test-demo-bench-oracle

# asv: results per commit and machine under .asv/results, the site in .asv/html (asv.conf.json).
ASV_CONF ?= asv.conf.json
ASV      = $(BIN)/asv --config $(ASV_CONF)
BENCH_PY = $(BIN)/python tools/bench.py --config '$(ASV_CONF)'
BASE     ?= main
# bench-compare fails when a benchmark is slower than on BASE by more than this factor (and by
# more than its samples' spread, as asv judges it). asv's default, 1.1, is within one run's noise
# on a 2-core machine; on a shared one, where other tenants' load moved W1 record's time by up to
# 1.7x between runs of unchanged code, compare with a larger FACTOR or read the RatioToTorch rows.
FACTOR   ?= 1.25
QUICK    ?=# QUICK=1: each benchmark once (asv run --quick): checks the plumbing, times roughly
BENCH    ?=# a regular expression: only the benchmarks whose names match (asv run --bench)
COMMIT   ?=# make bench COMMIT=main: time main's tapegrad with today's suite, filed under main

.PHONY: install bench-install demo test bench bench-compare bench-publish clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[$(subst -,$(comma),$*)]"
	touch $@

install: $(STAMP)

bench-install: $(BENCH_STAMP)

demo: install
	$(BIN)/python -m tapegrad demo

test: install
	$(BIN)/python -m pytest tests

# Times the working tree and files the results under the checked-out commit (asv keeps an
# `existing` environment's results only when told which commit they are for); with a commit as
# $(2), times that commit's tapegrad instead, put first on the path of the processes asv times in.
define bench_run
	@$(BENCH_PY) machine
	$(if $(2),,@git diff --quiet HEAD -- || echo "bench: the working tree differs from HEAD: its results are filed under HEAD $$(git rev-parse --short HEAD)")
	$(1)$(if $(2),src="$$($(BENCH_PY) source '$(2)')" && PYTHONPATH="$$src" ASV_PYTHONPATH="$$src" )$(ASV) run \
		--python=same --set-commit-hash "$$(git rev-parse --verify '$(or $(2),HEAD)^{commit}')" --show-stderr \
		$(if $(QUICK),--quick) $(if $(BENCH),--bench '$(BENCH)')
endef

bench: bench-install
	$(call bench_run,,$(COMMIT))

# The current commit against BASE's recorded results, as `asv continuous` prints and judges it.
# BASE is checked first, so that a missing base fails before the run, not after it; a benchmark
# that fails in the run goes on to the table, where it counts as a regression (!).
bench-compare: bench-install
	@$(BENCH_PY) check-base '$(BASE)'
	$(call bench_run,-,)
	@$(BENCH_PY) compare '$(BASE)' --factor '$(FACTOR)' $(if $(BENCH),--bench '$(BENCH)')

bench-publish: bench-install
	@$(BENCH_PY) check-results
	$(ASV) publish
	@echo "bench-publish: open it with: $(ASV) preview   (serves it at http://127.0.0.1:8080)"

# Keeps .asv/results: the benchmark history is not a build product (rm -rf .asv drops it).
clean:
	rm -rf $(VENV) .asv/env .asv/html build *.egg-info
