/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef MEMLEAK_H
#define MEMLEAK_H

#include "common.h"

/* The allocator functions, passed to the probes in their BPF cookies' low
 * byte (the registers their arguments are in above: memleak.bpf.c memleak_arg). */
enum memleak_func {
	MEMLEAK_MALLOC = 0,
	MEMLEAK_CALLOC = 1,
	MEMLEAK_REALLOC = 2,
	MEMLEAK_FREE = 3,
	MEMLEAK_POSIX_MEMALIGN = 4,
	MEMLEAK_MEMALIGN = 5,
	MEMLEAK_ALIGNED_ALLOC = 6,
	MEMLEAK_VALLOC = 7,
	MEMLEAK_PVALLOC = 8,
	MEMLEAK_MMAP = 9,
	MEMLEAK_MUNMAP = 10,
	MEMLEAK_MREMAP = 11,
	MEMLEAK_REALLOCARRAY = 12,
	MEMLEAK_LOADS = 13, /* the loader's _dl_debug_state: a dlopen mapped objects */
	MEMLEAK_NFUNCS = 14,
};

/* An outstanding allocation's key: its process and address. A forked child
 * has its parent's addresses, and allocates and frees at them on its own;
 * kernel mode's addresses are the kernel's, of no process (tgid 0). */
struct memleak_key {
	__u64 addr;
	__u32 tgid;
	__u32 pad;
};

/* An outstanding allocation. */
struct memleak_alloc {
	__u64 size;
	__u64 time_ns;
	__s64 stack; /* key in stack_store, or -errno: no stack */
};

/* The key of a running total: a process's stack (tgid 0 in kernel mode). */
struct memleak_stack_key {
	__s64 stack; /* key in stack_store, or -errno: no stack */
	__u32 tgid;
	__u32 pad;
};

/* -t: one allocation or free, as it happens. */
struct memleak_event {
	__u64 time_ns;
	__u64 addr;
	__u64 size;
	__u32 pid;
	__u32 tid;
	__u32 is_free;
	__u32 pad;
	__s64 stack;
	char comm[MEMTRACE_COMM_LEN];
};

/* Outstanding bytes and allocations by process and stack (--combined-only). */
struct memleak_combined {
	__u64 bytes;
	__u64 allocs;
};

/*
 * Before BPF cookies (5.15): what a classic uprobe's cookie would say, found
 * by the probe's address in the process (memleak.bpf.c probe_cookies).
 */
struct memleak_probe_key {
	__u32 tgid;
	__u32 pad;
	__u64 addr;
};

#endif
