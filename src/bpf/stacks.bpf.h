/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Stacks kept by their content. A BPF_MAP_TYPE_STACK_TRACE map drops a stack
 * whose hash bucket another stack holds (-EEXIST): with a few dozen stacks in
 * 16384 buckets that happens in a few runs out of a hundred, and the
 * allocation loses its attribution. Here a stack's key is a 63-bit hash of its
 * frames, so two stacks collide with odds of about n^2 / 2^64.
 */
#ifndef MEMTRACE_STACKS_BPF_H
#define MEMTRACE_STACKS_BPF_H

#include "common.bpf.h"

/*
 * Not preallocated: 16384 stacks of 1 KiB made up front took the kernel
 * ~3 ms of each start; a stack's entry is allocated when it is first seen.
 * memleak's kernel mode preallocates it (see its allocs map), and so does
 * faults before 6.1, where perf_event programs need preallocated hash maps.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384); /* user space may resize before load */
	__type(key, __s64);
	__type(value, struct memtrace_stack);
} stack_store SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct memtrace_stack);
} stack_scratch SEC(".maps");

/*
 * Keeps a stack found in `s` in stack_store; its key, or -ENOSPC if there is
 * no room to keep it.
 */
static __always_inline __s64 memtrace_keep_stack(struct memtrace_stack *s)
{
	__u64 hash = 14695981039346656037ULL; /* FNV-1a */
	__u32 n = s->nr;

	for (int i = 0; i < MEMTRACE_STACK_DEPTH; i++) {
		if (i >= n)
			break;
		hash ^= s->ips[i];
		hash *= 1099511628211ULL;
	}
	hash ^= s->flags;
	hash *= 1099511628211ULL;
	hash &= 0x7fffffffffffffffULL; /* keys are positive; errors negative */
	if (!hash)
		hash = 1;
	if (!bpf_map_lookup_elem(&stack_store, &hash) &&
	    bpf_map_update_elem(&stack_store, &hash, s, BPF_NOEXIST) &&
	    !bpf_map_lookup_elem(&stack_store, &hash)) {
		memtrace_count_drop(MEMTRACE_DROP_STACKS);
		return -28; /* ENOSPC */
	}
	return hash;
}

/* This CPU's stack under construction. */
static __always_inline struct memtrace_stack *memtrace_stack_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&stack_scratch, &zero);
}

/*
 * The key of the current stack as the kernel walks it (bpf_get_stack() flags:
 * BPF_F_USER_STACK, frame pointers, or 0 for the kernel's), stored in
 * stack_store; a negative errno if there is no stack (-EFAULT) or no room to
 * keep it (-ENOSPC). User stacks through code built without frame pointers
 * want unwind.bpf.h instead.
 */
static __always_inline __s64 memtrace_stack(void *ctx, __u64 flags)
{
	struct memtrace_stack *s = memtrace_stack_scratch();
	long len;

	if (!s)
		return -12; /* ENOMEM */
	len = bpf_get_stack(ctx, s->ips, sizeof(s->ips), flags);
	if (len <= 0)
		return len < 0 ? len : -14; /* EFAULT: no frames */
	s->nr = len / sizeof(__u64);
	s->flags = 0;
	return memtrace_keep_stack(s);
}

#endif
