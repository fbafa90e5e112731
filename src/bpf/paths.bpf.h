/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * A file's path walked in the kernel, from its dentry up, crossing mount
 * points (memtrace_file_path). Each level is a call of a global function,
 * which the verifier checks once, not once per level: the walk loads in
 * about the time bpf_loop() (5.17) gave it, and on 5.10 too. 5.10's global
 * functions take scalars only, so the walk keeps its state in a per-CPU map
 * and the caller copies the path out.
 */
#ifndef MEMTRACE_PATHS_BPF_H
#define MEMTRACE_PATHS_BPF_H

#include "common.bpf.h"

struct memtrace_path_walk {
	struct memtrace_walk w;
	/*
	 * out.len, the bytes written so far, is in map memory, whose contents
	 * the verifier does not track: a tracked offset would differ at each
	 * level, and the verifier would check a level once per range it can take.
	 */
	struct memtrace_path out;
	char buf[MEMTRACE_PATH_BUF];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct memtrace_path_walk);
} path_walks SEC(".maps");

/* Adds one component to this CPU's walk; 1 when the walk is over (last: the
 * deepest level walked). */
__noinline int memtrace_path_level(__u32 last)
{
	struct memtrace_path_walk *walk;
	struct dentry *dentry, *parent;
	__u32 zero = 0, off;
	long n;

	walk = bpf_map_lookup_elem(&path_walks, &zero);
	if (!walk)
		return 1;
	dentry = walk->w.dentry;
	off = walk->out.len;
	if (off > MEMTRACE_PATH_BUF - MEMTRACE_NAME_MAX) {
		walk->out.flags |= MEMTRACE_PATH_TRUNCATED;
		return 1;
	}
	n = memtrace_dentry_name(dentry, walk->buf + off);
	if (n <= 0)
		return 1;
	walk->out.len = off + n;
	walk->out.depth++;
	parent = BPF_CORE_READ(dentry, d_parent);
	if (parent == dentry)
		return 1; /* pseudo file: its name is the whole path */
	walk->w.dentry = parent;
	if (memtrace_walk_cross_mounts(&walk->w)) {
		walk->out.flags |= MEMTRACE_PATH_ROOTED;
		return 1;
	}
	if (last)
		walk->out.flags |= MEMTRACE_PATH_TRUNCATED;
	return 0;
}

/* bpf_loop's callback (5.17): one level of the walk. */
static long memtrace_path_level_cb(__u32 i, void *unused)
{
	/* a callback's return must be seen to be 0 or 1 */
	return memtrace_path_level(i == MEMTRACE_PATH_DEPTH - 1) ? 1 : 0;
}

/*
 * Writes a file's path into buf (MEMTRACE_PATH_BUF bytes): components leaf
 * first, each with its NUL; user space reverses them. Stops at the root of the
 * mount namespace (flag ROOTED) or at a pseudo file, whose name is the path.
 * with_loop (a constant: the programs that pass true load only with bpf_loop,
 * 5.17) drives the levels with bpf_loop, which the verifier checks once;
 * without it, a bounded loop of calls checked once per level costs about a
 * millisecond more of each start.
 */
static __always_inline void memtrace_file_path(struct file *file, char *buf, struct memtrace_path *out,
					       bool with_loop)
{
	struct memtrace_path_walk *walk;
	struct dentry *leaf;
	__u32 zero = 0, len;

	out->len = 0;
	out->depth = 0;
	out->flags = 0;
	walk = bpf_map_lookup_elem(&path_walks, &zero);
	if (!walk)
		return;
	memtrace_walk_start(&walk->w, file);
	leaf = walk->w.dentry;
	walk->out = (struct memtrace_path){};
	if (!BPF_CORE_READ(leaf, d_hash.pprev) && BPF_CORE_READ(leaf, d_parent) != leaf)
		walk->out.flags |= MEMTRACE_PATH_DELETED;
	if (memtrace_walk_cross_mounts(&walk->w)) /* the file is itself a mount point */
		walk->out.flags |= MEMTRACE_PATH_ROOTED;
	if (walk->out.flags & MEMTRACE_PATH_ROOTED)
		;
	else if (with_loop)
		bpf_loop(MEMTRACE_PATH_DEPTH, memtrace_path_level_cb, NULL, 0);
	else
		for (__u32 i = 0; i < MEMTRACE_PATH_DEPTH; i++)
			if (memtrace_path_level(i == MEMTRACE_PATH_DEPTH - 1))
				break;
	*out = walk->out;
	len = walk->out.len;
	if (len > MEMTRACE_PATH_BUF) /* for the verifier: it is not */
		len = MEMTRACE_PATH_BUF;
	bpf_probe_read_kernel(buf, len, walk->buf);
}

#endif
