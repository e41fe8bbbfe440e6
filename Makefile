# Flywheel: two commands do everything.
#   make run    installs what is missing, builds, starts Flywheel (SQLite, local sandboxes, example workflow)
#   make test   runs every test
# Also: make build, make lint, make bench, make deps, make clean.

CARGO ?= cargo
LISTEN ?= 127.0.0.1:8080
DATA_DIR ?= ./data
# Debian packages Flywheel needs at run time and for its tests.
APT_PACKAGES := bubblewrap wrk
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run build test lint bench deps clean

deps:
	@command -v $(CARGO) >/dev/null || { echo "Rust is missing: install it with rustup (https://rustup.rs), then run make again." >&2; exit 1; }
	@missing=""; \
	command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	if [ -n "$$missing" ]; then \
	  echo "Installing:$$missing"; \
	  $(SUDO) apt-get install -y -q $$missing >/dev/null 2>&1 || { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q $$missing; }; \
	fi

build: deps
	$(CARGO) build --release --locked

run: build
	./target/release/flywheel serve --listen $(LISTEN) --data-dir $(DATA_DIR) --load-examples --show-key

test: deps
	$(CARGO) test --workspace --locked

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

bench: build
	$(CARGO) run --release --locked -p flywheel-bench -- --binary target/release/flywheel

clean:
	$(CARGO) clean
