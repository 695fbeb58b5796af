# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test test-fast setup data bench clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,samples,ray,plots]'
	touch $(STAMP)

setup: $(STAMP) data

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (MIT).
data:
	@test -f $(FASHION_MNIST) || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y -qq dataset-fashion-mnist >/dev/null || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }; \
	  else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'"; exit 1; fi; }

demo: setup
	$(BIN)/python -m taskindex.cli.demo

test: setup
	$(BIN)/python -m pytest -q

# The edit-test loop: the same suite without the tests marked slow.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python -m tools.bench_embed

clean:
	rm -rf $(VENV) build *.egg-info
