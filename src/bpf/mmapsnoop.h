/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef MMAPSNOOP_H
#define MMAPSNOOP_H

#include "common.h"

enum mmapsnoop_call {
	MMAPSNOOP_MMAP = 0,
	MMAPSNOOP_MUNMAP = 1,
	MMAPSNOOP_MREMAP = 2,
};

/* serve: what an mmap() maps, as its counts are kept. */
enum mmapsnoop_kind {
	MMAPSNOOP_ANON = 0,    /* private anonymous */
	MMAPSNOOP_SHMEM = 1,   /* shared anonymous */
	MMAPSNOOP_FILE = 2,
	MMAPSNOOP_HUGETLB = 3, /* MAP_HUGETLB */
};

/* serve: the key of the mmap() counts (call_counts), kept in the kernel. */
struct mmapsnoop_count_key {
	__u64 cgroup; /* memtrace_cgroup_label */
	enum mmapsnoop_kind kind;
	__u32 pad;
	char comm[MEMTRACE_COMM_LEN];
};

/*
 * One completed call. Sent with only the used part of path[], so an
 * anonymous mapping costs the ring buffer about 100 bytes, not 4 KiB.
 */
struct mmapsnoop_event {
	__u64 time_ns;  /* bpf_ktime_get_ns() at return */
	__u64 addr;     /* mmap: hint; munmap: address; mremap: old address */
	__u64 len;      /* mmap, munmap: length; mremap: old length */
	__u64 new_len;  /* mremap only */
	__u64 new_addr; /* mremap only: the MREMAP_FIXED target */
	__u64 offset;   /* mmap only: file offset */
	__u64 cgroup;   /* --show-cgroup: the task's (memtrace_cgroup_label) */
	__s64 ret;      /* new address, 0 (munmap), or -errno */
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__u32 prot;
	__u32 flags;    /* MAP_* for mmap, MREMAP_* for mremap */
	__s32 fd;
	enum mmapsnoop_call call;
	struct memtrace_path path_info; /* depth 0: no file */
	char comm[MEMTRACE_COMM_LEN];
	char path[MEMTRACE_PATH_BUF];
};

#endif
