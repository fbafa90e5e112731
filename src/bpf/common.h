/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Types shared by every tool's BPF side and the Rust side. */
#ifndef MEMTRACE_COMMON_H
#define MEMTRACE_COMMON_H

#define MEMTRACE_COMM_LEN 16
#define MEMTRACE_NAME_MAX_LEN 256 /* NAME_MAX + NUL */

/* Why an event or a count was lost; indexes of the per-CPU drop_counts array. */
enum memtrace_drop_reason {
	MEMTRACE_DROP_RINGBUF = 0, /* ring buffer full */
	MEMTRACE_DROP_PENDING = 1, /* no room to remember a syscall's arguments until it returns */
	MEMTRACE_DROP_COUNTS = 2,  /* counting map full */
	MEMTRACE_DROP_STACKS = 3,  /* stack store full */
	MEMTRACE_DROP_NR = 4,
};

/* The page-fault perf events a program counts (faults, faultvma). */
enum memtrace_fault_kind {
	MEMTRACE_FAULT_MINOR = 0,
	MEMTRACE_FAULT_MAJOR = 1,
};

/* A stack as stacks.bpf.h stores it: nr frames, innermost first. */
#define MEMTRACE_STACK_DEPTH 127
struct memtrace_stack {
	__u64 nr;
	__u64 ips[MEMTRACE_STACK_DEPTH];
};

/* A file path as the BPF side found it: components leaf first, each NUL-terminated. */
#define MEMTRACE_PATH_BUF 4096
#define MEMTRACE_PATH_DEPTH 48
enum memtrace_path_flag {
	MEMTRACE_PATH_ROOTED = 0x1,    /* reached the root of the mount namespace */
	MEMTRACE_PATH_TRUNCATED = 0x2, /* deeper or longer than the buffer */
	MEMTRACE_PATH_DELETED = 0x4,   /* unlinked */
};

struct memtrace_path {
	__u16 len;   /* bytes used in the buffer */
	__u8 depth;  /* components */
	__u8 flags;  /* MEMTRACE_PATH_* */
};

#endif
