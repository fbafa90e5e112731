// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * oomkill: each OOM kill at oom:mark_victim (a BTF tracepoint; the book's
 * kprobe on oom_kill_process needs CONFIG_KPROBES), or by fentry on
 * oom_kill_process where the tracepoint doesn't pass the victim. The running
 * task is the one whose allocation invoked the OOM killer; the victim's memory
 * cgroup path is walked from its kernfs node, and the killer's kernel stack
 * tells a memory cgroup limit from a global OOM.
 */
#include "common.bpf.h"
#include "stacks.bpf.h"
#include "oomkill.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* Before Linux 6.15 a kernfs node's parent was called `parent`. */
struct kernfs_node___old {
	struct kernfs_node *parent;
} __attribute__((preserve_access_index));

static __always_inline struct kernfs_node *kernfs_parent(struct kernfs_node *kn)
{
	if (bpf_core_field_exists(kn->__parent))
		return BPF_CORE_READ(kn, __parent);
	return BPF_CORE_READ((struct kernfs_node___old *)kn, parent);
}

/* Before Linux 6.2 the RSS counters were atomics in a struct mm_rss_stat
 * (per-CPU counters since). */
struct mm_rss_stat___pre62 {
	atomic_long_t count[4];
} __attribute__((preserve_access_index));

struct mm_struct___pre62 {
	struct mm_rss_stat___pre62 rss_stat;
} __attribute__((preserve_access_index));

/* One of mm's RSS counters (MM_FILEPAGES, ...): its central value, as the
 * tracepoint's own fields give it. */
static __always_inline long mm_counter(struct mm_struct *mm, int member)
{
	if (bpf_core_type_exists(struct mm_rss_stat___pre62))
		return BPF_CORE_READ((struct mm_struct___pre62 *)mm, rss_stat.count[member].counter);
	return BPF_CORE_READ(mm, rss_stat[member].count);
}

/* Puts struct oomkill_event into the skeleton's generated types. */
struct oomkill_event oomkill_event_layout = {};

/* Reports a kill of victim, whose user is uid; ctx: the program's, for the
 * killer's kernel stack. */
static __always_inline int report_kill(void *ctx, struct task_struct *victim, uid_t uid)
{
	struct oomkill_event *e;
	struct mm_struct *mm;
	struct kernfs_node *kn;
	int memory = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	__u32 off = 0;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		memtrace_count_drop(MEMTRACE_DROP_RINGBUF);
		return 0;
	}
	e->time_ns = bpf_ktime_get_ns();
	e->trigger_pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(e->trigger_comm, sizeof(e->trigger_comm));
	e->victim_pid = BPF_CORE_READ(victim, tgid);
	BPF_CORE_READ_STR_INTO(&e->victim_comm, victim, comm);
	e->uid = uid;
	e->oom_score_adj = BPF_CORE_READ(victim, signal, oom_score_adj);
	mm = BPF_CORE_READ(victim, mm);
	e->total_vm = BPF_CORE_READ(mm, total_vm);
	e->file_rss = mm_counter(mm, MM_FILEPAGES);
	e->anon_rss = mm_counter(mm, MM_ANONPAGES);
	e->shmem_rss = mm_counter(mm, MM_SHMEMPAGES);
	e->pgtables_bytes = BPF_CORE_READ(mm, pgtables_bytes.counter);
	e->stack = memtrace_stack(ctx, 0);

	e->cgroup_depth = 0;
	kn = BPF_CORE_READ(victim, cgroups, subsys[memory], cgroup, kn);
	for (int i = 0; i < OOMKILL_CGROUP_DEPTH && kn; i++) {
		struct kernfs_node *parent = kernfs_parent(kn);
		long n;

		if (!parent)
			break; /* the hierarchy's root: "/" */
		if (off > OOMKILL_CGROUP_BUF - MEMTRACE_NAME_MAX)
			break;
		n = bpf_probe_read_kernel_str(e->cgroup + off, MEMTRACE_NAME_MAX, BPF_CORE_READ(kn, name));
		if (n <= 0)
			break;
		off += n;
		e->cgroup_depth++;
		kn = parent;
	}
	e->cgroup_len = off;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/mark_victim")
int BPF_PROG(oomkill_mark_victim, struct task_struct *victim, uid_t uid)
{
	return report_kill(ctx, victim, uid);
}

/*
 * Where mark_victim doesn't pass the victim and its uid (5.10's passes the
 * pid alone): the function that kills the victim chosen, as BCC's kprobe,
 * through a trampoline. Called once per kill.
 */
SEC("fentry/oom_kill_process")
int BPF_PROG(oomkill_oom_kill_process, struct oom_control *oc, const char *message)
{
	struct task_struct *victim = BPF_CORE_READ(oc, chosen);

	return report_kill(ctx, victim, BPF_CORE_READ(victim, cred, uid.val));
}
