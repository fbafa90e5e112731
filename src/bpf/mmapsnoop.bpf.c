// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * mmapsnoop: every mmap (and with --munmap, munmap and mremap) as it returns.
 * The arguments are kept at sys_enter until sys_exit gives the result; the
 * file comes from the caller's fd table: syscall tracepoints need no kprobes,
 * which not every kernel has (CONFIG_KPROBES). Both kinds of syscall
 * tracepoint, classic and raw, have programs here (syscalls.bpf.h).
 */
#include "paths.bpf.h"
#include "syscalls.bpf.h"
#include "mmapsnoop.h"

#define MAP_ANONYMOUS 0x20

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* This architecture's numbers of the calls traced (syscalls.bpf.h); -1: not traced. */
const volatile long nr_mmap = -1;
const volatile long nr_munmap = -1;
const volatile long nr_mremap = -1;
/* serve: mmap() calls counted in call_counts by cgroup, name and kind, not sent */
const volatile bool count_calls = false;

struct mmapsnoop_call_args {
	__u64 addr;
	__u64 len;
	__u64 new_len;
	__u64 new_addr;
	__u64 offset;
	__u32 prot;
	__u32 flags;
	__s32 fd;
	enum mmapsnoop_call call;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid: one call in flight per thread */
	__type(value, struct mmapsnoop_call_args);
} calls_in_flight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mmapsnoop_event);
} event_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); /* sized by user space, and made only for count_calls */
	__type(key, struct mmapsnoop_count_key);
	__type(value, __u64);
} call_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024); /* user space may resize before load */
} events SEC(".maps");

static __always_inline int remember_call(struct mmapsnoop_call_args *args)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!memtrace_wanted())
		return 0;
	if (bpf_map_update_elem(&calls_in_flight, &id, args, BPF_ANY))
		memtrace_count_drop(MEMTRACE_DROP_PENDING);
	return 0;
}

#define MAP_SHARED 0x01
#define MAP_HUGETLB 0x40000

/* serve: one more mmap() of its cgroup, name and kind. */
static __always_inline void count_call(const struct mmapsnoop_call_args *args)
{
	struct mmapsnoop_count_key key = {};

	if (args->flags & MAP_HUGETLB)
		key.kind = MMAPSNOOP_HUGETLB;
	else if (!(args->flags & MAP_ANONYMOUS))
		key.kind = MMAPSNOOP_FILE;
	else if (args->flags & MAP_SHARED)
		key.kind = MMAPSNOOP_SHMEM;
	else
		key.kind = MMAPSNOOP_ANON;
	key.cgroup = memtrace_cgroup_label();
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	memtrace_count(&call_counts, &key, 1);
}

/*
 * with_file: a constant in each classic program, so munmap's and mremap's
 * carry no path walk; with_loop: the walk's levels by bpf_loop (5.17), in
 * the *_loop programs, which load only where it is (paths.bpf.h).
 */
static __always_inline int report_call(long ret, bool with_file, bool with_loop)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct mmapsnoop_call_args *args;
	struct mmapsnoop_event *e;
	__u32 zero = 0;
	__u64 size;

	args = bpf_map_lookup_elem(&calls_in_flight, &id);
	if (!args)
		return 0;
	if (count_calls) {
		count_call(args);
		goto out;
	}
	e = bpf_map_lookup_elem(&event_scratch, &zero);
	if (!e)
		goto out;

	e->time_ns = bpf_ktime_get_ns();
	e->addr = args->addr;
	e->len = args->len;
	e->new_len = args->new_len;
	e->new_addr = args->new_addr;
	e->offset = args->offset;
	e->ret = ret;
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->prot = args->prot;
	e->flags = args->flags;
	e->fd = args->fd;
	e->call = args->call;
	e->path_info.len = 0;
	e->path_info.depth = 0;
	e->path_info.flags = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->cgroup = memtrace_cgroup_label();

	if (with_file && !(args->flags & MAP_ANONYMOUS)) {
		struct file *file = memtrace_fd_file(args->fd);

		if (file)
			memtrace_file_path(file, e->path, &e->path_info, with_loop);
	}

	size = offsetof(struct mmapsnoop_event, path) + e->path_info.len;
	if (size > sizeof(*e))
		size = sizeof(*e);
	if (bpf_ringbuf_output(&events, e, size, 0))
		memtrace_count_drop(MEMTRACE_DROP_RINGBUF);
