# Set-up, build and checks. Every target installs what it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
# Reinstalls when requirements.txt changes.
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)
# One optimised build serves tests, examples and benchmarks (libtorch's C++ wrapper alone takes
# minutes to compile, so a second profile would double that).
CARGO_FLAGS := --release

.PHONY: all venv build test bench lint fmt clean

all: build

# libtorch is the PyPI torch wheel (CUDA 13 build, runs on CPU too); the rest of
# requirements.txt serves the tests. `.venv/torch` is the stable path .cargo/config.toml uses.
venv: $(STAMP)
$(STAMP): requirements.txt
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	ln -sfn "$$($(VENV)/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')" $(VENV)/torch
	rm -f $(VENV)/.installed-*
	touch $@

build: venv
	cargo build $(CARGO_FLAGS) --all-targets

# The tool tests run the example binaries, which `cargo test` alone does not leave in
# target/*/examples.
test: venv
	cargo build $(CARGO_FLAGS) --examples
	cargo test $(CARGO_FLAGS) --all-targets -- --nocapture --test-threads 2

# Side-by-side timings against the PyTorch originals; results in target/bench/results.json.
bench: venv
	cargo bench --bench data_pipeline

lint: venv
	cargo fmt --check
	cargo clippy $(CARGO_FLAGS) --all-targets -- -D warnings

fmt:
	cargo fmt

clean:
	cargo clean
