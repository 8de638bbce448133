# Two commands from a fresh machine: `make demo` and `make test`.
# ORACLE=1 also installs torch (the differential-test oracle); without it torch tests skip.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
comma   := ,
EXTRAS  := test,demo$(if $(ORACLE),$(comma)oracle)
STAMP   := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install demo test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/python -m tapegrad demo

test: install
	$(BIN)/python -m pytest tests

bench: install
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/asv run --python=same --quick --show-stderr

clean:
	rm -rf $(VENV) .asv build *.egg-info
