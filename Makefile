# The two commands of the README: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all deps build test lint demo bench bench-e2e fuzz clean

all: build

deps:
	@scripts/deps.sh

build: deps
	$(CARGO) build --release --locked

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# The whole suite: formatting, lints, unit, property, golden and integration tests (real etcd,
# real network namespaces; needs root). nextest when present, cargo test otherwise; doc tests
# first so that the runner's closing summary is the last thing printed.
test: lint
	@if [ "$$(id -u)" != 0 ]; then echo "make test: needs root (network namespaces, TUN)" >&2; exit 1; fi
	$(CARGO) test --locked --doc --quiet
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked --no-fail-fast --profile ci; \
	else \
		$(CARGO) test --locked --no-fail-fast; \
	fi

demo: build
	@scripts/demo.sh

bench: deps
	$(CARGO) bench --locked

fuzz: deps
	fuzz/run.sh $${FUZZ_SECONDS:-600}

clean:
	$(CARGO) clean
