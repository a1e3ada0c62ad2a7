# `make demo` and `make test` work on a fresh clone with nothing installed.
# torch==2.13.0 is installed first, and every later install runs under constraints.txt so that no
# dependency can replace it (see ../shared/DESIGN.md, "Dependencies").
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser viewer-assets demo test test-fast clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,ray]'
	touch $(STAMP)

setup: $(STAMP) viewer-assets

demo: $(STAMP)
	$(BIN)/histokd demo --out demo_run

# The report test opens index.html in headless Chromium (Debian's package); installed when missing
# and possible (root + apt); without it that test fails.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium not available: the report browser test will fail"

# OpenSeadragon for `histokd view`: a pinned release from the npm registry (npm pack, checksum checked), extracted
# into src/histokd/viewer/static/vendor/ (git-ignored, with its licence). Without npm the viewer's browser test
# is skipped and says why; nothing else fails.
viewer-assets: $(STAMP)
	@$(BIN)/python -m histokd.viewer.assets --if-missing || \
	  echo "OpenSeadragon not fetched: histokd view needs it (install npm, then make viewer-assets)"

test: $(STAMP) browser viewer-assets
	HISTOKD_NO_PROGRESS=1 $(BIN)/python -m pytest -q --timeout=900

test-fast: $(STAMP) viewer-assets
	HISTOKD_NO_PROGRESS=1 $(BIN)/python -m pytest -q -m "not slow" --timeout=300

clean:
	rm -rf $(VENV) demo_run .pytest_cache
