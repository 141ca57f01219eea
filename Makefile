# The two set-up commands of README: `make demo` (the main job) and `make test`
# (ruff, the docs build, pytest: what CI runs).
# Both first install what is missing into .venv (tools/setup_env.sh, idempotent).
# MMCV=full (e.g. `make setup MMCV=full`) builds mmcv with all its compiled ops;
# by default .venv gets mmcv-lite with fec-mm's torchvision-backed ops, and keeps
# a full mmcv it already has.
PY := .venv/bin/python
MMCV ?=
# EXTRAS=tools,browser (what `make test` sets): the extras of tools/setup_env.sh
# (requirements/<name>.txt; browser also installs Debian's chromium as root).
EXTRAS ?=

.PHONY: setup demo test lint docs

setup:
	MMCV=$(MMCV) EXTRAS=$(EXTRAS) bash tools/setup_env.sh

demo: setup
	bash tools/demo.sh

lint: setup
	$(PY) -m ruff check .

# HTML into docs/_build/html; any Sphinx warning (broken link or reference,
# page outside the toctree, bad docstring) is an error.
docs: setup
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

test: EXTRAS = tools,browser
test: lint docs
	$(PY) -m pytest -q --durations=25
