# memtrace: `make run` builds (installing what is missing) and runs mmapsnoop;
# `make test` runs every test, the root integration tests included.

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
CARGO ?= cargo
ARCH := $(shell uname -m)
BIN := target/release/memtrace

.PHONY: all deps build run test test-kernel test-kernels lint install uninstall vmlinux bench clean

all: build

deps:
	@scripts/install-deps

build: deps
	$(CARGO) build --release --locked

# Extra arguments for the tool: make run ARGS="-p 1234"
run: build
	$(BIN) mmapsnoop $(ARGS)

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --locked --all-targets -- -D warnings

test: build lint
	$(CARGO) test --release --locked

# The integration tests on Debian's kernels, each booted in a VM (root; see
# scripts/test-kernel): make test-kernel KERNEL=6.1, or all of KERNELS.
KERNELS ?= 5.10 6.1 6.12

test-kernel: deps
	@test -n "$(KERNEL)" || { echo "make test-kernel: name the kernel, e.g. make test-kernel KERNEL=6.1 (the matrix: $(KERNELS))" >&2; exit 2; }
	CARGO=$(CARGO) scripts/test-kernel $(KERNEL)

test-kernels: deps
	CARGO=$(CARGO) scripts/test-kernel $(KERNELS)

# Tools that get no link: it would shadow a standard command (procps's pmap).
NO_LINK := pmap

# One binary and a link per tool, named after it: mmapsnoop -> memtrace.
install: build
	install -d $(DESTDIR)$(BINDIR)
	install -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/memtrace
	for tool in $$($(BIN) --list | awk 'NR > 1 { print $$1 }'); do \
		case " $(NO_LINK) " in *" $$tool "*) continue ;; esac; \
		ln -sf memtrace $(DESTDIR)$(BINDIR)/$$tool; \
	done

uninstall:
	for tool in $$($(DESTDIR)$(BINDIR)/memtrace --list | awk 'NR > 1 { print $$1 }'); do \
		case " $(NO_LINK) " in *" $$tool "*) continue ;; esac; \
		if [ -L $(DESTDIR)$(BINDIR)/$$tool ]; then rm -f $(DESTDIR)$(BINDIR)/$$tool; fi; \
	done
	rm -f $(DESTDIR)$(BINDIR)/memtrace

# vmlinux.h is checked in; regenerate it from the running kernel's BTF.
vmlinux: deps
	mkdir -p vmlinux/$(ARCH)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > vmlinux/$(ARCH)/vmlinux.h.tmp
	mv vmlinux/$(ARCH)/vmlinux.h.tmp vmlinux/$(ARCH)/vmlinux.h

bench: build
	bench/run-all

clean:
	$(CARGO) clean
