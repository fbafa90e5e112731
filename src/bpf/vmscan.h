/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef VMSCAN_H
#define VMSCAN_H

/* Slots of the per-CPU totals array; user space reports their deltas. */
enum vmscan_total {
	VMSCAN_SLAB_NS = 0,      /* time in shrink_slab (each shrinker call) */
	VMSCAN_SLAB_CALLS,
	VMSCAN_DIRECT_NS,        /* time tasks stalled in direct reclaim */
	VMSCAN_DIRECT_CALLS,
	VMSCAN_DIRECT_PAGES,     /* pages direct reclaim freed */
	VMSCAN_MEMCG_NS,         /* time tasks stalled in memory cgroup reclaim */
	VMSCAN_MEMCG_CALLS,
	VMSCAN_MEMCG_PAGES,
	VMSCAN_KSWAPD_WAKES,     /* kswapd woke up to reclaim */
	VMSCAN_WRITE_FOLIO,      /* dirty folios reclaim wrote out itself */
	VMSCAN_TOTAL_NR,
};

/* Latency histograms: log2 buckets of microseconds, one row per kind. */
enum vmscan_histogram {
	VMSCAN_HIST_SLAB = 0,
	VMSCAN_HIST_DIRECT,
	VMSCAN_HIST_MEMCG,
	VMSCAN_HIST_NR,
};
enum vmscan_hist_size {
	VMSCAN_HIST_BUCKETS = 32,
};

#endif
