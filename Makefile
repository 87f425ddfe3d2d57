# Set-up, build and checks. Every target installs what it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
TORCH_VERSION := 2.11.0
TORCHVISION_VERSION := 0.26.0
STAMP := $(VENV)/.installed-torch-$(TORCH_VERSION)
# One optimised build serves tests, examples and benchmarks (libtorch's C++ wrapper alone takes
# minutes to compile, so a second profile would double that).
CARGO_FLAGS := --release

.PHONY: all venv build test lint fmt check-cuda clean

all: build

# libtorch is the PyPI torch wheel (CUDA 13 build, runs on CPU too); torchvision, numpy and
# safetensors serve the parity tests. `.venv/torch` is the stable path .cargo/config.toml uses.
venv: $(STAMP)
$(STAMP):
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION) numpy safetensors
	ln -sfn "$$($(VENV)/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')" $(VENV)/torch
	touch $@

build: venv
	cargo build $(CARGO_FLAGS) --all-targets

test: venv
	cargo test $(CARGO_FLAGS) --all-targets -- --nocapture --test-threads 2

lint: venv
	cargo fmt --check
	cargo clippy $(CARGO_FLAGS) --all-targets -- -D warnings

fmt:
	cargo fmt

clean:
	cargo clean
