# Set-up, build and checks. Every target installs what it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
# Reinstalls when requirements.txt changes.
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)
# One optimised build serves tests, examples and benchmarks (libtorch's C++ wrapper alone takes
# minutes to compile, so a second profile would double that).
CARGO_FLAGS := --release

.PHONY: all venv build demo test bench lint fmt clean

all: build

# libtorch is the PyPI torch wheel (CUDA 13 build, runs on CPU too); the rest of
# requirements.txt serves the tests. `.venv/torch` is the stable path .cargo/config.toml uses.
venv: $(STAMP)
$(STAMP): requirements.txt
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --no-cache-dir --upgrade pip
	$(VENV)/bin/pip install --quiet --no-cache-dir -r requirements.txt
	ln -sfn "$$($(VENV)/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')" $(VENV)/torch
	rm -f $(VENV)/.installed-*
	touch $@

build: venv
	cargo build $(CARGO_FLAGS) --all-targets

# The whole story on a bundled real sample (data/cxr-pneumonia-demo: 420 radiographs, Kermany et
# al., CC BY 4.0): MoCo v2 pretraining of ResNet-18 at 128 px on the 300 training images, then
# normal-vs-pneumonia classification from scratch and from that encoder, judged on the 120 test
# images and compared (scripts/demo.sh). About 5 minutes on 2 CPU cores.
demo: venv
	cargo build $(CARGO_FLAGS) --example pretrain --example classify
	scripts/demo.sh

# The tool tests run the example binaries, which `cargo test` alone does not leave in
# target/*/examples. --no-fail-fast: every test binary runs and reports, not only those
# before the first failure.
test: venv
	cargo build $(CARGO_FLAGS) --examples
	cargo test $(CARGO_FLAGS) --all-targets --no-fail-fast -- --nocapture --test-threads 2

# Side-by-side timings against the PyTorch originals; results in target/bench/results.json.
bench: venv
	cargo build $(CARGO_FLAGS) --example pretrain --example classify
	cargo bench

lint: venv
	cargo fmt --check
	cargo clippy $(CARGO_FLAGS) --all-targets -- -D warnings
	# The decoders alone, without libtorch (what the image fuzz target builds).
	cargo check $(CARGO_FLAGS) --no-default-features --lib
	# The API docs: no broken or ambiguous links.
	RUSTDOCFLAGS="-D warnings" cargo doc $(CARGO_FLAGS) --no-deps --lib

fmt:
	cargo fmt

clean:
	cargo clean
