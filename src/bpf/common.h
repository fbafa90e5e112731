/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Types shared by every tool's BPF side and the Rust side. */
#ifndef MEMTRACE_COMMON_H
#define MEMTRACE_COMMON_H

#define MEMTRACE_COMM_LEN 16
#define MEMTRACE_NAME_MAX_LEN 256 /* NAME_MAX + NUL */

/*
 * --cgroup: where the fields common.bpf.h's memtrace_in_cgroup reads are,
 * in bytes, as the running kernel's BTF says (engine/cgroup.rs).
 */
struct memtrace_cgroup_offsets {
	__u32 task_cgroups;      /* task_struct.cgroups */
	__u32 cset_dfl_cgrp;     /* css_set.dfl_cgrp */
	__u32 cset_subsys;       /* css_set.subsys */
	__u32 css_cgroup;        /* cgroup_subsys_state.cgroup */
	__u32 cgroup_parent_css; /* cgroup.self.parent */
	__u32 cgroup_kn;         /* cgroup.kn */
	__u32 kernfs_node_id;    /* kernfs_node.id */
};

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
	__u32 nr;
	__u32 flags; /* enum memtrace_stack_flag */
	__u64 ips[MEMTRACE_STACK_DEPTH];
};

/* The top of a user stack copied for unwinding in user space (unwind.bpf.h's
 * deferred stacks): 16 chunks of 512 bytes. */
#define MEMTRACE_COPY_CHUNK 512
#define MEMTRACE_COPY_CHUNKS 16
#define MEMTRACE_STACK_COPY_BYTES (MEMTRACE_COPY_CHUNK * MEMTRACE_COPY_CHUNKS)

enum memtrace_stack_flag {
	/* the unwinder stopped before the outermost frame (unwind.bpf.h) */
	MEMTRACE_STACK_TRUNCATED = 0x1,
	/* sent to user space to unwind, which replaces this entry (unwind.h) */
	MEMTRACE_STACK_PENDING = 0x2,
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
