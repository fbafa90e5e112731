// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * brkstack: brk(2) calls with the heap growth each caused, counted by the
 * caller's user stack in the kernel. brk is called from libc's sbrk, and a
 * libc built without frame pointers (Debian's) leaves the kernel's
 * frame-pointer walk nothing past the leaf: the stack is walked with each
 * object's .eh_frame (unwind.bpf.h), as memleak's and faults' are.
 */
#include "exitmaps.bpf.h"
#include "syscalls.bpf.h"
#include "unwind.bpf.h"
#include "brkstack.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);   /* tid */
	__type(value, __u64); /* mm->brk at entry */
} old_brks SEC(".maps");

/* This architecture's number of brk (syscalls.bpf.h). */
const volatile long nr_brk = -1;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* --max-entries */
	__type(key, struct brkstack_key);
	__type(value, struct brkstack_value);
} counts SEC(".maps");

/* Calls whose count found no room: their heap growth, by CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost_growth SEC(".maps");

/* The heap's end as the call starts, kept until it returns. */
static __always_inline int enter_brk(void)
{
	struct task_struct *task = memtrace_current_task();
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 old_brk;

	if (!memtrace_wanted())
		return 0;
	old_brk = BPF_CORE_READ(task, mm, brk);
	if (bpf_map_update_elem(&old_brks, &tid, &old_brk, BPF_ANY))
		memtrace_count_drop(MEMTRACE_DROP_PENDING);
	return 0;
}

SEC("tp/syscalls/sys_enter_brk")
int brkstack_enter(void *ctx)
{
	return enter_brk();
}

static __always_inline void add_call(struct brkstack_value *value, __u64 grown, __u64 shrunk)
{
	__sync_fetch_and_add(&value->calls, 1);
	if (grown)
		__sync_fetch_and_add(&value->grown, grown);
	if (shrunk)
		__sync_fetch_and_add(&value->shrunk, shrunk);
}

/* frame_pointers: a constant in each program; the ones that pass true carry
 * no call to the .eh_frame walk (bpf_loop, bpf_find_vma: 5.17), which the
 * verifier would check even where --unwind fp leaves it unused. */
static __always_inline int exit_brk(void *ctx, long ret, bool frame_pointers)
{
	__u64 id = bpf_get_current_pid_tgid(), *old_brk, grown = 0, shrunk = 0;
	struct brkstack_key key = { .tgid = id >> 32 };
	struct brkstack_value first = { .calls = 1 }, *value;
	__u32 tid = (__u32)id, zero = 0;

	old_brk = bpf_map_lookup_elem(&old_brks, &tid);
	if (!old_brk)
		return 0;
	if ((__u64)ret > *old_brk)
		grown = ret - *old_brk;
	else
		shrunk = *old_brk - ret;
	bpf_map_delete_elem(&old_brks, &tid);
	key.user_stack = frame_pointers ? memtrace_stack(ctx, BPF_F_USER_STACK) :
					  memtrace_user_stack_of(ctx);

	value = bpf_map_lookup_elem(&counts, &key);
	if (value) { /* the hot path: a stack seen before */
		add_call(value, grown, shrunk);
		return 0;
	}
	first.grown = grown;
	first.shrunk = shrunk;
	bpf_get_current_comm(first.comm, sizeof(first.comm));
	if (bpf_map_update_elem(&counts, &key, &first, BPF_NOEXIST)) {
		value = bpf_map_lookup_elem(&counts, &key);
		if (value) { /* another CPU added it first */
			add_call(value, grown, shrunk);
		} else {
			__u64 *lost = bpf_map_lookup_elem(&lost_growth, &zero);

			memtrace_count_drop(MEMTRACE_DROP_COUNTS);
			if (lost)
				*lost += grown;
		}
		return 0;
	}
	/* a new stack: its process's mappings are wanted when it exits */
	exitmaps_note_owner(key.tgid);
	return 0;
}

SEC("tp/syscalls/sys_exit_brk")
int brkstack_exit(struct trace_event_raw_sys_exit *ctx)
{
	return exit_brk(ctx, ctx->ret, false);
}

SEC("tp/syscalls/sys_exit_brk")
int brkstack_exit_fp(struct trace_event_raw_sys_exit *ctx)
{
	return exit_brk(ctx, ctx->ret, true);
}

/* The raw tracepoints (syscalls.bpf.h), for brk alone. */
SEC("tp_btf/sys_enter")
int BPF_PROG(brkstack_sys_enter, struct pt_regs *regs, long nr)
{
	if (!memtrace_syscall_is(nr, nr_brk) || !memtrace_native_syscall())
		return 0;
	return enter_brk();
}

SEC("tp_btf/sys_exit")
int BPF_PROG(brkstack_sys_exit, struct pt_regs *regs, long ret)
{
	if (!memtrace_syscall_is(memtrace_exit_syscall_nr(regs), nr_brk) ||
	    !memtrace_native_syscall())
		return 0;
	return exit_brk(ctx, ret, false);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(brkstack_sys_exit_fp, struct pt_regs *regs, long ret)
{
	if (!memtrace_syscall_is(memtrace_exit_syscall_nr(regs), nr_brk) ||
	    !memtrace_native_syscall())
		return 0;
	return exit_brk(ctx, ret, true);
}
