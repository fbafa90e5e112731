// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * drsnoop: each reclaim stall a task suffered, direct (the page allocator's
 * slow path) and memory cgroup (a cgroup charging past its limit), from the
 * vmscan begin/end BTF tracepoints; no kprobe needed. The begin half keeps
 * the time by thread, the end half sends one event.
 */
#include "common.bpf.h"
#include "drsnoop.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct drsnoop_start {
	__u64 time_ns;
	__s32 order;
	__u32 gfp_flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32); /* tid */
	__type(value, struct drsnoop_start);
} starts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1024 * 1024);
} events SEC(".maps");

/* Puts struct drsnoop_event into the skeleton's generated types. */
struct drsnoop_event drsnoop_event_layout = {};

static __always_inline int reclaim_begin(int order, gfp_t gfp_flags)
{
	struct drsnoop_start start = { .order = order, .gfp_flags = gfp_flags };
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	if (!memtrace_wanted())
		return 0;
	start.time_ns = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&starts, &tid, &start, BPF_ANY))
		memtrace_count_drop(MEMTRACE_DROP_PENDING);
	return 0;
}

static __always_inline int reclaim_end(unsigned long nr_reclaimed, enum drsnoop_kind kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct drsnoop_start *start = bpf_map_lookup_elem(&starts, &tid);
	struct drsnoop_event *e;

	if (!start)
		return 0; /* began before the trace, or not a task we follow */
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		memtrace_count_drop(MEMTRACE_DROP_RINGBUF);
		bpf_map_delete_elem(&starts, &tid);
		return 0;
	}
	e->time_ns = bpf_ktime_get_ns();
	e->latency_ns = e->time_ns - start->time_ns;
	e->pages = nr_reclaimed;
	e->pid = id >> 32;
	e->tid = tid;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->kind = kind;
	e->order = start->order;
	e->gfp_flags = start->gfp_flags;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->cgroup = memtrace_cgroup_label();
	bpf_ringbuf_submit(e, 0);
	bpf_map_delete_elem(&starts, &tid);
	return 0;
}

SEC("tp_btf/mm_vmscan_direct_reclaim_begin")
int BPF_PROG(drsnoop_direct_begin, int order, gfp_t gfp_flags)
{
	return reclaim_begin(order, gfp_flags);
}

SEC("tp_btf/mm_vmscan_direct_reclaim_end")
int BPF_PROG(drsnoop_direct_end, unsigned long nr_reclaimed)
{
	return reclaim_end(nr_reclaimed, DRSNOOP_DIRECT);
}

SEC("tp_btf/mm_vmscan_memcg_reclaim_begin")
int BPF_PROG(drsnoop_memcg_begin, int order, gfp_t gfp_flags)
{
	return reclaim_begin(order, gfp_flags);
}

SEC("tp_btf/mm_vmscan_memcg_reclaim_end")
int BPF_PROG(drsnoop_memcg_end, unsigned long nr_reclaimed)
{
	return reclaim_end(nr_reclaimed, DRSNOOP_MEMCG);
}
