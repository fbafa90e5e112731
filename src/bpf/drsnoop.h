/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef DRSNOOP_H
#define DRSNOOP_H

#include "common.h"

/* Which reclaim a task waited in. */
enum drsnoop_kind {
	DRSNOOP_DIRECT = 0, /* the page allocator's direct reclaim: the machine is short */
	DRSNOOP_MEMCG = 1,  /* a memory cgroup at its limit reclaims from itself */
};

/* One reclaim stall, sent when it ends. */
struct drsnoop_event {
	__u64 time_ns;  /* end, bpf_ktime_get_ns() */
	__u64 latency_ns;
	__u64 pages;    /* reclaimed */
	__u32 pid;
	__u32 tid;
	__u32 uid;
	enum drsnoop_kind kind;
	__s32 order;    /* of the allocation that needed the memory */
	__u32 gfp_flags;
	__u64 cgroup;   /* serve, --show-cgroup: the task's cgroup (memtrace_cgroup_label) */
	char comm[MEMTRACE_COMM_LEN];
};

#endif
