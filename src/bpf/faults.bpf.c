// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * faults: page faults counted by user stack (and kernel stack with -K),
 * process and kind, on the software perf events page-faults-min/-maj, as the
 * book's faults.bt. exitmaps.bpf.h keeps exited processes symbolizable.
 */
#include "exitmaps.bpf.h"
#include "unwind.bpf.h"
#include "faults.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile bool kernel_stacks = false;

/* Puts enum faults_stack_key into the skeleton's generated types. */
enum faults_stack_key faults_stack_key_layout;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct faults_key);
	__type(value, struct faults_value);
} counts SEC(".maps");

/* frame_pointers: a constant in each program; the ones that pass true carry
 * no call to the .eh_frame walk (bpf_loop, bpf_find_vma: 5.17). */
static __always_inline int count_fault(struct bpf_perf_event_data *ctx, __u32 kind,
				       bool frame_pointers)
{
	struct faults_key key = { .kind = kind, .kernel_stack = FAULTS_NO_STACK };
	struct faults_value first = { .count = 1 }, *value;

	if (!memtrace_wanted())
		return 0;
	key.tgid = bpf_get_current_pid_tgid() >> 32;
	key.user_stack = frame_pointers ? memtrace_stack(ctx, BPF_F_USER_STACK) :
					  memtrace_user_stack_of(ctx);
	if (kernel_stacks)
		key.kernel_stack = memtrace_stack(ctx, 0);

	value = bpf_map_lookup_elem(&counts, &key);
	if (value) { /* the hot path: a stack seen before */
		__sync_fetch_and_add(&value->count, 1);
		return 0;
	}
	bpf_get_current_comm(first.comm, sizeof(first.comm));
	if (bpf_map_update_elem(&counts, &key, &first, BPF_NOEXIST)) {
		value = bpf_map_lookup_elem(&counts, &key);
		if (value) /* another CPU added it first */
			__sync_fetch_and_add(&value->count, 1);
		else
			memtrace_count_drop(MEMTRACE_DROP_COUNTS);
		return 0;
	}
	/* a new stack: its process's mappings will be wanted when it exits */
	exitmaps_note_owner(key.tgid);
	return 0;
}

/* On page-faults-min and -maj alike: the event's kind is its attach cookie. */
SEC("perf_event")
int faults_fault(struct bpf_perf_event_data *ctx)
{
	return count_fault(ctx, bpf_get_attach_cookie(ctx) == MEMTRACE_FAULT_MAJOR ?
					MEMTRACE_FAULT_MAJOR : MEMTRACE_FAULT_MINOR, false);
}

/* Without BPF cookies (5.15) or bpf_loop (5.17): a program per kind, and
 * user stacks by their frame pointers. */
SEC("perf_event")
int faults_minor_fp(struct bpf_perf_event_data *ctx)
{
	return count_fault(ctx, MEMTRACE_FAULT_MINOR, true);
}

SEC("perf_event")
int faults_major_fp(struct bpf_perf_event_data *ctx)
{
	return count_fault(ctx, MEMTRACE_FAULT_MAJOR, true);
}
