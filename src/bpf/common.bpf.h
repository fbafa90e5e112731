/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Pieces every memtrace BPF program uses: the process filter (pid set, comm),
 * following forks for `-- COMMAND`, drop accounting, and file names read from
 * the calling task's fd table (tools learn the file of an mmap at the
 * syscall tracepoint, which needs no kprobes).
 */
#ifndef MEMTRACE_COMMON_BPF_H
#define MEMTRACE_COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "common.h"

#define MEMTRACE_MAX_TRACED 16384
#define MEMTRACE_NAME_MAX MEMTRACE_NAME_MAX_LEN

/* Options, set by user space between open and load; 0 means off. */
const volatile bool filter_by_tgid = false; /* only tgids in traced_tgids */
const volatile bool follow_forks = false;   /* children of traced tgids are traced too */
const volatile bool filter_by_comm = false;
const volatile char filter_comm[MEMTRACE_COMM_LEN] = {};
const volatile bool filter_by_tid = false; /* one thread (drsnoop, shmsnoop -t) */
const volatile __u32 filter_tid = 0;
const volatile bool filter_by_uid = false; /* one user (drsnoop -u) */
const volatile __u32 filter_uid = 0;
/* --cgroup: the cgroup's id (its kernfs node's, the directory's inode), the
 * v1 hierarchy's controller (its subsystem id) or -1 for the unified one, and
 * the offsets of the fields the walk reads (memtrace_in_cgroup) */
const volatile bool filter_by_cgroup = false;
const volatile __u64 filter_cgroup_id = 0;
const volatile int filter_cgroup_ssid = -1;
const volatile struct memtrace_cgroup_offsets cgroup_offsets = {};
/* serve and --show-cgroup: records name the task's cgroup (its id) in this hierarchy, as
 * filter_cgroup_ssid says one; the offsets are cgroup_offsets */
const volatile bool label_by_cgroup = false;
const volatile int label_cgroup_ssid = -1;
/* set by user space where the kernel has bpf_get_current_task_btf (5.11):
 * a CO-RE test of enum bpf_func_id would cost libbpf a search of every
 * kernel type at each load (~0.8 ms) */
const volatile bool has_current_task_btf = false;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MEMTRACE_MAX_TRACED);
	__type(key, __u32);  /* tgid */
	__type(value, __u8); /* unused */
} traced_tgids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MEMTRACE_DROP_NR);
	__type(key, __u32);
	__type(value, __u64);
} drop_counts SEC(".maps");

/* Adds one to slot `index` of a per-CPU array of u64 (no atomics: the slot is this CPU's). */
static __always_inline void memtrace_percpu_inc(void *map, __u32 index)
{
	__u64 *count = bpf_map_lookup_elem(map, &index);

	if (count)
		*count += 1;
}

static __always_inline void memtrace_count_drop(__u32 reason)
{
	memtrace_percpu_inc(&drop_counts, reason);
}

/*
 * A number no other call returns, from `counters` (a one-entry per-CPU array
 * of u64): this CPU's count of them and the CPU, never 0; 0 if the map can't
 * be read. For kernels without atomic fetch-and-add (5.12). Programs on one
 * CPU don't interleave between the read and the write: they run with
 * preemption off, and none of the callers in a hard interrupt.
 */
static __always_inline __u64 memtrace_unique_number(void *counters)
{
	__u32 zero = 0;
	__u64 *count = bpf_map_lookup_elem(counters, &zero);

	if (!count)
		return 0;
	*count += 1;
	return (*count << 16) | bpf_get_smp_processor_id();
}

/*
 * The current task, for reads through BPF_CORE_READ: typed where the kernel
 * has bpf_get_current_task_btf (5.11), else its address. The test is of a
 * read-only constant: the verifier drops the branch not taken, helper call
 * and all.
 */
static __always_inline struct task_struct *memtrace_current_task(void)
{
	if (has_current_task_btf)
		return bpf_get_current_task_btf();
	return (struct task_struct *)bpf_get_current_task();
}

/* How far above a task's cgroup --cgroup's may be. */
#define MEMTRACE_CGROUP_DEPTH 16
/* A kernel pointer at `base + off`; NULL where it can't be read. */
static __always_inline void *memtrace_pointer_at(void *base, __u32 off)
{
	void *p = NULL;

	if (base)
		bpf_probe_read_kernel(&p, sizeof(p), base + off);
	return p;
}

/* The current task's cgroup in a hierarchy: the unified one's (ssid < 0) or
 * the v1 controller ssid's. */
static __always_inline void *memtrace_task_cgroup(int ssid)
{
	const volatile struct memtrace_cgroup_offsets *off = &cgroup_offsets;
	void *cset = memtrace_pointer_at((void *)bpf_get_current_task(), off->task_cgroups);
	void *css;

	if (ssid < 0)
		return memtrace_pointer_at(cset, off->cset_dfl_cgrp);
	css = memtrace_pointer_at(cset, off->cset_subsys + ((__u32)ssid & 31) * sizeof(void *));
	return memtrace_pointer_at(css, off->css_cgroup);
}

