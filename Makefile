# The two set-up commands of README: `make demo` (the main job) and `make test`.
# Both first install what is missing into .venv (tools/setup_env.sh, idempotent).
PY := .venv/bin/python

.PHONY: setup demo test lint

setup:
	bash tools/setup_env.sh

demo: setup
	bash tools/demo.sh

lint: setup
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q
