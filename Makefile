# The two commands of the README: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never

.PHONY: run test setup lint fmt bench-intake bench-pipeline bench-saga clean

run: setup
	.venv/bin/orderly up

test: setup
	scripts/test.sh

setup:
	@scripts/bootstrap.sh

lint: setup
	scripts/test.sh --lint-only

fmt: setup
	.venv/bin/ruff format src tests bench
	.venv/bin/ruff check --fix src tests bench

bench-intake: setup
	.venv/bin/python -m bench.intake.run

bench-pipeline: setup
	.venv/bin/python -m bench.pipeline.run

bench-saga: setup
	.venv/bin/python -m bench.saga.run

clean:
	rm -rf .venv .tools orderly.db orderly.db-wal orderly.db-shm
