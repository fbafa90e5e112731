// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * vmscan: the book's reclaim summary on vmscan BTF tracepoints. Times and
 * counts go into per-CPU arrays (no atomics, no events); user space sums the
 * CPUs and reports what changed each interval, and the latency histograms at
 * the end. Begin times are kept by thread: slab shrinking runs inside direct
 * and memcg reclaim, so each kind has its own slot.
 */
#include "common.bpf.h"
#include "vmscan.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct vmscan_starts {
	__u64 slab_ns;
	__u64 direct_ns;
	__u64 memcg_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32); /* tid */
	__type(value, struct vmscan_starts);
} starts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VMSCAN_TOTAL_NR);
	__type(key, __u32);
	__type(value, __u64);
} totals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VMSCAN_HIST_NR * VMSCAN_HIST_BUCKETS);
	__type(key, __u32);
	__type(value, __u64);
} histograms SEC(".maps");

/* Put the enums user space indexes the arrays with into the skeleton's generated types. */
enum vmscan_total vmscan_total_layout;
enum vmscan_histogram vmscan_histogram_layout;
enum vmscan_hist_size vmscan_hist_size_layout;

static __always_inline void add_total(__u32 slot, __u64 n)
{
	__u64 *total = bpf_map_lookup_elem(&totals, &slot);

	if (total)
		*total += n;
}

/* floor(log2(v)) for v > 0, 0 for 0 */
static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0;

	for (int shift = 32; shift > 0; shift >>= 1) {
		if (v >> shift) {
			v >>= shift;
			r += shift;
		}
	}
	return r;
}

/* Marks the start of `which` (a field of vmscan_starts) for this thread. */
static __always_inline void begin(__u32 which)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct vmscan_starts *s, fresh = {};
	__u64 now;

	if (!memtrace_wanted())
		return;
	s = bpf_map_lookup_elem(&starts, &tid);
	if (!s) {
		if (bpf_map_update_elem(&starts, &tid, &fresh, BPF_NOEXIST) &&
		    !bpf_map_lookup_elem(&starts, &tid)) {
			memtrace_count_drop(MEMTRACE_DROP_PENDING);
			return;
		}
		s = bpf_map_lookup_elem(&starts, &tid);
		if (!s)
			return;
	}
	now = bpf_ktime_get_ns();
	if (which == VMSCAN_HIST_SLAB)
		s->slab_ns = now;
	else if (which == VMSCAN_HIST_DIRECT)
		s->direct_ns = now;
	else
		s->memcg_ns = now;
}

/* Ends `which`: adds its time to the totals and its histogram. */
static __always_inline void end(__u32 which, __u32 ns_slot, __u32 pages_slot, __u64 pages)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct vmscan_starts *s = bpf_map_lookup_elem(&starts, &tid);
	__u64 *start, delta;
	__u32 bucket;

	if (!s)
		return;
	if (which == VMSCAN_HIST_SLAB)
		start = &s->slab_ns;
	else if (which == VMSCAN_HIST_DIRECT)
		start = &s->direct_ns;
	else
		start = &s->memcg_ns;
	if (!*start)
		return; /* began before the trace */
	delta = bpf_ktime_get_ns() - *start;
	*start = 0;
	add_total(ns_slot, delta);
	add_total(ns_slot + 1, 1); /* the CALLS slot follows each NS slot */
	if (pages_slot)
		add_total(pages_slot, pages);
	bucket = log2_u64(delta / 1000);
	if (bucket >= VMSCAN_HIST_BUCKETS)
		bucket = VMSCAN_HIST_BUCKETS - 1;
	bucket += which * VMSCAN_HIST_BUCKETS;
	memtrace_percpu_inc(&histograms, bucket);
	/* a thread out of every reclaim gives its slot back */
	if (!s->slab_ns && !s->direct_ns && !s->memcg_ns)
		bpf_map_delete_elem(&starts, &tid);
}

SEC("tp_btf/mm_shrink_slab_start")
int BPF_PROG(vmscan_slab_start)
{
	begin(VMSCAN_HIST_SLAB);
	return 0;
}

SEC("tp_btf/mm_shrink_slab_end")
int BPF_PROG(vmscan_slab_end)
{
	end(VMSCAN_HIST_SLAB, VMSCAN_SLAB_NS, 0, 0);
	return 0;
}

SEC("tp_btf/mm_vmscan_direct_reclaim_begin")
int BPF_PROG(vmscan_direct_begin)
{
	begin(VMSCAN_HIST_DIRECT);
	return 0;
}

SEC("tp_btf/mm_vmscan_direct_reclaim_end")
int BPF_PROG(vmscan_direct_end, unsigned long nr_reclaimed)
{
	end(VMSCAN_HIST_DIRECT, VMSCAN_DIRECT_NS, VMSCAN_DIRECT_PAGES, nr_reclaimed);
	return 0;
}

SEC("tp_btf/mm_vmscan_memcg_reclaim_begin")
int BPF_PROG(vmscan_memcg_begin)
{
	begin(VMSCAN_HIST_MEMCG);
	return 0;
}

SEC("tp_btf/mm_vmscan_memcg_reclaim_end")
int BPF_PROG(vmscan_memcg_end, unsigned long nr_reclaimed)
{
	end(VMSCAN_HIST_MEMCG, VMSCAN_MEMCG_NS, VMSCAN_MEMCG_PAGES, nr_reclaimed);
	return 0;
}

/* kswapd's and the writers' own work: counted for the whole machine */
SEC("tp_btf/mm_vmscan_kswapd_wake")
int BPF_PROG(vmscan_kswapd_wake)
{
	add_total(VMSCAN_KSWAPD_WAKES, 1);
	return 0;
}

/* mm_vmscan_writepage (below) on kernels before folios reached it */
SEC("tp_btf/mm_vmscan_write_folio")
int BPF_PROG(vmscan_write_folio)
{
	add_total(VMSCAN_WRITE_FOLIO, 1);
	return 0;
}

SEC("tp_btf/mm_vmscan_writepage")
int BPF_PROG(vmscan_writepage)
{
	add_total(VMSCAN_WRITE_FOLIO, 1);
	return 0;
}
