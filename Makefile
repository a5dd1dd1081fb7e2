# The two commands of the README: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all deps build test lint demo bench bench-e2e fuzz clean install

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

# Installs what `cargo build --release --locked` built (it does not build: run `make build`
# or cargo first, as yourself). DESTDIR stages a package root; PREFIX moves the binary and the
# README (the unit's ExecStart= and Documentation= then follow PREFIX). The unit and
# /etc/weft stay under /etc: systemd reads units there. Never overwrites /etc/weft/weft.env.
PREFIX ?= /usr/local
DESTDIR ?=
BIN ?= $(or $(CARGO_TARGET_DIR),target)/release/weft
install:
	@[ -x $(BIN) ] || { echo "make install: build first (cargo build --release --locked)" >&2; exit 1; }
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/weft
	install -d -m 0755 $(DESTDIR)/etc/systemd/system
	sed -e 's|/usr/local/bin/weft|$(PREFIX)/bin/weft|' \
	    -e 's|/usr/local/share/doc/weft/|$(PREFIX)/share/doc/weft/|' \
	    systemd/weft.service > $(DESTDIR)/etc/systemd/system/weft.service
	chmod 0644 $(DESTDIR)/etc/systemd/system/weft.service
	install -D -m 0644 systemd/weft.env.example $(DESTDIR)/etc/weft/weft.env.example
	install -d -m 0700 $(DESTDIR)/etc/weft/tls
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/weft/README.md
	install -d -m 0755 $(DESTDIR)$(PREFIX)/share/doc/weft/docs
	install -m 0644 docs/*.md $(DESTDIR)$(PREFIX)/share/doc/weft/docs/

demo: build
	@scripts/demo.sh

bench: deps
	$(CARGO) bench --locked

fuzz: deps
	fuzz/run.sh $${FUZZ_SECONDS:-600}

clean:
	$(CARGO) clean
