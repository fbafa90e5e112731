# memtrace: `make run` builds (installing what is missing) and runs mmapsnoop;
# `make test` runs every test, the root integration tests included.

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
CARGO ?= cargo
ARCH := $(shell uname -m)
BIN := target/release/memtrace

.PHONY: all deps build run test test-kernel test-kernels lint install uninstall deb vmlinux bench clean

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

# deb first: tests/package.rs installs the package it makes.
test: build lint deb
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

# Where man and the shells look for pages and completions.
MANDIR ?= $(PREFIX)/share/man/man1
BASHDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHDIR ?= $(PREFIX)/share/zsh/site-functions
FISHDIR ?= $(PREFIX)/share/fish/vendor_completions.d
UNITDIR ?= $(PREFIX)/lib/systemd/system

# One binary and a link per tool, named after it: mmapsnoop -> memtrace; a
# man page and completions for memtrace and for each link, made by the
# binary from its own options (memtrace manpage, memtrace completions); the
# page of memtrace serve, and its systemd unit (not enabled).
install: build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR) $(DESTDIR)$(BASHDIR) \
		$(DESTDIR)$(ZSHDIR) $(DESTDIR)$(FISHDIR) $(DESTDIR)$(UNITDIR)
	install -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/memtrace
	$(BIN) manpage serve > $(DESTDIR)$(MANDIR)/memtrace-serve.1
	sed 's|@BINDIR@|$(BINDIR)|' packaging/memtrace.service > $(DESTDIR)$(UNITDIR)/memtrace.service
	for name in memtrace $$($(BIN) --list | awk 'NR > 1 { print $$1 }'); do \
		case " $(NO_LINK) " in *" $$name "*) continue ;; esac; \
		tool=$$name; [ $$name = memtrace ] && tool=; \
		[ -n "$$tool" ] && ln -sf memtrace $(DESTDIR)$(BINDIR)/$$name; \
		$(BIN) manpage $$tool > $(DESTDIR)$(MANDIR)/$$name.1 && \
		$(BIN) completions bash $$tool > $(DESTDIR)$(BASHDIR)/$$name && \
		$(BIN) completions zsh $$tool > $(DESTDIR)$(ZSHDIR)/_$$name && \
		$(BIN) completions fish $$tool > $(DESTDIR)$(FISHDIR)/$$name.fish || exit 1; \
	done

uninstall:
	for name in $$($(DESTDIR)$(BINDIR)/memtrace --list | awk 'NR > 1 { print $$1 }') memtrace; do \
		case " $(NO_LINK) " in *" $$name "*) continue ;; esac; \
		if [ $$name != memtrace ] && [ -L $(DESTDIR)$(BINDIR)/$$name ]; then \
			rm -f $(DESTDIR)$(BINDIR)/$$name; fi; \
		rm -f $(DESTDIR)$(MANDIR)/$$name.1 $(DESTDIR)$(BASHDIR)/$$name \
			$(DESTDIR)$(ZSHDIR)/_$$name $(DESTDIR)$(FISHDIR)/$$name.fish; \
	done
	rm -f $(DESTDIR)$(BINDIR)/memtrace $(DESTDIR)$(MANDIR)/memtrace-serve.1 \
		$(DESTDIR)$(UNITDIR)/memtrace.service

# A Debian package (target/debian/memtrace_VERSION-1_ARCH.deb) of what
# install puts in place, with Debian's paths, made by cargo-deb (installed
# when missing, at the version this was written for).
DEB_ROOT := target/deb-root
CARGO_DEB_VERSION := 3.8.0
deb: build
	rm -rf $(DEB_ROOT)
	$(MAKE) install DESTDIR=$(CURDIR)/$(DEB_ROOT) PREFIX=/usr \
		ZSHDIR=/usr/share/zsh/vendor-completions
	command -v cargo-deb >/dev/null 2>&1 || \
		$(CARGO) install --locked cargo-deb@$(CARGO_DEB_VERSION)
	$(CARGO) deb --no-build --locked

# vmlinux.h is checked in; regenerate it from the running kernel's BTF.
vmlinux: deps
	mkdir -p vmlinux/$(ARCH)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > vmlinux/$(ARCH)/vmlinux.h.tmp
	mv vmlinux/$(ARCH)/vmlinux.h.tmp vmlinux/$(ARCH)/vmlinux.h

bench: build
	bench/run-all

clean:
	$(CARGO) clean
