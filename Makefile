# The two set-up commands of README: `make demo` (the main job) and `make test`.
# Both first install what is missing into .venv (tools/setup_env.sh, idempotent).
# MMCV=full (e.g. `make setup MMCV=full`) builds mmcv with all its compiled ops;
# by default .venv gets mmcv-lite with fec-mm's torchvision-backed ops, and keeps
# a full mmcv it already has.
PY := .venv/bin/python
MMCV ?=

# TEST_BROWSER=1 (set by `make test`) adds the browser-test extra: Playwright
# and, as root, Debian's chromium (apt-get), for the cluster explorer's tests.
TEST_BROWSER ?= 0

.PHONY: setup demo test lint

setup:
	MMCV=$(MMCV) TEST_BROWSER=$(TEST_BROWSER) bash tools/setup_env.sh

demo: setup
	bash tools/demo.sh

lint: setup
	$(PY) -m ruff check .

test: TEST_BROWSER = 1
test: lint
	$(PY) -m pytest -q
