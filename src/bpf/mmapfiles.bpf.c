// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * mmapfiles: successful mmaps counted by [grandparent dir, parent dir, file]
 * in a kernel map; user space reads and sorts it at each report. Both kinds of
 * syscall tracepoint, classic and raw, have programs here (syscalls.bpf.h).
 */
#include "syscalls.bpf.h"
#include "mmapfiles.h"

#define MAP_ANONYMOUS 0x20
#define MAX_ERRNO 4095

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* This architecture's number of mmap (syscalls.bpf.h). */
const volatile long nr_mmap = -1;
/* Count by the names' numbers (counts_by_number), not the names: before 5.11. */
const volatile bool names_numbered = false;

struct mmapfiles_call_args {
	__s32 fd;
	__u32 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct mmapfiles_call_args);
} calls_in_flight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mmapfiles_key);
} key_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240); /* user space may resize before load */
	__type(key, struct mmapfiles_key);
	__type(value, __u64);
} counts SEC(".maps");

/* names_numbered: a name's number, and the name of a number for user space */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 20480);
	__type(key, struct mmapfiles_name);
	__type(value, __u64);
} name_numbers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 20480);
	__type(key, __u64);
	__type(value, struct mmapfiles_name);
} numbered_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} names_counted SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct mmapfiles_numbered_key);
	__type(value, __u64);
} counts_by_number SEC(".maps");

/* The number of a name (a map value: names are too big for the stack); false if the maps are full. */
static __always_inline bool number_name(char *name, __u64 *number)
{
	__u64 *found;

	*number = 0;
	if (!name[0])
		return true;
	found = bpf_map_lookup_elem(&name_numbers, name);
	if (found) {
		*number = *found;
		return true;
	}
	*number = memtrace_unique_number(&names_counted);
	/* the name first: a number a count can have always has a name */
	if (!*number || bpf_map_update_elem(&numbered_names, number, name, BPF_NOEXIST))
		return false;
	if (!bpf_map_update_elem(&name_numbers, name, number, BPF_NOEXIST))
		return true;
	/* another CPU numbered it first (or the map is full) */
	bpf_map_delete_elem(&numbered_names, number);
	found = bpf_map_lookup_elem(&name_numbers, name);
	if (!found)
		return false;
	*number = *found;
	return true;
}

static __always_inline void count_by_numbers(struct mmapfiles_key *key)
{
	struct mmapfiles_numbered_key numbered;

	if (!number_name(key->grandparent, &numbered.grandparent) ||
	    !number_name(key->parent, &numbered.parent) || !number_name(key->file, &numbered.file)) {
		memtrace_count_drop(MEMTRACE_DROP_COUNTS);
		return;
	}
	memtrace_count(&counts_by_number, &numbered, 1);
}

static __always_inline int enter_mmap(const struct memtrace_syscall_args *a)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct mmapfiles_call_args args = {
		.flags = a->arg[3],
		.fd = a->arg[4],
	};

	if (!memtrace_wanted())
		return 0;
	if (bpf_map_update_elem(&calls_in_flight, &id, &args, BPF_ANY))
		memtrace_count_drop(MEMTRACE_DROP_PENDING);
	return 0;
}

SEC("tp/syscalls/sys_enter_mmap")
int mmapfiles_enter_mmap(struct trace_event_raw_sys_enter *ctx)
{
	struct memtrace_syscall_args a;

	memtrace_classic_syscall_args(ctx, &a);
	return enter_mmap(&a);
}

static __always_inline int exit_mmap(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct mmapfiles_call_args *args;
	struct mmapfiles_key *key;
	__u32 zero = 0;

	args = bpf_map_lookup_elem(&calls_in_flight, &id);
	if (!args)
		return 0;
	if (ret < 0 && ret >= -MAX_ERRNO)
		goto out; /* failed: nothing was mapped */
	key = bpf_map_lookup_elem(&key_scratch, &zero);
	if (!key)
		goto out;
	__builtin_memset(key, 0, sizeof(*key));

	if (args->flags & MAP_ANONYMOUS) {
		__builtin_memcpy(key->file, "[anon]", sizeof("[anon]"));
	} else {
		struct file *file = memtrace_fd_file(args->fd);
		struct memtrace_walk w;
		enum memtrace_walk_step step;

		if (!file)
			goto out;
		/* the book's key, but crossing mount points: /dev/shm/x is [dev, shm, x] */
		memtrace_walk_start(&w, file);
		memtrace_walk_cross_mounts(&w);
		memtrace_dentry_name(w.dentry, key->file);
		step = memtrace_walk_up(&w);
		if (step != MEMTRACE_WALK_PSEUDO)
			memtrace_dentry_name(w.dentry, key->parent);
		if (step == MEMTRACE_WALK_MOVED && memtrace_walk_up(&w) != MEMTRACE_WALK_PSEUDO)
			memtrace_dentry_name(w.dentry, key->grandparent);
	}

	if (names_numbered)
		count_by_numbers(key);
	else
		memtrace_count(&counts, key, 1);
out:
	bpf_map_delete_elem(&calls_in_flight, &id);
	return 0;
}

SEC("tp/syscalls/sys_exit_mmap")
int mmapfiles_exit_mmap(struct trace_event_raw_sys_exit *ctx)
{
	return exit_mmap(ctx->ret);
}

/* The raw tracepoints (syscalls.bpf.h), for mmap alone. */
SEC("tp_btf/sys_enter")
int BPF_PROG(mmapfiles_sys_enter, struct pt_regs *regs, long nr)
{
	struct memtrace_syscall_args a;

	if (!memtrace_syscall_is(nr, nr_mmap) || !memtrace_native_syscall())
		return 0;
	memtrace_syscall_args(regs, &a);
	return enter_mmap(&a);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(mmapfiles_sys_exit, struct pt_regs *regs, long ret)
{
	if (!memtrace_syscall_is(memtrace_exit_syscall_nr(regs), nr_mmap) ||
	    !memtrace_native_syscall())
		return 0;
	return exit_mmap(ret);
}
