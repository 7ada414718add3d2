# taskd build, run and test entry points. See README.md.
SHELL := /bin/bash
GO ?= go
BIN := bin
DATA ?= ./data
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: all build run test test-deps proto bench bench-copy bench-vip chaos chaos-long fuzz vet clean install

all: build

# taskd-copy (a local volume copy without the daemon, docs/volume-copy.md)
# is built without cgo: a static binary starts without the dynamic linker
# and libc, several milliseconds of a small copy (docs/volume-copy.md).
build:
	$(GO) build -o $(BIN)/taskd ./cmd/taskd
	$(GO) build -o $(BIN)/taskctl ./cmd/taskctl
	CGO_ENABLED=0 $(GO) build -o $(BIN)/taskd-copy ./cmd/taskd-copy

# Single node on the embedded coordinator; `bin/taskctl --data-dir data
# service list` in another shell shows it as leader.
run: build
	$(BIN)/taskd --data-dir $(DATA)

# Installs what the tests need (Debian packages) when missing, then runs the
# whole suite with the race detector.
test: test-deps
	$(GO) vet ./...
	$(GO) vet -tags testaids ./...
	$(GO) test -race -count=1 -timeout 20m ./...
	$(GO) test -race -count=1 -tags testaids ./internal/tasktype/

test-deps:
	@scripts/test-deps.sh

proto:
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" protoc -I proto \
	  --go_out=api --go_opt=module=github.com/taskd/taskd/api \
	  --connect-go_out=api --connect-go_opt=module=github.com/taskd/taskd/api \
	  proto/taskd/v1/*.proto

bench: build
	$(GO) run ./cmd/taskd-bench failover -n 20
	$(GO) run ./cmd/taskd-bench handover -n 20
	$(GO) run ./cmd/taskd-bench reconnect -n 20
	$(GO) run ./cmd/taskd-bench idle -duration 60s

# Fault-injection suite (root): the short campaign on ZooKeeper and on the
# embedded etcd, about 2 minutes each; exit 1 on any violation, lost task
# or unplanned exit. chaos-long: 200 faults per backend (see docs/chaos.md).
chaos:
	@scripts/test-deps.sh --chaos
	$(GO) run ./cmd/taskd-chaos -backend all

chaos-long:
	@scripts/test-deps.sh --chaos
	$(GO) run ./cmd/taskd-chaos -backend all -long

# VIP failover (20 kill -9) and drain (20 drains) in network namespaces
# (root).
bench-vip: build
	$(GO) run ./cmd/taskd-bench vip-failover -n 20
	$(GO) run ./cmd/taskd-bench vip-drain -n 20

# Volume copy against qemu-img, cp, dd, nbdcopy and rsync (4 GiB images;
# BENCH_COPY_FLAGS=-quick for 1 GiB). Needs root to drop the page cache.
bench-copy: build
	@scripts/test-deps.sh --bench
	$(GO) run ./cmd/taskd-bench copy $(BENCH_COPY_FLAGS)

# The NBD reply parser and handshake under the fuzzer, a minute each, then every store key
# builder (one target each in internal/keys, found with -list) for
# FUZZTIME each. Minimisation is capped so the time goes to new inputs.
# `go test` runs every target on its seed corpus.
FUZZTIME ?= 5s
fuzz:
	$(GO) test -run XXX -fuzz '^FuzzReplyParser$$' -fuzztime 60s -fuzzminimizetime 100x ./internal/nbd
	$(GO) test -run XXX -fuzz '^FuzzHandshake$$' -fuzztime 60s -fuzzminimizetime 100x ./internal/nbd
	@set -e; for f in $$($(GO) test -list '^Fuzz' ./internal/keys | grep '^Fuzz'); do \
	  echo "fuzz internal/keys $$f ($(FUZZTIME))"; \
	  $(GO) test -run XXX -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 100x ./internal/keys; \
	done

vet:
	$(GO) vet ./...
	$(GO) vet -tags testaids ./...

# Binaries, the systemd unit, a default config (kept if present), the
# operator docs and shell completions, under $(DESTDIR).
install: build
	install -D -m 0755 $(BIN)/taskd $(DESTDIR)$(PREFIX)/bin/taskd
	install -D -m 0755 $(BIN)/taskctl $(DESTDIR)$(PREFIX)/bin/taskctl
	install -D -m 0755 $(BIN)/taskd-copy $(DESTDIR)$(PREFIX)/bin/taskd-copy
	install -D -m 0644 deploy/taskd.service $(DESTDIR)/etc/systemd/system/taskd.service
	sed -i -e 's|/usr/local/bin/taskd|$(PREFIX)/bin/taskd|' -e 's|/usr/share/doc/taskd|$(PREFIX)/share/doc/taskd|' $(DESTDIR)/etc/systemd/system/taskd.service
	test -e $(DESTDIR)/etc/taskd/taskd.conf || install -D -m 0640 deploy/taskd.conf $(DESTDIR)/etc/taskd/taskd.conf
	install -d $(DESTDIR)$(PREFIX)/share/doc/taskd
	install -m 0644 docs/*.md $(DESTDIR)$(PREFIX)/share/doc/taskd/
	install -d $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions
	$(BIN)/taskctl completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/taskctl
	$(BIN)/taskctl completion zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_taskctl

clean:
	rm -rf $(BIN)
