// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * shmsnoop: System V shared memory calls (shmget, shmat, shmdt, shmctl) as
 * they return. The arguments are kept per thread at sys_enter until sys_exit
 * gives the result: syscall tracepoints, which need no kprobes (not every
 * kernel has them: CONFIG_KPROBES).
 */
#include "common.bpf.h"
#include "shmsnoop.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

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

SEC("tp/syscalls/sys_enter_shmget")
int shmsnoop_enter_shmget(struct trace_event_raw_sys_enter *ctx)
{
	struct shmsnoop_event args = {
		.key = ctx->args[0],
		.size = ctx->args[1],
		.shmflg = ctx->args[2],
		.sys = SHMSNOOP_SHMGET,
	};

	return remember_call(&args);
}

SEC("tp/syscalls/sys_enter_shmat")
int shmsnoop_enter_shmat(struct trace_event_raw_sys_enter *ctx)
{
	struct shmsnoop_event args = {
		.shmid = ctx->args[0],
		.shmaddr = ctx->args[1],
		.shmflg = ctx->args[2],
		.sys = SHMSNOOP_SHMAT,
	};

	return remember_call(&args);
}

SEC("tp/syscalls/sys_enter_shmdt")
int shmsnoop_enter_shmdt(struct trace_event_raw_sys_enter *ctx)
{
	struct shmsnoop_event args = {
		.shmaddr = ctx->args[0],
		.sys = SHMSNOOP_SHMDT,
	};

	return remember_call(&args);
}

SEC("tp/syscalls/sys_enter_shmctl")
int shmsnoop_enter_shmctl(struct trace_event_raw_sys_enter *ctx)
{
	struct shmsnoop_event args = {
		.shmid = ctx->args[0],
		.cmd = ctx->args[1],
		.buf = ctx->args[2],
		.sys = SHMSNOOP_SHMCTL,
	};

	return remember_call(&args);
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
