# The two commands a newcomer needs: `make demo` and `make test`.
# Both create (or refresh) the virtual environment in .venv first, so a fresh
# machine needs only Python 3.11+ and make.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PROTOS := $(wildcard proto/*.proto)
PROTO_STAMP := .stamp-proto

.PHONY: all venv proto test lint typecheck unit demo bench mutate clean

all: test

# Re-run pip only when pyproject.toml changes.
$(VENV)/.stamp: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.stamp

# Generated protobuf/gRPC modules are built from proto/*.proto, never committed.
$(PROTO_STAMP): $(VENV)/.stamp $(PROTOS)
	$(if $(PROTOS),$(PY) -m grpc_tools.protoc -I . \
		--python_out=. --grpc_python_out=. \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --mypy_out=. \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=. \
		$(PROTOS),@true)
	touch $@

proto: $(PROTO_STAMP)

lint: proto
	$(VENV)/bin/ruff check .

typecheck: proto
	$(VENV)/bin/mypy

unit: proto
	$(PY) -m pytest

test: lint typecheck unit

demo: proto
	$(PY) -m regtest.demo

bench: proto
	$(PY) -m bench.run_all

# Mutation testing (docs/mutation.md): a seeded sample, so it ends in well under an hour.
MUTATE_ARGS ?= --sample 300 --seed 1 --jobs 2
mutate: proto
	$(PY) .ci/mutate.py --paths channel protocol regtest/node $(MUTATE_ARGS) \
		--report docs/mutation-report.md

clean:
	rm -rf $(VENV) $(PROTO_STAMP) proto/*_pb2*.py proto/*_pb2*.pyi .pytest_cache .mypy_cache .ruff_cache
