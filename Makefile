# Flywheel: two commands do everything.
#   make run    installs what is missing, builds, starts Flywheel (SQLite, local sandboxes, example workflows)
#   make test   runs every test, then the fuzz pass of the API
# Also: make build, make lint, make fuzz, make bench, make deps, make docker-image, make clean.
# Variables: LISTEN=127.0.0.1:8080 DATA_DIR=./data

CARGO ?= cargo
LISTEN ?= 127.0.0.1:8080
DATA_DIR ?= ./data
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# command:Debian package ("dpkg:" checks the package itself), for what
# Flywheel runs (sandboxes, browser, video),
RUNTIME_DEPS := bwrap:bubblewrap chromium:chromium ffmpeg:ffmpeg dpkg:fonts-liberation
# for the tests (a real PostgreSQL server; debootstrap builds the base image
# of execution containers, since no image can be pulled; the attacks of the
# containment tests use the system's curl and python3 inside sandboxes),
TEST_DEPS := dpkg:postgresql debootstrap:debootstrap dpkg:curl dpkg:python3
# and for the benchmarks.
BENCH_DEPS := wrk:wrk
# The S3-compatible server the tests start (from crates.io, built by cargo).
S3S_FS_VERSION := 0.14.1
# The API fuzzer (from PyPI, in a venv under the build dir) and how many
# cases it makes per operation and phase.
SCHEMATHESIS_VERSION := 4.32.5
FUZZ_VENV := $(TARGET_DIR)/fuzz-venv
FUZZ_EXAMPLES ?= 100
FUZZ_BACKEND ?= sqlite

.PHONY: run build test lint fuzz bench deps test-deps fuzz-deps bench-deps docker-image clean

define install_missing
	@command -v $(CARGO) >/dev/null || { echo "Rust is missing: install it with rustup (https://rustup.rs), then run make again." >&2; exit 1; }
	@missing=""; for pair in $(1); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  if [ "$$cmd" = dpkg ]; then dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	  else command -v $$cmd >/dev/null || missing="$$missing $$pkg"; fi; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing:$$missing"; \
	  $(SUDO) apt-get install -y -q $$missing >/dev/null 2>&1 || { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q $$missing; }; \
	fi
endef

deps:
	$(call install_missing,$(RUNTIME_DEPS))

test-deps: deps
	$(call install_missing,$(TEST_DEPS))
	@command -v s3s-fs >/dev/null || [ -x "$${CARGO_HOME:-$$HOME/.cargo}/bin/s3s-fs" ] || \
	  { echo "Installing s3s-fs (the S3-compatible server of the tests)"; $(CARGO) install -q --locked s3s-fs --version $(S3S_FS_VERSION) --features binary; }
	$(SUDO) docker/build-base-image.sh flywheel-sandbox-base:bookworm

fuzz-deps:
	$(call install_missing,python3:python3)
	@[ -x $(FUZZ_VENV)/bin/python ] || python3 -m venv $(FUZZ_VENV) 2>/dev/null || \
	  { rm -rf $(FUZZ_VENV); $(SUDO) apt-get install -y -q python3-venv >/dev/null && python3 -m venv $(FUZZ_VENV); }
	@$(FUZZ_VENV)/bin/schemathesis --version 2>/dev/null | grep -qF "$(SCHEMATHESIS_VERSION)" || \
	  $(FUZZ_VENV)/bin/pip install -q --disable-pip-version-check "schemathesis==$(SCHEMATHESIS_VERSION)"

bench-deps: deps
	$(call install_missing,$(BENCH_DEPS))
	@[ -x bench/.venv/bin/python ] || python3 -m venv bench/.venv
	@bench/.venv/bin/python -c "import playwright" 2>/dev/null || bench/.venv/bin/pip install -q "playwright==1.65.2"

build: deps
	$(CARGO) build --release --locked

run: build
	$(TARGET_DIR)/release/flywheel serve --listen $(LISTEN) --data-dir $(DATA_DIR) --load-examples --show-key

# Every test, then the end-to-end suite again on PostgreSQL (a throwaway
# server), then the fuzz pass on each. The multi-node cluster_ tests use
# PostgreSQL either way, so they run in the first pass only.
test: test-deps
	$(CARGO) test --workspace --locked
	FLYWHEEL_TEST_BACKEND=postgres $(CARGO) test --locked -p flywheel --tests -- --skip cluster_
	$(MAKE) --no-print-directory fuzz FUZZ_BACKEND=sqlite
	$(MAKE) --no-print-directory fuzz FUZZ_BACKEND=postgres

# schemathesis against a throwaway server's own OpenAPI document, every
# check: no 5xx, and the server keeps the contract the document states
# (scripts/fuzz.py says how). The debug build is the one the tests built.
# FUZZ_BACKEND=postgres runs it on a throwaway PostgreSQL server (needs the
# postgresql package, as make test-deps installs).
fuzz: fuzz-deps
	$(CARGO) build --locked -p flywheel
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_BACKEND=$(FUZZ_BACKEND) \
	  $(FUZZ_VENV)/bin/python scripts/fuzz.py $(TARGET_DIR)/debug/flywheel

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

bench: bench-deps build
	$(CARGO) run --release --locked -p flywheel-bench -- --binary $(TARGET_DIR)/release/flywheel

# The image of `--runtime docker` execution containers (and of Flywheel itself):
# Debian with Chromium and ffmpeg, built from Debian packages, plus the binary.
docker-image: build test-deps
	docker/build-image.sh flywheel-sandbox:latest $(TARGET_DIR)/release/flywheel flywheel-sandbox-base:bookworm

clean:
	$(CARGO) clean