out:
	bpf_map_delete_elem(&calls_in_flight, &id);
	return 0;
}

/* The call's arguments kept until it returns (call: which call, an enum mmapsnoop_call). */
static __always_inline int enter_call(const struct memtrace_syscall_args *a, enum mmapsnoop_call call)
{
	struct mmapsnoop_call_args args = {
		.addr = a->arg[0],
		.len = a->arg[1],
		.fd = -1,
		.call = call,
	};

	if (call == MMAPSNOOP_MMAP) {
		args.prot = a->arg[2];
		args.flags = a->arg[3];
		args.fd = a->arg[4];
		args.offset = a->arg[5];
	} else if (call == MMAPSNOOP_MREMAP) {
		args.new_len = a->arg[2];
		args.flags = a->arg[3];
		args.new_addr = a->arg[4];
	}
	return remember_call(&args);
}

SEC("tp/syscalls/sys_enter_mmap")
int mmapsnoop_enter_mmap(struct trace_event_raw_sys_enter *ctx)
{
	struct memtrace_syscall_args a;

	memtrace_classic_syscall_args(ctx, &a);
	return enter_call(&a, MMAPSNOOP_MMAP);
}

SEC("tp/syscalls/sys_enter_munmap")
int mmapsnoop_enter_munmap(struct trace_event_raw_sys_enter *ctx)
{
	struct memtrace_syscall_args a;

	memtrace_classic_syscall_args(ctx, &a);
	return enter_call(&a, MMAPSNOOP_MUNMAP);
}

SEC("tp/syscalls/sys_enter_mremap")
int mmapsnoop_enter_mremap(struct trace_event_raw_sys_enter *ctx)
{
	struct memtrace_syscall_args a;

	memtrace_classic_syscall_args(ctx, &a);
	return enter_call(&a, MMAPSNOOP_MREMAP);
}

/* One exit program per call: each only finds calls its own enter stored. */
SEC("tp/syscalls/sys_exit_mmap")
int mmapsnoop_exit_mmap(struct trace_event_raw_sys_exit *ctx)
{
	return report_call(ctx->ret, true, false);
}

SEC("tp/syscalls/sys_exit_mmap")
int mmapsnoop_exit_mmap_loop(struct trace_event_raw_sys_exit *ctx)
{
	return report_call(ctx->ret, true, true);
}

SEC("tp/syscalls/sys_exit_munmap")
int mmapsnoop_exit_munmap(struct trace_event_raw_sys_exit *ctx)
{
	return report_call(ctx->ret, false, false);
}

SEC("tp/syscalls/sys_exit_mremap")
int mmapsnoop_exit_mremap(struct trace_event_raw_sys_exit *ctx)
{
	return report_call(ctx->ret, false, false);
}

/* The raw tracepoints (syscalls.bpf.h): the calls above, told apart by number. */
SEC("tp_btf/sys_enter")
int BPF_PROG(mmapsnoop_sys_enter, struct pt_regs *regs, long nr)
{
	struct memtrace_syscall_args a;
	enum mmapsnoop_call call;

	if (memtrace_syscall_is(nr, nr_mmap))
		call = MMAPSNOOP_MMAP;
	else if (memtrace_syscall_is(nr, nr_munmap))
		call = MMAPSNOOP_MUNMAP;
	else if (memtrace_syscall_is(nr, nr_mremap))
		call = MMAPSNOOP_MREMAP;
	else
		return 0;
	if (!memtrace_native_syscall())
		return 0;
	memtrace_syscall_args(regs, &a);
	return enter_call(&a, call);
}

static __always_inline int raw_exit(struct pt_regs *regs, long ret, bool with_loop)
{
	long nr = memtrace_exit_syscall_nr(regs);

	if (!memtrace_syscall_is(nr, nr_mmap) && !memtrace_syscall_is(nr, nr_munmap) &&
	    !memtrace_syscall_is(nr, nr_mremap))
		return 0;
	if (!memtrace_native_syscall())
		return 0;
	return report_call(ret, memtrace_syscall_is(nr, nr_mmap), with_loop);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(mmapsnoop_sys_exit, struct pt_regs *regs, long ret)
{
	return raw_exit(regs, ret, false);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(mmapsnoop_sys_exit_loop, struct pt_regs *regs, long ret)
{
	return raw_exit(regs, ret, true);
}
