// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * shmsnoop: System V shared memory calls (shmget, shmat, shmdt, shmctl) as
 * they return. The arguments are kept per thread at sys_enter until sys_exit
 * gives the result: syscall tracepoints, which need no kprobes (not every
 * kernel has them: CONFIG_KPROBES), classic and raw (syscalls.bpf.h).
 */
#include "syscalls.bpf.h"
#include "shmsnoop.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* This architecture's numbers of the four calls (syscalls.bpf.h); -1: not traced. */
const volatile long nr_shmget = -1;
const volatile long nr_shmat = -1;
const volatile long nr_shmdt = -1;
const volatile long nr_shmctl = -1;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid: one call in flight per thread */
	__type(value, struct shmsnoop_event);
} calls_in_flight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024); /* user space may resize before load */
} events SEC(".maps");

static __always_inline int remember_call(struct shmsnoop_event *args)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!memtrace_wanted()) /* with -t, the thread filter of common.bpf.h */
		return 0;
	if (bpf_map_update_elem(&calls_in_flight, &id, args, BPF_ANY))
		memtrace_count_drop(MEMTRACE_DROP_PENDING);
	return 0;
}

static __always_inline int report_call(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct shmsnoop_event *args, *e;

	args = bpf_map_lookup_elem(&calls_in_flight, &id);
	if (!args)
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		memtrace_count_drop(MEMTRACE_DROP_RINGBUF);
		goto out;
	}
	*e = *args;
	e->time_ns = bpf_ktime_get_ns();
	e->ret = ret;
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
out:
	bpf_map_delete_elem(&calls_in_flight, &id);
	return 0;
}

/* The call's arguments kept until it returns. */
static __always_inline int enter_call(const struct memtrace_syscall_args *a, enum shmsnoop_sys sys)
{
	struct shmsnoop_event args = { .sys = sys };

	switch (sys) {
	case SHMSNOOP_SHMGET:
		args.key = a->arg[0];
		args.size = a->arg[1];
		args.shmflg = a->arg[2];
		break;
	case SHMSNOOP_SHMAT:
		args.shmid = a->arg[0];
		args.shmaddr = a->arg[1];
		args.shmflg = a->arg[2];
		break;
	case SHMSNOOP_SHMDT:
		args.shmaddr = a->arg[0];
		break;
	case SHMSNOOP_SHMCTL:
		args.shmid = a->arg[0];
		args.cmd = a->arg[1];
		args.buf = a->arg[2];
		break;
	}
	return remember_call(&args);
}

SEC("tp/syscalls/sys_enter_shmget")
int shmsnoop_enter_shmget(struct trace_event_raw_sys_enter *ctx)
{
	struct memtrace_syscall_args a;

	memtrace_classic_syscall_args(ctx, &a);
	return enter_call(&a, SHMSNOOP_SHMGET);
}

SEC("tp/syscalls/sys_enter_shmat")
int shmsnoop_enter_shmat(struct trace_event_raw_sys_enter *ctx)
{
	struct memtrace_syscall_args a;

	memtrace_classic_syscall_args(ctx, &a);
	return enter_call(&a, SHMSNOOP_SHMAT);
}

SEC("tp/syscalls/sys_enter_shmdt")
int shmsnoop_enter_shmdt(struct trace_event_raw_sys_enter *ctx)
{
	struct memtrace_syscall_args a;

	memtrace_classic_syscall_args(ctx, &a);
	return enter_call(&a, SHMSNOOP_SHMDT);
}

SEC("tp/syscalls/sys_enter_shmctl")
int shmsnoop_enter_shmctl(struct trace_event_raw_sys_enter *ctx)
{
	struct memtrace_syscall_args a;

	memtrace_classic_syscall_args(ctx, &a);
	return enter_call(&a, SHMSNOOP_SHMCTL);
}

/* One exit program per call: a thread has one call in flight, so each finds only its own. */
SEC("tp/syscalls/sys_exit_shmget")
int shmsnoop_exit_shmget(struct trace_event_raw_sys_exit *ctx)
{
	return report_call(ctx->ret);
}

SEC("tp/syscalls/sys_exit_shmat")
int shmsnoop_exit_shmat(struct trace_event_raw_sys_exit *ctx)
{
	return report_call(ctx->ret);
}

SEC("tp/syscalls/sys_exit_shmdt")
int shmsnoop_exit_shmdt(struct trace_event_raw_sys_exit *ctx)
{
	return report_call(ctx->ret);
}

SEC("tp/syscalls/sys_exit_shmctl")
int shmsnoop_exit_shmctl(struct trace_event_raw_sys_exit *ctx)
{
	return report_call(ctx->ret);
}

/* Whether a system call's number is one of the four. */
static __always_inline bool shm_call(long nr)
{
	return memtrace_syscall_is(nr, nr_shmget) || memtrace_syscall_is(nr, nr_shmat) ||
	       memtrace_syscall_is(nr, nr_shmdt) || memtrace_syscall_is(nr, nr_shmctl);
}

/* The raw tracepoints (syscalls.bpf.h): the calls above, told apart by number. */
SEC("tp_btf/sys_enter")
int BPF_PROG(shmsnoop_sys_enter, struct pt_regs *regs, long nr)
{
	struct memtrace_syscall_args a;
	enum shmsnoop_sys sys;

	if (!shm_call(nr) || !memtrace_native_syscall())
		return 0;
	if (nr == nr_shmget)
		sys = SHMSNOOP_SHMGET;
	else if (nr == nr_shmat)
		sys = SHMSNOOP_SHMAT;
	else if (nr == nr_shmdt)
		sys = SHMSNOOP_SHMDT;
	else
		sys = SHMSNOOP_SHMCTL;
	memtrace_syscall_args(regs, &a);
	return enter_call(&a, sys);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(shmsnoop_sys_exit, struct pt_regs *regs, long ret)
{
	if (!shm_call(memtrace_exit_syscall_nr(regs)) || !memtrace_native_syscall())
		return 0;
	return report_call(ret);
}
