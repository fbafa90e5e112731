// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * brkstack: brk(2) calls with the heap growth each caused and the caller's
 * stack. The kernel's frame-pointer walk loses the frames that matter here:
 * brk is called from libc's sbrk, and a libc built without frame pointers
 * (Debian's) leaves the walk nothing past the leaf. So each call sends its
 * user registers and the top 8 KiB of its stack, as `perf record
 * --call-graph dwarf` does, and user space unwinds them with .eh_frame.
 * brk is called rarely (glibc grows the heap 128 KiB at a time), so an event
 * per call is affordable.
 */
#include "exitmaps.bpf.h"
#include "syscalls.bpf.h"
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

/* set by user space to the ring buffer's size (--buffer-size) */
const volatile __u64 ring_bytes = 8 * 1024 * 1024;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024); /* ~1000 calls; user space may resize before load */
} events SEC(".maps");

/* Calls sent to no one (the ring buffer was full): their heap growth, by CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost_growth SEC(".maps");

/* Puts struct brkstack_event into the skeleton's generated types. */
struct brkstack_event brkstack_event_layout = {};

/* The heap's end as the call starts, kept until it returns. */
static __always_inline int enter_brk(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
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

static __always_inline int exit_brk(long ret)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct brkstack_event *e;
	__u64 *old_brk, sp, avail;
	bool wake;

	old_brk = bpf_map_lookup_elem(&old_brks, &tid);
	if (!old_brk)
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&lost_growth, &zero);

		memtrace_count_drop(MEMTRACE_DROP_RINGBUF);
		if (lost && (__u64)ret > *old_brk)
			*lost += ret - *old_brk;
		bpf_map_delete_elem(&old_brks, &tid);
		return 0;
	}
	e->time_ns = bpf_ktime_get_ns();
	e->old_brk = *old_brk;
	e->new_brk = ret;
	e->pid = id >> 32;
	e->tid = tid;
	e->pad = 0;
	e->stack_len = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	/* bpf_tracing.h's names for this architecture's pt_regs fields */
	e->ip = PT_REGS_IP_CORE(regs);
	e->sp = sp = PT_REGS_SP_CORE(regs);
	e->bp = PT_REGS_FP_CORE(regs);
	e->stack_len = memtrace_copy_user_stack(task, sp, e->stack);
	/*
	 * User space reads at its reports, not per call: wake it only as the
	 * buffer crosses a quarter full. A wake-up is an IPI (a VM exit under
	 * virtualization) paid by the traced task; one per crossing, not one per call past it.
	 */
	avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	wake = avail >= ring_bytes / 4 && avail < ring_bytes / 4 + sizeof(*e) + 8;
	bpf_ringbuf_submit(e, wake ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	bpf_map_delete_elem(&old_brks, &tid);
	/* its mappings are wanted when it exits, to unwind and symbolize after */
	exitmaps_note_owner(id >> 32);
	return 0;
}

SEC("tp/syscalls/sys_exit_brk")
int brkstack_exit(struct trace_event_raw_sys_exit *ctx)
{
	return exit_brk(ctx->ret);
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
	return exit_brk(ret);
}
