/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef OOMKILL_H
#define OOMKILL_H

#include "common.h"

#define OOMKILL_CGROUP_DEPTH 16
#define OOMKILL_CGROUP_BUF 1024

/* One OOM kill, at oom:mark_victim. */
struct oomkill_event {
	__u64 time_ns;
	__u64 total_vm;      /* pages */
	__u64 anon_rss;      /* pages */
	__u64 file_rss;      /* pages */
	__u64 shmem_rss;     /* pages */
	__u64 pgtables_bytes;
	__s64 stack;         /* the killer's kernel stack (stacks.bpf.h key): memcg or global OOM */
	__u32 trigger_pid;
	__u32 victim_pid;
	__u32 uid;
	__s32 oom_score_adj;
	__u32 cgroup_len;    /* bytes of cgroup[] used */
	__u32 cgroup_depth;  /* components, innermost first, each NUL-terminated */
	char trigger_comm[MEMTRACE_COMM_LEN];
	char victim_comm[MEMTRACE_COMM_LEN];
	char cgroup[OOMKILL_CGROUP_BUF];
};

#endif
