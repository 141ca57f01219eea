# The two set-up commands of README: `make demo` (the main job) and `make test`.
# Both first install what is missing into .venv (tools/setup_env.sh, idempotent).
# MMCV=full (e.g. `make setup MMCV=full`) builds mmcv with all its compiled ops;
# by default .venv gets mmcv-lite with fec-mm's torchvision-backed ops, and keeps
# a full mmcv it already has.
PY := .venv/bin/python
MMCV ?=
# EXTRAS=tools: also the packaged tools' dependencies (requirements/tools.txt);
# the tests use them, so `make test` installs them.
EXTRAS ?=

.PHONY: setup demo test lint

setup:
	MMCV=$(MMCV) EXTRAS=$(EXTRAS) bash tools/setup_env.sh

demo: setup
	bash tools/demo.sh

lint: setup
	$(PY) -m ruff check .

test: EXTRAS = tools
test: lint
	$(PY) -m pytest -q