/* A cgroup's id: its kernfs node's (the directory's inode); 0 for none. */
static __always_inline __u64 memtrace_kn_id(void *kn)
{
	__u64 id = 0;

	if (kn)
		bpf_probe_read_kernel(&id, sizeof(id), kn + cgroup_offsets.kernfs_node_id);
	return id;
}

/*
 * Is the current task in --cgroup's cgroup or one below it (at most
 * MEMTRACE_CGROUP_DEPTH levels)? Its cgroup in the hierarchy asked about
 * (the unified one's, or a v1 controller's), then each parent, compared by
 * id: read through the task, so v1 works as v2 does (the helpers that test
 * cgroups know the unified hierarchy alone). The fields are read at offsets
 * user space found in the kernel's BTF, not by CO-RE: each struct a program
 * reads by CO-RE costs libbpf a search of every kernel type at each load,
 * and these four would cost every start, --cgroup or not.
 */
static __always_inline bool memtrace_in_cgroup(void)
{
	const volatile struct memtrace_cgroup_offsets *off = &cgroup_offsets;
	void *cgrp = memtrace_task_cgroup(filter_cgroup_ssid);

	for (int i = 0; i < MEMTRACE_CGROUP_DEPTH; i++) {
		void *kn = memtrace_pointer_at(cgrp, off->cgroup_kn);

		if (!kn)
			return false;
		if (memtrace_kn_id(kn) == filter_cgroup_id)
			return true;
		/* the parent's css, and its cgroup */
		cgrp = memtrace_pointer_at(memtrace_pointer_at(cgrp, off->cgroup_parent_css), off->css_cgroup);
	}
	return false;
}

/*
 * The id of the current task's cgroup in the hierarchy labelled by, 0 unless
 * label_by_cgroup (user space names it by its directory's inode).
 */
static __always_inline __u64 memtrace_cgroup_label(void)
{
	if (!label_by_cgroup)
		return 0;
	return memtrace_kn_id(
		memtrace_pointer_at(memtrace_task_cgroup(label_cgroup_ssid), cgroup_offsets.cgroup_kn));
}

/* Should the current task be traced? The cheap tests come first. */
static __always_inline bool memtrace_wanted(void)
{
	if (filter_by_tid && (__u32)bpf_get_current_pid_tgid() != filter_tid)
		return false;
	if (filter_by_uid && (__u32)bpf_get_current_uid_gid() != filter_uid)
		return false;
	if (filter_by_tgid) {
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;

		if (!bpf_map_lookup_elem(&traced_tgids, &tgid))
			return false;
	}
	if (filter_by_comm) {
		char comm[MEMTRACE_COMM_LEN];

		bpf_get_current_comm(comm, sizeof(comm));
		for (int i = 0; i < MEMTRACE_COMM_LEN; i++) {
			if (comm[i] != filter_comm[i])
				return false;
			if (comm[i] == 0)
				break;
		}
	}
	if (filter_by_cgroup && !memtrace_in_cgroup())
		return false;
	return true;
}

/* Adds n to the u64 count of key in a hash map; a full map is counted as a drop. */
static __always_inline void memtrace_count(void *map, const void *key, __u64 n)
{
	__u64 *count = bpf_map_lookup_elem(map, key);
	long err;

	if (count) {
		__sync_fetch_and_add(count, n);
		return;
	}
	err = bpf_map_update_elem(map, key, &n, BPF_NOEXIST);
	if (err == -17 /* EEXIST: another CPU added it first */) {
		count = bpf_map_lookup_elem(map, key);
		if (count)
			__sync_fetch_and_add(count, n);
	} else if (err) {
		memtrace_count_drop(MEMTRACE_DROP_COUNTS);
	}
}

/* `-- COMMAND`: a traced process's children are traced too. Not loaded otherwise. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(memtrace_follow_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 parent_tgid = BPF_CORE_READ(parent, tgid);
	__u32 child_tgid = BPF_CORE_READ(child, tgid);
	__u8 one = 1;

	if (parent_tgid == child_tgid || !bpf_map_lookup_elem(&traced_tgids, &parent_tgid))
		return 0;
	bpf_map_update_elem(&traced_tgids, &child_tgid, &one, BPF_ANY);
	return 0;
}

/* At sched_process_exit: whether `task` is its process's last thread
 * (signal->live reaches 0 when the last thread of the group exits). */
static __always_inline bool memtrace_process_ends(struct task_struct *task)
{
	return BPF_CORE_READ(task, signal, live.counter) == 0;
}

/* A traced process that is gone leaves the set, so a recycled pid is not traced. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(memtrace_forget_exit, struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);

	if (memtrace_process_ends(task))
		bpf_map_delete_elem(&traced_tgids, &tgid);
	return 0;
}

/*
 * Copies the top of the current task's user stack, from sp up, into buf
 * (MEMTRACE_STACK_COPY_BYTES); the bytes copied. A read that crosses the top
 * of the stack fails whole (and faults on the way), so it reads up to the top
 * where it is known: on the main thread the environment strings end just
 * under it. Elsewhere (a thread's stack) it reads in chunks up to the first
 * that fails.
 */
static __always_inline __u32 memtrace_copy_user_stack(struct task_struct *task, __u64 sp,
						      __u8 *buf)
{
	__u64 top = BPF_CORE_READ(task, mm, env_end), len;
	__u32 copied = 0, i;

	len = top > sp && top - sp < MEMTRACE_STACK_COPY_BYTES ? top - sp :
								   MEMTRACE_STACK_COPY_BYTES;
	if (len > MEMTRACE_STACK_COPY_BYTES) /* for the verifier: it is not */
		len = MEMTRACE_STACK_COPY_BYTES;
	if (!bpf_probe_read_user(buf, len, (void *)sp))
		return len;
	for (i = 0; i < MEMTRACE_COPY_CHUNKS; i++) {
		if (bpf_probe_read_user(&buf[i * MEMTRACE_COPY_CHUNK], MEMTRACE_COPY_CHUNK,
					(void *)(sp + i * MEMTRACE_COPY_CHUNK)))
			break;
		copied = (i + 1) * MEMTRACE_COPY_CHUNK;
	}
	return copied;
}

/* The struct file behind descriptor fd of the current task, or NULL. */
static __always_inline struct file *memtrace_fd_file(int fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *file = NULL;

	if (fd < 0 || !fdt || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	return file;
}

static __always_inline struct dentry *memtrace_file_dentry(struct file *file)
{
	return BPF_CORE_READ(file, f_path.dentry);
}

/* Copies a dentry's name into dst (MEMTRACE_NAME_MAX bytes); returns its length with the NUL. */
static __always_inline long memtrace_dentry_name(struct dentry *dentry, char *dst)
{
	const unsigned char *name = BPF_CORE_READ(dentry, d_name.name);

	return bpf_probe_read_kernel_str(dst, MEMTRACE_NAME_MAX, name);
}

/* A position in the dentry tree: a dentry and the mount it is seen through. */
struct memtrace_walk {
	struct dentry *dentry;
	struct mount *mnt;
};

static __always_inline void memtrace_walk_start(struct memtrace_walk *w, struct file *file)
{
	struct vfsmount *vfsmnt = BPF_CORE_READ(file, f_path.mnt);

	w->dentry = BPF_CORE_READ(file, f_path.dentry);
	/* container_of, with the offset relocated for the running kernel */
	w->mnt = (void *)vfsmnt - bpf_core_field_offset(struct mount, mnt);
}

/*
 * Crosses mount points upward until w->dentry is a named component: returns
 * MEMTRACE_PATH_ROOTED at the root of the mount namespace, 0 otherwise.
 * Mounts stack at most a few deep, hence the small bound. (Locals, not w->x,
 * go into BPF_CORE_READ: struct memtrace_walk is not the kernel's.)
 */
static __always_inline int memtrace_walk_cross_mounts(struct memtrace_walk *w)
{
	for (int i = 0; i < 8; i++) {
		struct dentry *dentry = w->dentry;
		struct mount *mnt = w->mnt;
		struct mount *mnt_parent;

		if (dentry != BPF_CORE_READ(mnt, mnt.mnt_root))
			return 0;
		mnt_parent = BPF_CORE_READ(mnt, mnt_parent);
		if (mnt_parent == mnt)
			return MEMTRACE_PATH_ROOTED;
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = mnt_parent;
	}
	return 0;
}

enum memtrace_walk_step {
	MEMTRACE_WALK_MOVED = 0,  /* w is the parent component */
	MEMTRACE_WALK_ROOT = 1,   /* w is the root of the mount namespace, named "/" */
	MEMTRACE_WALK_PSEUDO = 2, /* no parent: a pseudo file (memfd:NAME, anon_inode:[...]) */
};

/* Moves w to the parent component, crossing mount points. */
static __always_inline enum memtrace_walk_step memtrace_walk_up(struct memtrace_walk *w)
{
	struct dentry *dentry = w->dentry;
	struct dentry *parent = BPF_CORE_READ(dentry, d_parent);

	if (parent == dentry)
		return MEMTRACE_WALK_PSEUDO;
	w->dentry = parent;
	return memtrace_walk_cross_mounts(w) ? MEMTRACE_WALK_ROOT : MEMTRACE_WALK_MOVED;
}

#endif
